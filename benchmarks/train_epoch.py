"""Seconds per training epoch on full MNIST (K = 2000, batch 1000) for DAM_2, DAM_20, DAM_30.

For each n, in a fresh process (so that peak memory is that n's alone): a warm-up of a few minibatches
(which compiles the fused kernel), then timed epochs of the real training step, then the floor: the
same epoch's unavoidable matrix products alone (h = V xi^T forward and dxi = dh^T V backward, per
minibatch), timed in the same process, alternating with the epochs.  ratio = the median over the
repeats of epoch / floor (the target is at most 1.5); seconds are the best of the repeats.

    python benchmarks/train_epoch.py [--n 2 20 30] [--device cpu] [--data-dir DIR]

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def worker(n: int, device_name: str, data_dir: str | None, batch_size: int, memories: int, repeats: int) -> dict:
    from dam.data import load_dataset
    from dam.model import DenseAssociativeMemory
    from dam.training import DAMTrainer, TrainData
    from dam.training.presets import preset

    device = torch.device(device_name)
    images, labels = load_dataset("mnist", "train", data_dir=data_dir)
    images, labels = images.reshape(len(images), -1).to(device), labels.to(device)
    config = preset(f"n{n}", "cpu", num_memories=memories, batch_size=batch_size)
    model = DenseAssociativeMemory(n, memories, config.temperature_at(0),
                                   generator=torch.Generator().manual_seed(0)).to(device)  # fmt: skip
    trainer = DAMTrainer(model, config)
    warm = 3 * batch_size
    trainer.train_epoch(0, TrainData(images[:warm], labels[:warm], images[:0], labels[:0], "test"))  # compile, warm
    data = TrainData(images, labels, images[:0], labels[:0], "test")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    # Epochs and floors alternate so that each pair sees the same state of a noisy host; the ratio
    # reported is the median of the pairs' ratios.
    visible = model.memories.detach()[:, :784].contiguous()
    dh = torch.randn(batch_size, memories, device=device)
    epoch_times, floor_times = [], []
    for r in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        stats = trainer.train_epoch(1 + r, data)
        _sync(device)
        epoch_times.append(time.perf_counter() - t0)
        # The floor: per minibatch, the forward product and the weight-gradient product, nothing else.
        t0 = time.perf_counter()
        for start in range(0, len(images), batch_size):
            v = 2 * images[start : start + batch_size] - 1
            h = v @ visible.t()
            g = dh.t() @ v
        _sync(device)
        floor_times.append(time.perf_counter() - t0)
    del h, g
    ratios = sorted(e / f for e, f in zip(epoch_times, floor_times, strict=True))
    ratio = ratios[len(ratios) // 2]
    epoch_seconds, floor_seconds = min(epoch_times), min(floor_times)
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # fmt: skip
    return {
        "n": n,
        "epoch_seconds": round(epoch_seconds, 3),
        "floor_seconds": round(floor_seconds, 3),
        "ratio": round(ratio, 3),
        "peak_memory_mb": round(peak / 2**20, 1),
        "peak_memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process max RSS",
        "epoch_seconds_all": [round(t, 3) for t in epoch_times],
        "floor_seconds_all": [round(t, 3) for t in floor_times],
        "train_error_during_epoch": round(stats["train_error"], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[2, 20, 30])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--memories", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs (and floors) per n; best is kept")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.device, args.data_dir, args.batch_size, args.memories, args.repeats)))
        return
    results = []
    for n in args.n:
        cmd = [sys.executable, __file__, "--worker", str(n), "--device", args.device, "--batch-size",
               str(args.batch_size), "--memories", str(args.memories), "--repeats", str(args.repeats)]  # fmt: skip
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ).stdout
        result = json.loads(out.strip().splitlines()[-1])
        results.append(result)
        print(f"n={n:>2d}: {result['epoch_seconds']:.2f} s/epoch, floor {result['floor_seconds']:.2f} s, "
              f"ratio {result['ratio']:.2f}, peak {result['peak_memory_mb']:.0f} MB", flush=True)  # fmt: skip
    summary = {
        "benchmark": "train_epoch",
        "device": args.device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "memories": args.memories,
        "results": results,
        "max_ratio": max(r["ratio"] for r in results),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
