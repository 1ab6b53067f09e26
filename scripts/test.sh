#!/usr/bin/env bash
# Set up .venv with the test extras and run the linter and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test attacks sweep
. .venv/bin/activate
# The real-MNIST tests read $DAM_DATA_DIR/mnist (they are skipped without it, outside CI); default to dam's
# cache, where `bash scripts/main.sh` downloads MNIST.
if [ -z "${DAM_DATA_DIR:-}" ]; then
    cache=$(python -c "from dam.data.sources import cache_dir; print(cache_dir())")
    if [ -d "$cache/mnist" ]; then export DAM_DATA_DIR=$cache; fi
fi
ruff check src tests benchmarks studies
ruff format --check src tests benchmarks studies
python -m pytest "$@"
