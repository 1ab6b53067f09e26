"""Progress bars for long jobs: a widget in Jupyter (with ``ipywidgets``, the ``notebook`` extra; text bars
without it), text on a terminal, nothing in a log file."""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any


def show_progress(enabled: bool | None) -> bool:
    """``None`` means: on a terminal or in a Jupyter kernel, not when stderr goes to a file or a pipe, and not
    when ``TQDM_DISABLE`` is set (tqdm's own switch, which turns every bar off at once)."""
    if enabled is not None:
        return enabled
    if os.environ.get("TQDM_DISABLE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    return sys.stderr.isatty() or "ipykernel" in sys.modules


def progress_bar(total: int, initial: int = 0, desc: str = "", enabled: bool | None = None, unit: str = "epoch",
                 leave: bool = True) -> Any:  # fmt: skip
    """A tqdm bar that renders as a widget in Jupyter (``tqdm.auto``) and as text on a terminal."""
    if "ipykernel" in sys.modules and importlib.util.find_spec("ipywidgets") is None:
        from tqdm.std import tqdm  # tqdm.auto would warn on every bar that IProgress is missing, then print text
    else:
        from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not show_progress(enabled), leave=leave,
                dynamic_ncols=True)  # fmt: skip
