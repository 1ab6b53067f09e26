#!/usr/bin/env bash
# Debian's Chromium, for the report's browser check (`dam report --check`, the last step of `dam reproduce`).
# Installed only where that needs no password (root, apt-get: a container, a CI machine); elsewhere one line
# says how, and exits 1.  Nothing happens when the browser check already finds a Chromium or Chrome.
set -uo pipefail
# Would the browser check find one?  dam's own lookup ($DAM_CHROMIUM, then the names it tries on PATH), run by
# the python of the .venv that scripts/setup.sh made (or $DAM_PYTHON).
here=${0%/*}; [ "$here" = "$0" ] && here=.  # no dirname: the tests give the script a bare PATH
python=${DAM_PYTHON:-$here/../.venv/bin/python}
"$python" -c 'import sys; from dam.experiments.report.browser import find_chromium; sys.exit(0 if find_chromium() else 3)' 2>/dev/null
case $? in
    0) exit 0 ;;
    3) ;;
    *) echo "[chromium] cannot ask dam where Chromium is ($python): run bash scripts/setup.sh first" >&2; exit 1 ;;
esac
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "[chromium] not found: install Chromium (Debian: sudo apt-get install chromium) or set DAM_CHROMIUM, so that the report's browser check runs" >&2
    exit 1
fi
echo "[chromium] installing Debian's chromium (apt-get) for the report's browser check"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
