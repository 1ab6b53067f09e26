"""The paper's pictures as PNG files: Fig. 2-7, drawn without pyplot (see :mod:`dam.plotting`)."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import torch

from dam.model import DenseAssociativeMemory
from dam.plotting import new_figure, save_figure
from dam.probes.boundary import BoundaryResult
from dam.probes.rubbish import RubbishResult

logger = logging.getLogger(__name__)


def memories_figure(model: DenseAssociativeMemory, path: str | os.PathLike[str], count: int = 64) -> Path:
    """Fig. 2: visible parts of the first ``count`` memories as 28x28 images, diverging colours in [-1, 1]."""
    k = min(count, model.num_memories)
    cols = math.ceil(math.sqrt(k))
    rows = math.ceil(k / cols)
    fig = new_figure((1.1 * cols, 1.1 * rows + 0.6))
    axes = fig.subplots(rows, cols, squeeze=False)
    weights = model.visible_memories.detach().cpu()
    labels = model.label_memories.detach().cpu().argmax(dim=1)
    image = None
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < k:
            image = ax.imshow(weights[i].reshape(28, 28).numpy(), cmap="bwr", vmin=-1, vmax=1)
            ax.set_title(str(int(labels[i])), fontsize=7, pad=1)
    fig.suptitle(f"DAM$_{{{model.n}}}$: visible part of {k} memories (title: strongest label weight)")
    fig.colorbar(image, ax=axes, shrink=0.6, label="weight")
    return save_figure(fig, path)


def rubbish_figure(result: RubbishResult, path: str | os.PathLike[str], title: str, per_class: int = 4) -> Path:
    """Fig. 3: rubbish images, one column per target class, with the model's label and success."""
    fig = new_figure((11, 1.2 * per_class + 0.6))
    axes = fig.subplots(per_class, 10, squeeze=False)
    for c in range(10):
        idx = torch.nonzero(result.targets.cpu() == c).flatten()[:per_class]
        for r in range(per_class):
            ax = axes[r, c]
            ax.axis("off")
            if r < len(idx):
                i = int(idx[r])
                ax.imshow(result.images[i].reshape(28, 28).cpu().numpy(), cmap="gray", vmin=0, vmax=1)
                mark = "" if bool(result.success[i]) else " x"
                ax.set_title(f"{int(result.predictions[i])}{mark}", fontsize=8, pad=1)
    fig.suptitle(
        f"{title}: rubbish images from noise, columns = target class 0-9 (title: model label; x = not converged)"
    )
    return save_figure(fig, path)


def boundary_figure(result: BoundaryResult, path: str | os.PathLike[str], title: str, examples: int = 4) -> Path:
    """Fig. 4: clean image, image on the boundary, converged image, and the log C curves of the path."""
    idx = torch.nonzero(result.success.cpu()).flatten()[:examples].tolist()
    failed = not idx  # show the failed searches rather than no picture at all
    if failed:
        idx = list(range(min(examples, len(result.success))))
    fig = new_figure((10, 2.3 * max(len(idx), 1)))
    axes = fig.subplots(len(idx), 4, squeeze=False)
    for row, i in enumerate(idx):
        top, second = int(result.top[i]), int(result.second[i])
        panels = [("clean", result.clean[i], top), ("on the boundary", result.boundary[i], f"{top}|{second}"),
                  ("one step past" if int(result.steps[i]) == int(result.crossing_step[i]) else "final",
                   result.final[i], second)]  # fmt: skip
        for col, (name, img, lab) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(img.reshape(28, 28).cpu().numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"{name} ({lab})", fontsize=9)
            ax.axis("off")
        ax = axes[row, 3]
        steps = int(result.steps[i]) + 1
        ax.plot(result.log_c_top[i, :steps].cpu().numpy(), label=f"log C top ({top})")
        ax.plot(result.log_c_second[i, :steps].cpu().numpy(), label=f"log C second ({second})")
        ax.axvline(int(result.crossing_step[i]), color="gray", linestyle=":", label="crossing")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    note = " (no search reached the boundary: failed paths shown)" if failed else ""
    fig.suptitle(f"{title}: decision-boundary search{note}")
    return save_figure(fig, path)


