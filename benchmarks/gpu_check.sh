#!/usr/bin/env bash
# Every figure a GPU session owes the project, in one run of about 8 minutes on one H100 (or H200).
#
# Before the session, on the machine with the repository: put MNIST's four IDX files in data/mnist/
# (ignored by git; about 11 MB) so that they travel with the working tree, e.g.
#     mkdir -p data && cp -r "$DAM_DATA_DIR/mnist" data/     (or ~/.cache/dam/mnist after a first run)
# then run this script on the device machine with that folder carried:
#     run(command="bash benchmarks/gpu_check.sh", carry=["data"], timeout_s=600)
# The device image has torch with CUDA; the package runs from src/ (PYTHONPATH), nothing is installed.
# Each step has its own time limit, so one slow step cannot eat the others; every step prints its figures,
# and the JSON lines land in $OUT (or ./gpu_check when $OUT is unset) to come back with the reply.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src
export DAM_DATA_DIR=${DAM_DATA_DIR:-$PWD/data}
OUT=${OUT:-gpu_check}
mkdir -p "$OUT"
step() { echo; echo "== $1 ($(date +%T))"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"

step "epoch against its matrix-product floor, K = 2000, minibatch 1000 (target: ratio <= 2.0)"
timeout 150 python benchmarks/train_epoch.py --device cuda --repeats 3 --n 2 20 30 | tee "$OUT/train_epoch.txt"

step "several models in one process (4 seeds of DAM_30, quick preset values), against one after another"
timeout 120 python benchmarks/train_many.py --device cuda --seeds 0 1 2 3 --epochs 2 | tee "$OUT/train_many.txt"

step "the paper schedule, timed part: DAM_30, K = 2000, 60 of its 3000 epochs (x 50 = the whole run)"
timeout 150 python -m dam train --preset n30 --schedule paper --epochs 60 --device cuda \
    --out "$OUT/paper_n30" --no-progress | tail -3
python - "$OUT/paper_n30" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(f"{sys.argv[1]}/metrics.jsonl")]
per_epoch = sorted(r["train_seconds"] for r in rows[5:])[len(rows[5:]) // 2]
print(json.dumps({"paper_n30_median_epoch_s": per_epoch, "paper_n30_3000_epochs_min": per_epoch * 3000 / 60,
                  "test_error_after_60": rows[-1]["test_error"]}))
EOF

step "the GPU tests (skipped on machines without CUDA): outputs, gradients and an epoch agree with the CPU"
timeout 120 python -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -5
echo; echo "== done ($(date +%T))"
