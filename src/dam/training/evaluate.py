"""Evaluation of trained run folders: error rate, confusion matrix, run summaries."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dam.data import load_dataset
from dam.environment import resolve_device
from dam.io import read_jsonl
from dam.model import DenseAssociativeMemory
from dam.runs import METRICS_FILE, load_model, read_run_config


@torch.no_grad()
def confusion_matrix(predictions: Tensor, labels: Tensor, num_classes: int = 10) -> Tensor:
    """(num_classes, num_classes) counts; rows are true classes, columns predictions."""
    index = labels.to(torch.long) * num_classes + predictions.to(torch.long)
    return torch.bincount(index.cpu(), minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def evaluate_model(model: nn.Module, images: Tensor, labels: Tensor) -> dict[str, Any]:
    device = next(model.parameters()).device
    preds = model.predict(images.to(device)).cpu()
    cm = confusion_matrix(preds, labels.cpu())
    errors = int(len(labels) - cm.trace())
    per_class = (1 - cm.diag() / cm.sum(dim=1).clamp_min(1)).tolist()
    return {
        "error": errors / max(len(labels), 1),
        "errors": errors,
        "examples": len(labels),
        "per_class_error": per_class,
        "confusion_matrix": cm.tolist(),
    }


def evaluate_run(
    run: str | os.PathLike[str],
    split: str = "test",
    data_dir: str | os.PathLike[str] | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Load a run folder's model and evaluate it on a split of its data set."""
    model = load_model(run, device=resolve_device(device))
    config = read_run_config(run)
    dataset = (config.get("train") or {}).get("dataset", "mnist")
    if data_dir is None and config.get("data_dir") and Path(config["data_dir"]).is_dir():
        data_dir = config["data_dir"]  # the data the run was trained with
    images, labels = load_dataset(dataset, split, data_dir=data_dir)
    return {"run": str(run), "dataset": dataset, "split": split, **evaluate_model(model, images, labels)}


def run_info(run: str | os.PathLike[str]) -> dict[str, Any]:
    """Settings, environment and progress of a run folder (validates the checkpoint too)."""
    model = load_model(run)
    config = read_run_config(run)
    metrics = read_jsonl(Path(run) / METRICS_FILE)
    extra = {"temperature": model.temperature} if isinstance(model, DenseAssociativeMemory) else {}
    return {
        "run": str(run),
        "kind": config.get("kind", "dam"),
        "model": config.get("model", {}) | extra,
        "train": config.get("train"),
        "environment": config.get("environment"),
        "epochs_done": metrics[-1]["epoch"] if metrics else 0,
        "last_epoch": metrics[-1] if metrics else None,
    }