def heatmap_figure(table: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Fig. 5 / 6: a transfer table as an annotated heat map."""
    key = "error" if "error" in table else "mean_confidence"
    values = torch.tensor(table[key], dtype=torch.float64)
    names = table["models"]
    fig = new_figure((1.2 * len(names) + 2.5, 1.0 * len(names) + 1.8))
    ax = fig.subplots()
    image = ax.imshow(values.numpy(), cmap="viridis", vmin=0, vmax=1)
    for r in range(len(names)):
        for c in range(len(names)):
            v = float(values[r, c])
            ax.text(c, r, f"{100 * v:.1f}%", ha="center", va="center", color="white" if v < 0.6 else "black")
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel(table["columns_are"])
    ax.set_ylabel(table["rows_are"])
    label = "error rate" if key == "error" else "mean confidence"
    fig.colorbar(image, ax=ax, label=label)
    if key == "error":
        clean = ", ".join(f"{n} {100 * e:.2f}%" for n, e in zip(names, table["clean_error"], strict=True))
        ax.set_title(f"Adversarial transfer (clean error: {clean})", fontsize=9)
    else:
        betas = ", ".join(f"{b:.3g}" for b in table["beta_sm"])
        ax.set_title(f"Rubbish transfer, beta_sm = {betas}", fontsize=9)
    return save_figure(fig, path)


def confidence_figure(calibrations: dict[str, dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Fig. 7: test error per confidence bin, one line per model (each at its calibrated beta_sm)."""
    fig = new_figure((6, 4))
    ax = fig.subplots()
    for name, cal in calibrations.items():
        if cal.get("beta_sm") is None:  # no calibrated beta_sm for this model (accuracy at chance or 100%)
            continue
        bins = cal["binned_error_calibrated"]
        centres = [(a + b) / 2 for a, b in zip(bins["edges"][:-1], bins["edges"][1:], strict=True)]
        pairs = [(c, e) for c, e, n in zip(centres, bins["error"], bins["count"], strict=True) if n > 0]
        ax.plot(
            [p[0] for p in pairs], [p[1] for p in pairs], marker="o", label=f"{name} (beta_sm {cal['beta_sm']:.3g})"
        )
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_xlabel("confidence Z = max softmax(beta_sm Y)")
    ax.set_ylabel("test error rate in bin")
    ax.set_title("Error falls as confidence rises")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def figures_for(out: str | os.PathLike[str], runs: list[str]) -> list[Path]:
    """Every picture that the probe outputs in ``out`` allow, for the models of ``runs``."""
    from dam.io import read_json_object
    from dam.probes.runner import load_result
    from dam.runs import model_name

    out = Path(out)
    written = []
    calibrations = {}
    for run in runs:
        name = model_name(run)
        folder = out / name
        written.append(memories_figure(DenseAssociativeMemory.load(run), out / "figures" / f"memories_{name}.png"))
        if (folder / "rubbish.safetensors").exists():
            result = load_result(RubbishResult, folder / "rubbish")
            written.append(rubbish_figure(result, out / "figures" / f"rubbish_{name}.png", name))
        # Fig. 4's third image is where C^second converged: prefer the search that went on that far.
        stem = "boundary_converged" if (folder / "boundary_converged.safetensors").exists() else "boundary"
        if (folder / f"{stem}.safetensors").exists():
            result = load_result(BoundaryResult, folder / stem)
            written.append(boundary_figure(result, out / "figures" / f"boundary_{name}.png", name))
        if (folder / "calibration.json").exists():
            calibrations[name] = read_json_object(folder / "calibration.json", "dam calibrate writes it")
    names = sorted(model_name(run) for run in runs)
    for stem in ("adversarial_transfer", "rubbish_transfer", "rubbish_calibrated_transfer"):
        if (out / f"{stem}.json").exists():
            table = read_json_object(out / f"{stem}.json", "dam transfer writes it")
            if sorted(table.get("models") or []) != names:  # another call's models: its figure is that call's
                logger.warning("%s is of %s, not of the runs given: not drawn", out / f"{stem}.json",
                               ", ".join(table.get("models") or []) or "no named models")  # fmt: skip
                continue
            written.append(heatmap_figure(table, out / "figures" / f"{stem}.png"))
    if calibrations:
        written.append(confidence_figure(calibrations, out / "figures" / "confidence_bins.png"))
    return written
