"""What a run records about where it ran: versions, platform, threads."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import platform
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment_info() -> dict[str, Any]:
    from dam.version import __version__  # the running code's version (an editable install's metadata can be stale)

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


def resolve_device(device: str | torch.device, *, others: bool = False) -> torch.device:
    """A torch device from a name: "auto" (a GPU when one is there, else the CPU), "cpu", "cuda",
    "cuda:N"; anything else, or a GPU that is not there, is an InputError naming it.  ``others``: also any
    other device torch knows ("mps", ...), for loading a model where this package's training was not tested."""
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
    if dev.type != "cuda" and others:
        return dev
    if dev.type != "cuda":
        raise InputError(f"device {device!r} is not supported: use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but no CUDA GPU is available on this machine")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


_FLUSH_DEPTH = 0
_FLUSHED_BEFORE = False
_FLUSH_LOCK = threading.Lock()


def denormals_flushed_now() -> bool:
    """Whether the calling thread flushes denormals now (torch has no getter: a denormal times one is zero)."""
    return float(torch.tensor(1e-39, dtype=torch.float32) * 1.0) == 0.0


def _set_flush_denormal_everywhere(on: bool) -> bool:
    """torch.set_flush_denormal in every thread of torch's OpenMP pool, not only the calling one.

    The flag lives in each thread's floating-point control register, and torch sets the caller's alone:
    the pool's worker threads would go on computing with denormals.  With the GNU OpenMP runtime that
    torch's Linux wheels ship, one parallel region runs the setter in every thread of the team.  Returns
    False where that runtime is not found (then only the calling thread is set).
    """
    lib = Path(torch.__file__).parent / "lib" / "libgomp.so.1"
    if not lib.exists():
        torch.set_flush_denormal(on)
        return False
    gomp = ctypes.CDLL(str(lib))  # the copy torch loaded: same path, same handle
    body = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lambda _: torch.set_flush_denormal(on) and None)
    gomp.GOMP_parallel(body, None, ctypes.c_uint(torch.get_num_threads()), ctypes.c_uint(0))
    torch.set_flush_denormal(on)  # the caller, whatever team the runtime gave
    return True


def denormals_flushed_in_training() -> bool:
    """Whether training flushes denormals (:func:`flush_denormals`): yes unless ``DAM_FLUSH_DENORMALS=0``."""
    return os.environ.get("DAM_FLUSH_DENORMALS", "1").strip().lower() not in ("0", "false", "no", "off")


@contextlib.contextmanager
def flush_denormals() -> Iterator[None]:
    """Inside the block, CPU float arithmetic treats denormal numbers (below 1.2e-38 in float32) as zero.

    Why training runs in it: as a large-n DAM learns, most of the K terms (h / T)^n of its energy gaps and
    of their gradients sink below 1e-38, and x86 CPUs compute on denormals many times slower.  Measured
    on the ``cpu`` DAM_20 (2 threads, this project's 2-core Xeon VM): an epoch took 1.7 s at the start of
    training and 6.9 s at epoch 400; flushed, 1.7 s again, with the same loss (and the same weights after
    the epoch).  Terms that small carry nothing a float32 sum of the others can hold.  Attacks and probes do
    not run in it: it bought APGD-CE on that model no time (41 s against 45 s flushed, 200 images), and a
    sign-gradient attack keeps a direction where every score is denormal.

    Nested blocks are one block.  At the end the pool's threads compute on denormals again (torch's default) and
    the calling thread has the setting it had before (``torch.set_flush_denormal`` sets the caller's only).
    ``DAM_FLUSH_DENORMALS=0`` makes the block do nothing (training then reproduces dam 0.3's weights).
    """
    global _FLUSH_DEPTH
    if not denormals_flushed_in_training():
        yield
        return
    global _FLUSHED_BEFORE
    with _FLUSH_LOCK:
        _FLUSH_DEPTH += 1
        if _FLUSH_DEPTH == 1:
            _FLUSHED_BEFORE = denormals_flushed_now()
        if _FLUSH_DEPTH == 1 and not _set_flush_denormal_everywhere(True):
            logger.debug("no GNU OpenMP runtime in torch: denormals flushed in the calling thread only")
    try:
        yield
    finally:
        with _FLUSH_LOCK:
            _FLUSH_DEPTH -= 1
            if _FLUSH_DEPTH == 0:  # the pool back to torch's default, the caller's thread to what it had
                _set_flush_denormal_everywhere(False)
                torch.set_flush_denormal(_FLUSHED_BEFORE)
