#!/usr/bin/env bash
# The main job: set up .venv, train a DAM_20 on MNIST with the quick schedule (minutes on a laptop CPU),
# and evaluate it.  MNIST is read from $DAM_DATA_DIR/mnist, the cache, or downloaded once.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
if [ -z "${DAM_DATA_DIR:-}" ] && [ -d ../shared/datasets/mnist ]; then
    export DAM_DATA_DIR=$(cd ../shared/datasets && pwd)
fi
OUT=${OUT:-runs/quick}
dam train --preset n20 --schedule quick --out "$OUT/n20" --resume "$@"
dam evaluate "$OUT/n20" --json "$OUT/n20/evaluation.json"
echo "run folder: $OUT/n20 (model.safetensors, config.json, metrics.jsonl, evaluation.json)"
