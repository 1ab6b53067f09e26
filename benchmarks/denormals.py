"""What denormal numbers cost a trained large-n DAM on a CPU, and what flushing them buys.

At initialisation a DAM's energy-gap terms (h / T)^n are ordinary floats; as it learns, most of them (and of
their gradients) sink below 1.2e-38, where x86 CPUs compute many times slower.  The training loop therefore
runs each epoch inside :func:`dam.environment.flush_denormals` (denormals read and written as zero, in
every thread).  For each run folder given, from its trained weights (in a fresh process each):

* one training epoch of the run's own settings, computing on denormals and flushed, alternately
  (``--repeats`` pairs, after a warm-up epoch on a slice that compiles the kernels); the loss of both, and
  the largest weight difference after one epoch from the same state;
* the scores of the 10,000 test images, both ways, and whether the predictions agree.

    python benchmarks/denormals.py RUN [RUN ...] [--repeats 2] [--data-dir DIR]

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch


def worker(run: str, data_dir: str | None, repeats: int) -> dict:
    from dam.data import load_dataset
    from dam.environment import flush_denormals
    from dam.model import DenseAssociativeMemory
    from dam.runs import read_run_config
    from dam.training import DAMTrainer, TrainData
    from dam.training.rule import TrainConfig

    model = DenseAssociativeMemory.load(run)
    config = TrainConfig.from_dict(read_run_config(run)["train"])
    images, labels = load_dataset(config.dataset, "train", data_dir=data_dir)
    images = images.reshape(len(images), -1)
    test_x, test_y = load_dataset(config.dataset, "test", data_dir=data_dir)
    epoch = config.epochs - 1
    start = model.memories.detach().clone()
    data = TrainData(images, labels, images[:0], labels[:0], "test")
    warm = 3 * config.batch_size
    DAMTrainer(model, config).train_epoch(
        epoch, TrainData(images[:warm], labels[:warm], images[:0], labels[:0], "test")
    )

    def one_epoch(flush: bool) -> tuple[float, float, torch.Tensor]:
        with torch.no_grad():
            model.memories.copy_(start)
        trainer = DAMTrainer(model, config)  # momentum from zero, the same both ways
        t0 = time.perf_counter()
        if flush:
            with flush_denormals():
                stats = trainer.train_epoch(epoch, data)
        else:
            stats = trainer.train_epoch(epoch, data)
        return time.perf_counter() - t0, stats["loss"], model.memories.detach().clone()

    times: dict[str, list[float]] = {"denormals": [], "flushed": []}
    losses, weights = {}, {}
    for _ in range(repeats):
        for name, flush in (("denormals", False), ("flushed", True)):
            seconds, losses[name], weights[name] = one_epoch(flush)
            times[name].append(seconds)
    with torch.no_grad():
        model.memories.copy_(start)
        t0 = time.perf_counter()
        plain = model.scores(test_x)
        plain_seconds = time.perf_counter() - t0
        with flush_denormals():
            t0 = time.perf_counter()
            flushed = model.scores(test_x)
            flushed_seconds = time.perf_counter() - t0
    return {
        "run": run,
        "n": model.n,
        "epoch": epoch + 1,
        "epoch_seconds_denormals": round(min(times["denormals"]), 3),
        "epoch_seconds_flushed": round(min(times["flushed"]), 3),
        "speedup": round(min(times["denormals"]) / min(times["flushed"]), 2),
        "loss_denormals": losses["denormals"],
        "loss_flushed": losses["flushed"],
        "weights_max_abs_diff": float((weights["denormals"] - weights["flushed"]).abs().max()),
        "test_scores_seconds_denormals": round(plain_seconds, 3),
        "test_scores_seconds_flushed": round(flushed_seconds, 3),
        "test_predictions_agree": bool((plain.argmax(1) == flushed.argmax(1)).all()),
        "test_error": float((plain.argmax(1) != test_y).float().mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="trained DAM run folders")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.runs[0], args.data_dir, args.repeats)))
        return
    results = []
    for run in args.runs:
        cmd = [sys.executable, __file__, run, "--worker", "--repeats", str(args.repeats)]
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
        if done.returncode:
            print(done.stderr[-4000:], file=sys.stderr)
            print(f"{run}: the worker failed (exit {done.returncode}); its error is above", flush=True)
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"{run} (n={r['n']}, epoch {r['epoch']}): epoch {r['epoch_seconds_denormals']:.2f} s on denormals, "
              f"{r['epoch_seconds_flushed']:.2f} s flushed ({r['speedup']:.1f}x), weights differ by at most "
              f"{r['weights_max_abs_diff']:.3g}; test scores {r['test_scores_seconds_denormals']:.2f} s against "
              f"{r['test_scores_seconds_flushed']:.2f} s, predictions agree: {r['test_predictions_agree']}",
              flush=True)  # fmt: skip
    print(json.dumps({"benchmark": "denormals", "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "cpu": _cpu_name(), "results": results}))  # fmt: skip


def _cpu_name() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        return None


if __name__ == "__main__":
    main()
