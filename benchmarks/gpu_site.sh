#!/usr/bin/env bash
# The `attacks` extra (Foolbox, the AutoAttack reference code and their pure-Python needs) for the device
# machine, whose image has torch, numpy, scipy and requests but not these, and which reaches no registry.
# Unpacks the wheels into .site/ (ignored by git; ~3 MB without pyautoattack's 45 MB of example models):
#     bash benchmarks/gpu_site.sh
# then carry it beside the data:  run(command="bash benchmarks/gpu_check.sh", carry=["data", ".site"], ...)
# gpu_check.sh puts .site on PYTHONPATH when it is there, so `dam attack` and the attack stage run too.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform any -d "$tmp" foolbox==3.3.4 eagerpy==0.30.0 GitPython==3.1.45 gitdb==4.0.12 smmap==5.0.2 \
    pyautoattack==0.2.0
rm -rf .site && mkdir .site
for wheel in "$tmp"/*.whl; do
    python3 -m zipfile -e "$wheel" .site
done
rm -rf .site/pyautoattack/examples
du -sh .site
