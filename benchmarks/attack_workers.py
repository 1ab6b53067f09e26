"""The attack stage with models attacked one after another, then several at once in worker processes, on the
same runs, images and settings (the `quick` reproduction's suite by default), in one run of this script.

    python benchmarks/attack_workers.py RUN [RUN ...] [--sources RUN ...] [--workers 2] [--preset quick]

RUNs are run folders (e.g. ``runs/quick/runs/n2 ... runs/quick/beyond/baselines/mlp-relu``).  The passes one
at a time (``--workers 1``, every core to one model; run before and after) are the floor the workers' pass
is measured against; each writes to a fresh temporary folder, and their robust accuracies must agree
exactly (each model is seeded alone, so where it runs cannot change its result).  The last line printed is
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import torch

from dam.experiments.reproduce import PRESETS
from dam.robustness.attacks.runner import AttackSuite, run_attacks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--sources", nargs="*", default=[])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--preset", default="quick", choices=sorted(p for p in PRESETS if PRESETS[p].attacks))
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()

    settings = PRESETS[args.preset].attacks or {}
    suite = AttackSuite(**{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()})
    timings: dict[int, list[float]] = {1: [], args.workers: []}
    tables = []
    # one at a time, then in workers, then one at a time again: the first pass also pays this process's
    # first imports and allocations, which the workers pay in their own processes every time
    for workers in (1, args.workers, 1):
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            summary = run_attacks(args.runs, out, suite, sources=args.sources, data_dir=args.data_dir,
                                  workers=workers, log=lambda line: None)  # fmt: skip
            timings[workers].append(time.perf_counter() - started)
        tables.append({name: {norm: t["worst_case"] for norm, t in m["tables"].items()}
                       for name, m in summary["models"].items()})  # fmt: skip
        print(f"workers {workers}: {timings[workers][-1]:.1f} s", flush=True)
    floor = min(timings[1])
    result = {
        "benchmark": "attack_workers",
        "preset": args.preset,
        "models": len(args.runs),
        "sources": len(args.sources),
        "images": suite.images,
        "seconds_one_at_a_time": [round(t, 1) for t in timings[1]],
        f"seconds_{args.workers}_workers": round(timings[args.workers][0], 1),
        "speedup_over_the_faster_one_at_a_time": round(floor / timings[args.workers][0], 2),
        "same_worst_case": tables[0] == tables[1] == tables[2],
        "cores": os.cpu_count(),
        "torch_threads_one_at_a_time": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or platform.platform()}",
        "torch": torch.__version__,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
