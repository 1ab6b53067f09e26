#!/usr/bin/env bash
# Set up .venv with the test extras and run the linter and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test attacks sweep
. .venv/bin/activate
# The real-MNIST tests read $DAM_DATA_DIR/mnist; default to the shared copy beside this checkout.
if [ -z "${DAM_DATA_DIR:-}" ] && [ -d ../shared/datasets/mnist ]; then
    export DAM_DATA_DIR=$(cd ../shared/datasets && pwd)
fi
ruff check src tests benchmarks
ruff format --check src tests benchmarks
python -m pytest "$@"
