"""Picture statistics: prototypes, digit-like images and ghost-digit deformations score high; noise does not."""

from __future__ import annotations

import torch

from dam.model import DenseAssociativeMemory
from dam.probes.likeness import class_means, deformation_likeness, image_likeness, memory_likeness


def _digits(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Ten random blob 'classes', 20 noisy examples each, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    prototypes = (torch.rand(10, 784, generator=g) > 0.7).float()
    labels = torch.arange(10).repeat_interleave(20)
    images = (prototypes[labels] + 0.1 * torch.randn(200, 784, generator=g)).clamp(0, 1)
    return images, labels


def test_class_means_are_per_class_averages():
    images, labels = _digits()
    means = class_means(images, labels)
    assert means.shape == (10, 784)
    assert torch.allclose(means[3], images[labels == 3].double().mean(dim=0))


def test_prototype_memories_score_high_and_noise_memories_low():
    images, labels = _digits()
    means = class_means(images, labels)
    model = DenseAssociativeMemory(n=20, num_memories=10, temperature=500.0)
    with torch.no_grad():
        model.memories.fill_(-1.0)
        model.memories[:, :784] = 2 * means.float() - 1  # each memory is one class's prototype ...
        model.memories[torch.arange(10), 784 + torch.arange(10)] = 1.0  # ... voting for that class only
    proto = memory_likeness(model, means)
    assert proto["prototype_correlation"] > 0.99 and proto["single_class_fraction"] == 1.0
    with torch.no_grad():
        model.memories.uniform_(-1, 1, generator=torch.Generator().manual_seed(1))
    noise = memory_likeness(model, means)
    assert noise["prototype_correlation"] < 0.3 and noise["single_class_fraction"] < 0.5


def test_image_likeness_tells_digits_from_noise():
    images, labels = _digits()
    means = class_means(images, labels)
    assert image_likeness(images, labels, means) > 0.8
    noise = torch.rand(50, 784, generator=torch.Generator().manual_seed(2))
    assert abs(image_likeness(noise, labels[:50], means)) < 0.2


def test_ghost_of_the_second_digit_scores_high_and_speckle_low():
    images, labels = _digits()
    means = class_means(images, labels)
    clean, top = images[:20], labels[:20]
    second = (top + 1) % 10
    ghost = clean + 0.3 * (means[second] - means[top]).float()
    assert deformation_likeness(clean, ghost, top, second, means) > 0.99
    speckle = clean + 0.3 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(3))
    assert abs(deformation_likeness(clean, speckle, top, second, means)) < 0.2
