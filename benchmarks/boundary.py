"""Decision-boundary search on the MNIST test set for one trained model (issue target: 10,000 images of a
K = 2000, n = 20 model in at most 10 minutes on a 2-core CPU).

    python benchmarks/boundary.py RUN [--images 10000] [--eps 0.1] [--m 30] [--batch-size 1000]

RUN is a run folder (``dam train --preset n20 --schedule cpu --out RUN``).  m defaults to the run's
training m.  The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from dam import DenseAssociativeMemory, load_dataset
from dam.probes import BoundarySearch
from dam.runs import read_run_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--m", type=int, default=None)
    parser.add_argument("--max-steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    model = DenseAssociativeMemory.load(args.run, device=args.device)
    m = args.m or (read_run_config(args.run).get("train") or {}).get("m", 3)
    images, _ = load_dataset("mnist", "test", data_dir=args.data_dir)
    images = images[: args.images]
    search = BoundarySearch(model, eps=args.eps, max_steps=args.max_steps, m=m, batch_size=args.batch_size,
                            dtype=getattr(torch, args.dtype))  # fmt: skip
    t0 = time.perf_counter()
    result = search(images)
    seconds = time.perf_counter() - t0
    crossed = result.crossing_step >= 0
    dist = result.distances("boundary")
    summary = {
        "benchmark": "boundary",
        "run": args.run,
        "n": model.n,
        "memories": model.num_memories,
        "images": len(images),
        "eps": args.eps,
        "m": m,
        "dtype": args.dtype,
        "seconds": round(seconds, 1),
        "images_per_second": round(len(images) / seconds, 2),
        "steps_per_image_mean": round(float(result.steps.float().mean()), 1),
        "crossing_step_median": float(result.crossing_step[crossed].float().median()) if crossed.any() else None,
        "success_rate": round(float(result.success.float().mean()), 4),
        "stalled_rate": round(float(result.stalled.float().mean()), 4),
        "stuck_rate": round(float(result.stuck.float().mean()), 4),
        "l2_mean": round(float(dist["l2"].nanmean()), 4),
        "linf_mean": round(float(dist["linf"].nanmean()), 4),
        "torch_threads": torch.get_num_threads(),
    }
    print(f"{len(images)} images in {seconds:.0f} s ({summary['images_per_second']} images/s), "
          f"{summary['steps_per_image_mean']} steps per image, success {summary['success_rate']:.2%}")  # fmt: skip
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
