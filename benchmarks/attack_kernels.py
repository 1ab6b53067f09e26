"""The attacks' cost in the DAM's kernels: eager PyTorch against torch.compile's fused kernels, on the same
model, images and attack (targeted APGD on the DLR loss, the costly half of AutoAttack), in one run.

    python benchmarks/attack_kernels.py RUN [--images 500] [--steps 20] [--targets 3] [--eps 0.05,0.1]

An attack shrinks its batch to the images still standing, so the compiled kernels must serve every batch
size: they compile twice (the first size static, then once with the batch dynamic), which the first compiled
pass pays and the second does not.  The eager pass is the floor of this machine without a compiler; the
robust accuracies of the passes are printed to show that only float rounding separates them (a single image
may differ).  RUN is a trained DAM's run folder (an untrained one gets most images wrong, and those are not
attacked); ``dam train --preset n30 --schedule cpu`` makes the cpu preset's.  The last line printed is one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from dam.robustness.attacks.autoattack import APGDT
from dam.robustness.attacks.runner import AttackSuite, attack_images
from dam.runs import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a trained DAM's run folder")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--targets", type=int, default=3)
    parser.add_argument("--eps", default="0.05,0.1")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()

    model = load_model(args.run).eval()
    images, labels, _ = attack_images(AttackSuite(images=args.images), args.data_dir)  # the attack stage's subset
    eps = [float(e) for e in args.eps.split(",")]
    attack = APGDT(model, eps, steps=args.steps, targets=args.targets, batch_size=500)

    passes: dict[str, list[float]] = {}
    accuracy: dict[str, list[float]] = {}
    for mode in ("eager", "compiled"):
        os.environ["DAM_COMPILE"] = "0" if mode == "eager" else "1"  # read on every kernel call
        for _ in range(2):
            started = time.perf_counter()
            result = attack(images, labels)
            passes.setdefault(mode, []).append(time.perf_counter() - started)
            accuracy[mode] = [round(a, 4) for a in result.robust_accuracy()]
            print(f"{mode}: {passes[mode][-1]:.2f} s, robust accuracy {accuracy[mode]}", flush=True)
    print(json.dumps({
        "benchmark": "attack_kernels",
        "model": args.run,
        "memories": model.num_memories,
        "attack": attack.describe(),
        "images": args.images,
        "seconds_eager": [round(t, 2) for t in passes["eager"]],
        "seconds_compiled_first_with_compiling": round(passes["compiled"][0], 2),
        "seconds_compiled": round(passes["compiled"][1], 2),
        "speedup_compiled_over_eager": round(min(passes["eager"]) / passes["compiled"][1], 2),
        "robust_accuracy": accuracy,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or platform.platform()}",
        "torch": torch.__version__,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
