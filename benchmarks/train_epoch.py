"""Seconds per training epoch on full MNIST (K = 2000, batch 1000) for DAM_2, DAM_20, DAM_30.

For each n, in a fresh process (so that peak memory is that n's alone): a warm-up (which compiles the fused
kernels; on a GPU, the first epoch, after which the epoch is captured as a CUDA graph), then timed epochs of
the step training uses on that device (:class:`dam.training.DAMTrainer` on a CPU; on a GPU the stacked step,
one model of one, replayed as a CUDA graph, as ``dam train --device cuda`` runs it), then the floor: the same
epoch's unavoidable matrix products alone (h = V xi^T forward and dxi = dh^T V backward, per minibatch),
timed in the same process, alternating with the epochs.  ratio = the median over the repeats of epoch /
floor (targets: at most 1.5 on a CPU, 2.0 on a GPU); seconds are the best of the repeats.

On a GPU it also prints the same epoch without graphs (``eager_epoch_seconds``), the largest difference
between the weights after one graph epoch and one eager epoch from the same state (0: bit for bit), and with
``--profile`` the kernels of one eager epoch by GPU time.

    python benchmarks/train_epoch.py [--n 2 20 30] [--device cpu] [--data-dir DIR] [--profile]

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


def worker(n: int, device_name: str, data_dir: str | None, batch_size: int, memories: int, repeats: int,
           profile: bool) -> dict:  # fmt: skip
    from pathlib import Path

    from dam.data import load_dataset
    from dam.environment import flush_denormals
    from dam.model import DenseAssociativeMemory
    from dam.training import DAMTrainer, Run, StackedDAMs, TrainData
    from dam.training.loop import RunPlan
    from dam.training.presets import preset

    device = torch.device(device_name)
    images, labels = load_dataset("mnist", "train", data_dir=data_dir)
    images, labels = images.reshape(len(images), -1).to(device), labels.to(device)
    config = preset(f"n{n}", "cpu", num_memories=memories, batch_size=batch_size)
    model = DenseAssociativeMemory(n, memories, config.temperature_at(0),
                                   generator=torch.Generator().manual_seed(0)).to(device)  # fmt: skip
    trainer = DAMTrainer(model, config)
    data = TrainData(images, labels, images[:0], labels[:0], "test")
    result: dict = {"n": n}
    if device.type == "cuda":
        run = Run(trainer, RunPlan(Path("unused"), config.epochs), {}, data)
        stacked = StackedDAMs([run])

        def epoch_step(epoch: int) -> dict:
            return stacked.train_epoch(epoch, [run])[0]

        epoch_step(0)  # eager, compiles the kernels; then captured
        result["graph_captured"] = next(iter(stacked.buffers.values())).graph is not None
        # graph against eager, from the same state: the weights after one epoch each
        start = (model.memories.detach().clone(), trainer.velocity.clone())
        epoch_step(1)
        after_graph = model.memories.detach().clone()
        os.environ["DAM_CUDA_GRAPHS"] = "0"
        eager_times = []
        for _ in range(2):
            with torch.no_grad():
                model.memories.copy_(start[0])
                trainer.velocity.copy_(start[1])
            _sync(device)
            t0 = time.perf_counter()
            epoch_step(1)
            _sync(device)
            eager_times.append(time.perf_counter() - t0)
        result["graph_vs_eager_max_abs_diff"] = float((after_graph - model.memories.detach()).abs().max())
        result["eager_epoch_seconds"] = round(min(eager_times), 4)
        if profile:
            from torch.profiler import ProfilerActivity
            from torch.profiler import profile as torch_profile

            with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                epoch_step(1)
                _sync(device)
            print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=14), file=sys.stderr)
        os.environ.pop("DAM_CUDA_GRAPHS")
    else:
        warm = 3 * batch_size
        trainer.train_epoch(0, TrainData(images[:warm], labels[:warm], images[:0], labels[:0], "test"))

        def epoch_step(epoch: int) -> dict:
            with flush_denormals():  # as the training loop runs it
                return trainer.train_epoch(epoch, data)

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
        stats = epoch_step(2 + r)
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
        **result,
        "epoch_seconds": round(epoch_seconds, 4),
        "floor_seconds": round(floor_seconds, 4),
        "ratio": round(ratio, 3),
        "peak_memory_mb": round(peak / 2**20, 1),
        "peak_memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process max RSS",
        "epoch_seconds_all": [round(t, 4) for t in epoch_times],
        "floor_seconds_all": [round(t, 4) for t in floor_times],
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
    parser.add_argument("--profile", action="store_true", help="GPU: print one eager epoch's kernels by GPU time")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(
            json.dumps(
                worker(
                    args.worker, args.device, args.data_dir, args.batch_size, args.memories, args.repeats, args.profile
                )
            )
        )
        return
    from dam.data import load_dataset
    from dam.errors import DatasetError

    try:  # here once: a missing data set is one line, not a traceback per worker (who then find it on disk)
        load_dataset("mnist", "train", data_dir=args.data_dir)
    except DatasetError as exc:
        parser.exit(2, f"{parser.prog}: {exc}\n")
    results = []
    for n in args.n:
        cmd = [sys.executable, __file__, "--worker", str(n), "--device", args.device, "--batch-size",
               str(args.batch_size), "--memories", str(args.memories), "--repeats", str(args.repeats)]  # fmt: skip
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        if args.profile:
            cmd += ["--profile"]
        done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
        if args.profile or done.returncode:
            print(done.stderr[-6000:], file=sys.stderr, flush=True)
        if done.returncode:
            print(f"n={n:>2d}: the worker failed (exit {done.returncode}); its error is above", flush=True)
            continue
        out = done.stdout
        result = json.loads(out.strip().splitlines()[-1])
        results.append(result)
        extra = ""
        if "eager_epoch_seconds" in result:
            extra = (f", without graphs {result['eager_epoch_seconds']:.3f} s, graph vs eager max diff "
                     f"{result['graph_vs_eager_max_abs_diff']:.3g}")  # fmt: skip
        print(f"n={n:>2d}: {result['epoch_seconds']:.3f} s/epoch, floor {result['floor_seconds']:.3f} s, "
              f"ratio {result['ratio']:.2f}, peak {result['peak_memory_mb']:.0f} MB{extra}", flush=True)  # fmt: skip
    summary = {
        "benchmark": "train_epoch",
        "device": args.device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "memories": args.memories,
        "results": results,
        "max_ratio": max((r["ratio"] for r in results), default=None),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
