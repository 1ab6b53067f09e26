"""Load any classifier of this package from its run folder, by the ``kind`` its config.json records."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from dam.model import CONFIG_FILE, CheckpointError, DenseAssociativeMemory


def run_kind(folder: str | os.PathLike[str]) -> str:
    """ "dam" or "mlp"; folders written before kinds existed are DAMs."""
    path = Path(folder) / CONFIG_FILE
    if not Path(folder).is_dir():
        raise CheckpointError(f"{folder}: no such run folder")
    try:
        return str(json.loads(path.read_text()).get("kind", "dam"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; {folder} is not a run folder") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None


def load_model(folder: str | os.PathLike[str], *, device: torch.device | str | None = None) -> nn.Module:
    """A DenseAssociativeMemory or an MLPClassifier, whichever the run folder holds."""
    kind = run_kind(folder)
    if kind == "dam":
        return DenseAssociativeMemory.load(folder, device=device)
    if kind == "mlp":
        from dam.baselines import MLPClassifier

        return MLPClassifier.load(folder, device=device)
    raise CheckpointError(f"{Path(folder) / CONFIG_FILE}: unknown model kind {kind!r}")
