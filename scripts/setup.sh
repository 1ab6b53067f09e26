#!/usr/bin/env bash
# Creates .venv (if missing) and installs dam into it, CPU PyTorch first so that pip never pulls a
# multi-GB CUDA build to satisfy dam's "torch>=2.1".  Extra arguments are pip extras, e.g. "test".
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${DAM_TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip >/dev/null
if ! python -c "import torch" 2>/dev/null; then
    # On this project's machines pip finds the CPU wheel of torch 2.13.0 on local disk; elsewhere the
    # CPU index keeps the download small.
    python -m pip install --quiet "$TORCH_SPEC" || \
        python -m pip install --quiet "$TORCH_SPEC" --index-url https://download.pytorch.org/whl/cpu
fi
extras=""
if [ "$#" -gt 0 ]; then extras="[$(IFS=,; echo "$*")]"; fi
python -m pip install --quiet -e ".${extras}"
