"""The one rule for choosing a seeded subset of a data set, shared by training (``train_subset``), the
attacks, the detector and adversarial fine-tuning, so that "500 images, seed 0" names the same images
everywhere: the first ``count`` indices of ``torch.randperm(len(images))`` drawn from a generator seeded
with ``seed`` (the global random state is never touched)."""

from __future__ import annotations

import torch
from torch import Tensor

from dam.errors import InputError, is_whole, plain_number


def subset_indices(total: int, count: int, seed: int) -> Tensor:
    """Indices of the seeded subset: the first ``count`` of a seeded permutation of ``range(total)``."""
    count, seed = plain_number(count), plain_number(seed)
    if not is_whole(count) or not 1 <= count <= total:
        raise InputError(f"subset size must be an integer between 1 and {total}, got {count!r}")
    if not is_whole(seed):
        raise InputError(f"seed must be an integer, got {seed!r}")
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:count]


def seeded_subset(images: Tensor, labels: Tensor, count: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """``count`` images and labels chosen by :func:`subset_indices`, with the indices."""
    if len(images) != len(labels):
        raise InputError(f"{len(images)} images and {len(labels)} labels: give one label per image")
    index = subset_indices(len(images), count, seed)
    return images[index], labels[index], index
