"""How large the cross-entropy loss's input gradient is at the clean images and at the end points PGD left unbroken.

The masking diagnostics of ``dam attack`` test the input gradients at the clean images only (exact zeros, non-finite
values). A large-n DAM's cross-entropy gradient is healthy there and vanishes on the way: PGD walks the image into a
region where every score is near zero, and the loss flattens at ln 10. This study measures that vanishing (the
median L2 norm of d CE / d x, in float32 and float64, so that underflow would show as a difference between the two)
beside the targeted DLR loss's gradient at the same points, which does not depend on the scores' scale.

    python studies/ce_gradient.py runs/paper/runs/n30 runs/paper/runs/n2 --images 300 --linf 0.1 0.2 0.3

The images are the first of the attack stage's seeded subset (``dam attack``'s default seed 0); PGD has the suite's
settings (Foolbox, 40 steps, random start, seed 0) but runs here one budget at a time on these images, so its end
points are not those of an attack stage's run, only made the same way.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from dam.model import as_logits
from dam.robustness.attacks import PGD
from dam.robustness.attacks.runner import AttackSuite, attack_images
from dam.runs import load_model


def targeted_dlr(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Croce & Hein's targeted DLR loss toward the runner-up class (per image)."""
    ordered, classes = scores.sort(dim=1)
    rows = torch.arange(len(labels))
    target = torch.where(classes[:, -1] == labels, classes[:, -2], classes[:, -1])
    scale = ordered[:, -1] - 0.5 * (ordered[:, -3] + ordered[:, -4]) + 1e-12
    return -(scores[rows, labels] - scores[rows, target]) / scale


def gradient_norms(model: torch.nn.Module, points: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per image: the L2 norm of the input gradient of each loss at ``points``."""
    x = points.clone().requires_grad_(True)
    scores = as_logits(model)(x)
    losses = {"ce": F.cross_entropy(scores, labels, reduction="none"), "dlr": targeted_dlr(scores, labels)}
    out = {}
    for name, loss in losses.items():
        (grad,) = torch.autograd.grad(loss.sum(), x, retain_graph=True)
        out[name] = grad.norm(dim=1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="DAM run folders (read only)")
    p.add_argument("--images", type=int, default=300, help="the first N of the attack stage's 1,000 seeded images")
    p.add_argument("--linf", type=float, nargs="+", default=[0.1, 0.2, 0.3], help="PGD budgets")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    images, labels, _ = attack_images(AttackSuite(images=1000), args.data_dir)
    images, labels = images[: args.images], labels[: args.images]
    print("run | points | dtype | CE gradient norm: median, 10th percentile, zero rows | DLR gradient norm median")
    for run in args.runs:
        models = {dtype: load_model(run).to(dtype).eval() for dtype in (torch.float32, torch.float64)}
        correct = as_logits(models[torch.float32])(images).argmax(dim=1) == labels
        # where: (points, the images measured there): the clean images the attacks start from, then PGD's end points
        # on the images it failed to break (where a gradient that vanished would have stopped it)
        points = {"clean": (images, correct)}
        for eps in args.linf:
            result = PGD(models[torch.float32], [eps], norm="linf", steps=40, seed=0)(images, labels)
            points[f"PGD's end points it left unbroken, L-inf {eps:g}"] = (result.adversarials[0],
                                                                          correct & ~result.success[0])  # fmt: skip
        for where, (x, keep) in points.items():
            if not keep.any():
                print(f"{run} | {where} | - | no image left | -")
                continue
            for dtype, model in models.items():
                norms = gradient_norms(model, x.to(dtype), labels)
                ce, dlr = norms["ce"][keep], norms["dlr"][keep]
                print(f"{run} | {where} | {str(dtype).removeprefix('torch.')} | {ce.median():.3g}, "
                      f"{ce.quantile(0.1):.3g}, {int((ce == 0).sum())} of {len(ce)} | {dlr.median():.3g}")  # fmt: skip


if __name__ == "__main__":
    main()
