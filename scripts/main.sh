#!/usr/bin/env bash
# The main job: set up .venv (and Chromium for the report's browser check, where that needs no password),
# then reproduce the paper at the quick preset (DAM_2, 3, 20, 30 trained, every probe run, HTML report
# written; minutes on a laptop CPU).  MNIST is read from $DAM_DATA_DIR/mnist, the cache, or downloaded
# once.  Extra arguments go to `dam reproduce` (e.g. --preset cpu --out runs/cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh attacks
bash scripts/chromium.sh || true  # the report is written without it; its browser check is then skipped
. .venv/bin/activate
if [ "$#" -eq 0 ]; then set -- --preset quick --out runs/quick; fi
dam reproduce "$@"
