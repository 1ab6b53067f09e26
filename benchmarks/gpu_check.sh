#!/usr/bin/env bash
# Every figure a GPU session owes the project, in one run of at most about 9 minutes on one H100 or H200.
#
# Before the session, on the machine with the repository: put MNIST's four IDX files in data/mnist/
# (ignored by git; about 11 MB) so that they travel with the working tree, e.g.
#     mkdir -p data && cp -r "$DAM_DATA_DIR/mnist" data/     (or ~/.cache/dam/mnist after a first run)
# then run this script on the device machine with that folder carried:
#     run(command="bash benchmarks/gpu_check.sh", carry=["data"], timeout_s=600)
# The device image has torch with CUDA; the package runs from src/ (PYTHONPATH), nothing is installed.
# For the attacks (not run by this script), `bash benchmarks/gpu_site.sh` first and carry ".site" as well.
#
# 1. the epoch benchmark (ratio to the matrix-product floor; graph against eager; the kernels by GPU time);
# 2. the paper's schedule (3000 epochs, K = 2000) for DAM_2, 3, 20 and 30, one process each, all at once,
#    into runs/paper/runs/nN (the layout of `dam reproduce --preset paper --out runs/paper`), until the
#    script's deadline; each run folder's training state, metrics and config come back as OUT/paper_nN.tar
#    (resumable anywhere: unpack into runs/paper/runs/ and `dam train --out ... --resume`);
# 3. the GPU tests, and 4. several models in one process against one after another, with the time left.
# Run it again on a warm machine (same working tree) and step 2 resumes the runs where they stopped.
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
DEADLINE=${DEADLINE:-540}  # seconds after START by which the training must have stopped and been packed
DEVICE=${DEVICE:-cuda}
export PYTHONPATH=src PYTHONUNBUFFERED=1
[ -d .site ] && export PYTHONPATH=src:.site  # the attacks extra, from benchmarks/gpu_site.sh
export DAM_DATA_DIR=${DAM_DATA_DIR:-$PWD/data}
OUT=${OUT:-gpu_check}
mkdir -p "$OUT"
step() { echo; echo "== $1 ($(date +%T), +$(($(date +%s) - START)) s)"; }
left() { echo $((START + DEADLINE - $(date +%s))); }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"

if [ ! -e runs/paper/runs ]; then
    step "epoch against its matrix-product floor, K = 2000, minibatch 1000 (target: ratio <= 2.0)"
    timeout 200 python benchmarks/train_epoch.py --device "$DEVICE" --repeats 3 --n 2 20 30 --profile \
        2> >(grep -v Warning | tail -80 >&2) | tee "$OUT/train_epoch.txt"
fi

step "the paper schedule: DAM_2, 3, 20, 30 (K = 2000, 3000 epochs), one process each, all at once"
mkdir -p runs/paper/runs
pids=()
for n in 2 3 20 30; do
    run=runs/paper/runs/n$n
    resume=()
    [ -e "$run/train_state.safetensors" ] && resume=(--resume)
    timeout --signal=INT "$(($(left) - 15))" python -m dam train --preset "n$n" --schedule paper --device "$DEVICE" \
        ${EXTRA_TRAIN_ARGS:-} --out "$run" --no-progress "${resume[@]}" > "runs/paper/n$n.log" 2>&1 &
    pids+=($!)
done
wait "${pids[@]}"
for n in 2 3 20 30; do
    run=runs/paper/runs/n$n
    python - "$run" "$n" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(f"{sys.argv[1]}/metrics.jsonl")]
steady = sorted(r["seconds"] for r in rows[5:]) or [float("nan")]
last = rows[-1]
print(json.dumps({"n": int(sys.argv[2]), "epochs_done": last["epoch"], "median_epoch_s_with_3_others": steady[len(steady) // 2],
                  "test_error": last.get("test_error"), "train_error": last.get("train_error")}))
EOF
    grep -E "Error|Warning|Traceback" "runs/paper/n$n.log" | tail -3 | cut -c1-400
    tar -cf "$OUT/paper_n$n.tar" -C runs/paper/runs "n$n/train_state.safetensors" "n$n/metrics.jsonl" "n$n/config.json"
done
ls -la "$OUT"

if [ "$(left)" -gt 40 ]; then
    step "the GPU tests (skipped on machines without CUDA): outputs, gradients, graph epochs, an epoch against the CPU"
    timeout "$(($(left) + 30))" python -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -8
fi
if [ "$(left)" -gt 60 ]; then
    step "several models in one process (4 seeds of DAM_30, quick preset values), against one after another"
    timeout "$(($(left) + 30))" python benchmarks/train_many.py --device "$DEVICE" --seeds 0 1 2 3 --epochs 2 \
        | tee "$OUT/train_many.txt"
fi
echo; echo "== done ($(date +%T), +$(($(date +%s) - START)) s)"
