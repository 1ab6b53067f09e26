#!/usr/bin/env bash
# Debian's Chromium, for the report's browser check (`dam report --check`, the last step of `dam reproduce`).
# Installed only where that needs no password (root, apt-get: a container, a CI machine); elsewhere one line
# says how, and exits 1.  Nothing happens when a Chromium or Chrome is already on PATH or in $DAM_CHROMIUM.
set -uo pipefail
if [ -n "${DAM_CHROMIUM:-}" ]; then exit 0; fi
for name in chromium chromium-browser google-chrome google-chrome-stable chrome; do
    if command -v "$name" >/dev/null 2>&1; then exit 0; fi
done
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "[chromium] not found: install Chromium (Debian: sudo apt-get install chromium) or set DAM_CHROMIUM, so that the report's browser check runs" >&2
    exit 1
fi
echo "[chromium] installing Debian's chromium (apt-get) for the report's browser check"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
