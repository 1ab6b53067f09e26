"""Progress for long jobs: bars (a widget in Jupyter with ``ipywidgets``, the ``notebook`` extra; text bars
without it; text on a terminal; nothing in a log file), and progress lines for jobs made of steps of minutes
(attacks), which go to :mod:`logging` where it is set up and are printed where it is not (a notebook)."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from collections.abc import Callable
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


def progress_lines(logger: logging.Logger) -> Callable[[str], None]:
    """A ``log`` callable for a long job's progress lines: INFO records of ``logger`` where logging has a handler
    (the CLI sets one up; ``--quiet`` raises its level), else, where :func:`show_progress` would show a bar (a
    Jupyter kernel, a terminal), the line on stderr, so that a notebook user is never left without a word for
    minutes; otherwise nothing, as logging would do."""

    def log(line: str) -> None:
        if logger.hasHandlers():
            logger.info(line)
        elif show_progress(None):
            print(line, file=sys.stderr, flush=True)

    return log
