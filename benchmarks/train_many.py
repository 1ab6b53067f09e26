"""Seconds per epoch of several DAMs trained together (dam.training.train_many) against one after another
(dam.training.train), on full MNIST.

Both ways train the same runs (one per seed of a preset) into temporary run folders, each way in a fresh
process (so that neither reuses the other's compiled kernels or warm caches).  Figures, from the run
folders' metrics.jsonl:

- ``together``: the epoch's training time of the stacked group (every model, one epoch);
- ``one after another``: the sum over the models of their own epoch's training time;
- the first epoch (which compiles the kernels) is reported apart from the later ones (the steady state);
- ``wall``: each way's whole wall-clock time, evaluation, data loading and file writes included;
- ``max |difference|``: the largest difference between the two ways' final weights (training is the same
  algorithm; see docs/training.md for what is and is not bit-identical).

    python benchmarks/train_many.py [--device cuda] [--seeds 0 1 2 3] [--preset n30] [--schedule quick]
                                    [--epochs 2] [--data-dir DIR] [--train-subset N]

The last line printed is one JSON object with every figure and the machine it ran on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def machine(device: str) -> dict:
    """What the figures were measured on."""
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))  # fmt: skip
    info = {"host": platform.node(), "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "device": device, "compile": os.environ.get("DAM_COMPILE", "1")}  # fmt: skip
    if hasattr(os, "getloadavg"):
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def worker(mode: str, args: argparse.Namespace, root: Path) -> dict:
    from dam.training import train, train_many
    from dam.training.presets import preset

    configs = [preset(args.preset, args.schedule, seed=s, epochs=args.epochs, train_subset=args.train_subset)
               for s in args.seeds]  # fmt: skip
    outs = [root / f"{mode}-s{s}" for s in args.seeds]
    t0 = time.perf_counter()
    if mode == "together":
        train_many(configs, outs, data_dir=args.data_dir, device=args.device, progress=False)
    else:
        for config, out in zip(configs, outs, strict=True):
            train(config, out, data_dir=args.data_dir, device=args.device, progress=False)
    wall = time.perf_counter() - t0
    epochs = []  # per epoch, the training seconds of all models
    for e in range(args.epochs):
        per_model = [json.loads((out / "metrics.jsonl").read_text().splitlines()[e])["train_seconds"] for out in outs]
        # together: every model's line records the group's time; one after another: each model's own
        epochs.append(per_model[0] if mode == "together" else sum(per_model))
    return {"mode": mode, "wall_seconds": round(wall, 2), "epoch_seconds": [round(t, 2) for t in epochs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--preset", default="n30")
    parser.add_argument("--schedule", default="quick")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--train-subset", type=int, default=None, help="fewer training images (smoke tests)")
    parser.add_argument("--worker", choices=["together", "alone"], help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args, Path(args.root))))
        return
    from safetensors.torch import load_file

    results = {}
    with tempfile.TemporaryDirectory(prefix="dam-train-many-") as root:
        for mode in ("together", "alone"):
            cmd = [sys.executable, __file__, "--worker", mode, "--root", root, "--device", args.device,
                   "--preset", args.preset, "--schedule", args.schedule, "--epochs", str(args.epochs),
                   "--seeds", *map(str, args.seeds)]  # fmt: skip
            if args.data_dir:
                cmd += ["--data-dir", args.data_dir]
            if args.train_subset:
                cmd += ["--train-subset", str(args.train_subset)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ).stdout
            results[mode] = json.loads(out.strip().splitlines()[-1])
            print(f"{mode:>8}: epochs {results[mode]['epoch_seconds']} s, wall {results[mode]['wall_seconds']} s",
                  flush=True)  # fmt: skip
        diff = max(
            float((load_file(f"{root}/together-s{s}/model.safetensors")["memories"]
                   - load_file(f"{root}/alone-s{s}/model.safetensors")["memories"]).abs().max())
            for s in args.seeds
        )  # fmt: skip
    together, alone = results["together"]["epoch_seconds"], results["alone"]["epoch_seconds"]
    later = slice(1, None) if len(together) > 1 else slice(0, None)
    steady_together = sum(together[later]) / len(together[later])
    steady_alone = sum(alone[later]) / len(alone[later])
    print(f"{len(args.seeds)} x {args.preset} ({args.schedule}) on {args.device}: first epoch (compiles) "
          f"{together[0]:.2f} s together vs {alone[0]:.2f} s one after another; later epochs {steady_together:.2f} s "
          f"vs {steady_alone:.2f} s ({steady_alone / steady_together:.2f}x); max |difference| {diff:.3g}")  # fmt: skip
    summary = {
        "benchmark": "train_many",
        "machine": machine(args.device),
        "preset": args.preset,
        "schedule": args.schedule,
        "seeds": args.seeds,
        "epochs": args.epochs,
        "train_subset": args.train_subset,
        "together": results["together"],
        "alone": results["alone"],
        "first_epoch_speedup": round(alone[0] / together[0], 3),
        "later_epoch_seconds": {"together": round(steady_together, 2), "alone": round(steady_alone, 2)},
        "later_epoch_speedup": round(steady_alone / steady_together, 3),
        "max_abs_weight_difference": diff,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
