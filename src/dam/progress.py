"""Progress bars for long jobs: a widget in Jupyter, text on a terminal, nothing in a log file."""

from __future__ import annotations

import sys
from typing import Any


def show_progress(enabled: bool | None) -> bool:
    """``None`` means: on a terminal or in a Jupyter kernel, not when stderr goes to a file or a pipe."""
    if enabled is not None:
        return enabled
    return sys.stderr.isatty() or "ipykernel" in sys.modules


def progress_bar(total: int, initial: int = 0, desc: str = "", enabled: bool | None = None, unit: str = "epoch",
                 leave: bool = True) -> Any:  # fmt: skip
    """A tqdm bar that renders as a widget in Jupyter (``tqdm.auto``) and as text on a terminal."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not show_progress(enabled), leave=leave,
                dynamic_ncols=True)  # fmt: skip
