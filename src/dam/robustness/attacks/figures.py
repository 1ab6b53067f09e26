"""Robust accuracy against budget, one panel per norm."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dam.plotting import new_figure, save_figure


def robust_accuracy_figure(summary: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Solid: worst case per image over all attacks; dotted: over the gradient attacks only (a gap between them
    means attacks that need no gradient found what the gradient attacks missed: a sign of masking)."""
    fig = new_figure((11, 4.2))
    axes = fig.subplots(1, 2)
    for ax, norm in zip(axes, ("linf", "l2"), strict=True):
        eps = [0.0, *summary["suite"][norm]]
        for i, (name, m) in enumerate(summary["models"].items()):
            t = m["tables"][norm]
            color = f"C{i % 10}"
            white = t.get("gradient_worst_case") or []
            if not white:  # results of dam 0.3 and older: the best single gradient attack
                gradient = [a for a, free in t["gradient_free"].items() if not free]
                white = [min(t["attacks"][a][j] for a in gradient) for j in range(len(eps) - 1)]
            ax.plot(eps, [t["clean_accuracy"], *t["worst_case"]], "-o", color=color, label=name, ms=4)
            ax.plot(eps, [t["clean_accuracy"], *white], ":", color=color, alpha=0.8)
        ax.set_xlabel(f"{'L-inf' if norm == 'linf' else 'L2'} budget eps (pixels in [0, 1])")
        ax.set_ylabel("robust accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.set_title(f"{norm}: solid = all attacks, dotted = gradient attacks only")
    axes[0].legend(fontsize=8)
    dataset = summary["images"].get("dataset", "MNIST")
    fig.suptitle(f"Robust accuracy on {summary['images']['count']} seeded {dataset} test images")
    return save_figure(fig, path)
