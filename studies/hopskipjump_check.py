"""Does the label-only attack break any image the gradient attacks leave?  (Carlini et al.'s checklist)

    python studies/hopskipjump_check.py RUN [RUN ...] --images 1000 --out hsj-check.jsonl

For each run folder (a DAM or an MLP baseline) and each norm, on the attack stage's seeded test subset
(``attack_images``, seed 0): APGD-CE on every correctly classified image, then APGD-T (9 targets, the DLR
loss) on what it left, both from the reference AutoAttack code at the standard protocol's 100 iterations;
and HopSkipJump (dam's per-image gradient estimate, the `cpu` preset's 20 steps and at most 400
evaluations per estimate) on every image.  Prints and appends one JSON line per model and norm: robust
accuracy of each against budget, and per budget the number of images HopSkipJump broke that the two APGD
attacks left (the check: 0 everywhere means the gradient attacks are not masked where a label-only attack
would see through), with the wall time and queries of each.  Budgets are the `cpu` preset's (to 0%).

Run it under ``if __name__ == "__main__"`` as here; one thread per process is what the figures in
docs/robustness.md used (``OMP_NUM_THREADS=1`` or ``--threads``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dam import as_logits, load_model
from dam.experiments.reproduce import L2_TO_ZERO, LINF_TO_ZERO
from dam.robustness.attacks.autoattack import APGDCE, APGDT
from dam.robustness.attacks.runner import AttackSuite, attack_images
from dam.runs import model_name


def check(run: str, norm: str, images: int, data_dir: str | None) -> dict:
    model = load_model(run)
    # the attack stage's subset and HopSkipJump (the cpu preset's settings), in both norms
    suite = AttackSuite(images=images, linf=LINF_TO_ZERO, l2=L2_TO_ZERO, hsj_norms=("linf", "l2"))
    x, y, _ = attack_images(suite, data_dir)
    eps = suite.budgets(norm)
    ce = APGDCE(model, eps, norm=norm)(x, y)
    targeted = APGDT(model, eps, norm=norm)(x, y, attack_only=~ce.success)
    apgd = ce.success | targeted.success
    (hopskipjump,) = suite.decision_based(model, norm)
    hsj = hopskipjump(x, y)
    only_hsj = hsj.success & ~apgd
    results = {"apgd-ce": ce, "apgd-t": targeted, "hopskipjump": hsj}
    with torch.no_grad():
        clean = float((as_logits(model)(x).argmax(dim=1) == y).float().mean())
    return {
        "model": model_name(run),
        "run": str(run),
        "norm": norm,
        "images": len(x),
        "epsilons": eps,
        "clean_accuracy": round(clean, 4),
        "apgd_robust_accuracy": [round(1 - float(s.float().mean()), 4) for s in apgd],
        "hopskipjump_robust_accuracy": [round(a, 4) for a in hsj.robust_accuracy()],
        "broken_by_hopskipjump_only": [int(s.sum()) for s in only_hsj],
        "seconds": {name: round(r.seconds, 1) for name, r in results.items()},
        "queries_per_image": {name: round(r.queries_per_image) for name, r in results.items()},
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--norms", default="linf,l2")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--data-dir")
    parser.add_argument("--out", required=True, help="JSON-lines file the results are appended to")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for run in args.runs:
        for norm in args.norms.split(","):
            started = time.perf_counter()
            row = check(run, norm, args.images, args.data_dir)
            row["wall_s"] = round(time.perf_counter() - started, 1)
            line = json.dumps(row)
            print(line, flush=True)
            with Path(args.out).open("a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
