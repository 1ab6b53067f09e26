"""Numbers for what the paper shows only in pictures (Fig. 2, 3): do memories and rubbish images look like digits?

"Looks like a digit of class c" is measured as the Pearson correlation, over the 784 pixels, with the mean
test image of class c.  Correlation ignores scale and offset, so memories in [-1, 1] and images in [0, 1]
compare alike.  Prototypes of single digits correlate strongly with one class mean; features shared by
several classes and speckled noise do not.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from dam.model import DenseAssociativeMemory


def class_means(images: Tensor, labels: Tensor, num_classes: int = 10) -> Tensor:
    """(num_classes, 784) mean image of each class."""
    x = images.reshape(len(images), -1).double()
    return torch.stack([x[labels == c].mean(dim=0) for c in range(num_classes)])


def _correlation(a: Tensor, b: Tensor) -> Tensor:
    """(len(a), len(b)) Pearson correlations between the rows of a and of b."""
    a = a.double() - a.double().mean(dim=1, keepdim=True)
    b = b.double() - b.double().mean(dim=1, keepdim=True)
    a = a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)
    b = b / b.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return a @ b.T


def memory_likeness(model: DenseAssociativeMemory, means: Tensor) -> dict[str, Any]:
    """Fig. 2 in numbers: how much each memory's visible part looks like one digit, and how many classes it serves.

    ``prototype_correlation``: mean over memories of the best correlation with a class mean.
    ``single_class_fraction``: memories whose label part is positive for exactly one class (a prototype's
    label) rather than several (a feature shared by classes) or none.
    """
    visible = model.visible_memories.detach().cpu()
    labels = model.label_memories.detach().cpu()
    best = _correlation(visible, means).max(dim=1).values
    positive = (labels > 0).sum(dim=1)
    return {
        "prototype_correlation": float(best.mean()),
        "single_class_fraction": float((positive == 1).double().mean()),
        "memories": len(visible),
    }


def image_likeness(images: Tensor, targets: Tensor, means: Tensor) -> float:
    """Fig. 3 in numbers: mean correlation of each image with the mean image of its target class."""
    corr = _correlation(images.reshape(len(images), -1).cpu(), means)
    return float(corr[torch.arange(len(images)), targets.cpu().long()].mean())


def deformation_likeness(clean: Tensor, boundary: Tensor, top: Tensor, second: Tensor, means: Tensor) -> float:
    """Fig. 4 in numbers: mean correlation of each deformation (boundary - clean) with the change from the
    top class's mean image to the second choice's.  Speckled noise scores near 0; a "ghost" of the second
    digit added to the first scores high."""
    a = (boundary - clean).reshape(len(clean), -1).cpu().double()
    b = (means[second.cpu().long()] - means[top.cpu().long()]).double()
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return float(((a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)).mean())
