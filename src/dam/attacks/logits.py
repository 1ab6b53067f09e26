"""Which output of a model an attack differentiates.

A DAM's forward returns Y = tanh(s), and for a confidently classified digit every Y_alpha sits at +-1 to
within float precision: cross-entropy or margin losses on Y then have gradients that are tiny or exactly
zero, and a gradient attack fails for numerical rather than real reasons.  The pre-tanh scores s (the
scaled energy gaps of eq. 1) order the classes exactly as Y does (tanh is increasing) and do not
saturate, so they are the logits an attacker should use.  The baselines already return logits.
"""

from __future__ import annotations

from torch import Tensor, nn

from dam.model import DenseAssociativeMemory

LOGITS_NOTE = (
    "DAMs are attacked through their pre-tanh scores s (Y = tanh(s) saturates at +-1 and would starve "
    "gradient attacks of gradient; s ranks the classes exactly as Y does); MLP baselines through their logits"
)


class ScoresOf(nn.Module):
    """A DAM seen through its scores: same input contract, logits out."""

    def __init__(self, model: DenseAssociativeMemory) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model.scores(images)


def attack_logits(model: nn.Module) -> nn.Module:
    """The module whose outputs attacks should treat as logits (idempotent)."""
    if isinstance(model, DenseAssociativeMemory):
        return ScoresOf(model)
    return model
