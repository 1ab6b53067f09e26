"""What a run records about where it ran: versions, platform, threads."""

from __future__ import annotations

import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

import torch


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment_info() -> dict[str, Any]:
    from dam import __version__  # the running code's version (an editable install's metadata can be stale)

    return {
        "dam": __version__,
        "torch": torch.__version__,
        "numpy": _version("numpy"),
        "safetensors": _version("safetensors"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def resolve_device(device: str | torch.device) -> torch.device:
    """A torch device from a name: "auto" (a GPU when one is there, else the CPU), "cpu", "cuda",
    "cuda:N"; anything else, or a GPU that is not there, is an InputError naming it."""
    from dam.errors import InputError

    name = str(device) if isinstance(device, torch.device) else str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise InputError(f"device {device!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise InputError(f"device {device!r} is not supported: use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but no CUDA GPU is available on this machine")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev
