"""Transfer tables (Fig. 5 and 6): every model's adversarial and rubbish sets, judged by every model."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from dam.errors import InputError
from dam.probes.confidence import PAPER_BETA_SM, check_labels, confidence, model_outputs


def check_sets(models: Mapping[str, nn.Module], sets: Mapping[str, Tensor], count: int | None = None) -> None:
    """One set per model, of ``count`` images each where given: what a transfer table needs, checked in one line
    before any model runs."""
    missing = [name for name in models if name not in sets]
    if missing:
        raise InputError(f"no set of images for {', '.join(missing)}: give one per model (sets[name])")
    if count is not None:
        wrong = {name: len(sets[name]) for name in models if len(sets[name]) != count}
        if wrong:
            raise InputError(f"every adversarial set must hold one image per label ({count}); got {wrong}")


def error_rate(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    predictions = model_outputs(model, images).argmax(dim=1)
    return float((predictions != labels.cpu()).double().mean())


def adversarial_table(
    models: Mapping[str, nn.Module], sets: Mapping[str, Tensor], labels: Tensor, clean: Tensor
) -> dict[str, Any]:
    """Error rate (against the true labels) of every model on every model's adversarial set (Fig. 5).

    ``sets[name]`` are the images one step past the boundary made with model ``name``, in the order of
    ``labels``; ``clean`` are the clean images, whose error rates are given beside the table.
    """
    names = list(models)
    labels = check_labels(labels, len(clean), labels.device if isinstance(labels, Tensor) else "cpu")
    check_sets(models, sets, len(labels))
    return {
        "kind": "adversarial_transfer",
        "rows_are": "adversarial set made by",
        "columns_are": "classified by",
        "models": names,
        "error": [[error_rate(models[judge], sets[maker], labels) for judge in names] for maker in names],
        "clean_error": [error_rate(models[name], clean, labels) for name in names],
        "examples": len(labels),
    }


def rubbish_table(
    models: Mapping[str, nn.Module],
    sets: Mapping[str, Tensor],
    beta_sm: Mapping[str, float] | float = PAPER_BETA_SM,
) -> dict[str, Any]:
    """Mean confidence of every model on every model's rubbish set (Fig. 6).

    ``beta_sm`` is one value for all models (the paper's 3.2) or each judging model's calibrated value.
    """
    names = list(models)
    check_sets(models, sets)
    if isinstance(beta_sm, Mapping) and (missing := [name for name in names if name not in beta_sm]):
        raise InputError(f"no beta_sm for {', '.join(missing)}: give one per judging model, or one for all")
    betas = {name: float(beta_sm[name]) if isinstance(beta_sm, Mapping) else float(beta_sm) for name in names}
    table = [
        [float(confidence(model_outputs(models[judge], sets[maker]), betas[judge]).mean()) for judge in names]
        for maker in names
    ]
    return {
        "kind": "rubbish_transfer",
        "rows_are": "rubbish set made by",
        "columns_are": "judged by (mean confidence)",
        "models": names,
        "beta_sm": [betas[n] for n in names],
        "mean_confidence": table,
        "examples": {name: len(sets[name]) for name in names},
    }


def save_table(table: dict[str, Any], folder: str | os.PathLike[str], stem: str) -> tuple[Path, Path]:
    """Write ``stem.json`` and ``stem.csv`` (rows: makers, columns: judges) into ``folder``."""
    from dam.io import atomic_write_bytes, atomic_write_json

    folder = Path(folder)
    json_path, csv_path = folder / f"{stem}.json", folder / f"{stem}.csv"
    atomic_write_json(json_path, table)
    key = "error" if "error" in table else "mean_confidence"
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([f"{table['rows_are']} \\ {table['columns_are']}", *table["models"]])
    for name, row in zip(table["models"], table[key], strict=True):
        writer.writerow([name, *(f"{v:.6f}" for v in row)])
    if "clean_error" in table:
        writer.writerow(["clean test images", *(f"{v:.6f}" for v in table["clean_error"])])
    atomic_write_bytes(csv_path, buffer.getvalue().encode())
    return json_path, csv_path
