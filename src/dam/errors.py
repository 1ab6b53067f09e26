"""The errors a user can fix, as one family.

Everything raised as a :class:`DamError` is a problem with the user's input, files or environment and is
shown by the ``dam`` command as one line naming the problem (exit status 2).  Anything else is a bug and
keeps its traceback.  ``dam --debug`` (or ``DAM_DEBUG=1``) shows the traceback of user errors too.
"""

from __future__ import annotations

import math
import numbers
from typing import Any


class DamError(Exception):
    """Base of every error the user can fix; its message is one line that names the problem."""


class InputError(DamError, ValueError):
    """Images or settings that cannot be used: wrong shape, dtype, range, non-finite values, bad options."""


class ConfigError(InputError):
    """Settings that contradict each other or lie outside their valid range."""


class CheckpointError(DamError):
    """A run folder or checkpoint that cannot be loaded: missing, corrupt or incompatible."""


class DatasetError(DamError):
    """A data set that cannot be found, downloaded or parsed; the message names the file."""


class RunFolderError(DamError):
    """An output folder that must not or cannot be written: a finished run, a file, read-only, locked."""


class RunLockedError(RunFolderError):
    """Another process is writing the same output folder."""


class MissingExtraError(DamError, ImportError):
    """An optional dependency is not installed; the message names the extra that provides it."""


class ReportCheckError(DamError):
    """The rendered report failed its browser check (or no browser could render it)."""


class DivergedError(DamError, FloatingPointError):
    """Training (or a model it left) went non-finite: settings such as the learning rate or T must change."""


class DetectorError(InputError):
    """Detector settings or files that cannot be used."""


def violated(what: str, rules: list[str], settings: object) -> str:
    """The message for settings that break ``rules``: the rules and the values they name, not every field."""
    import dataclasses
    import re

    names = [f.name for f in dataclasses.fields(settings) if any(re.search(rf"\b{f.name}\b", r) for r in rules)]  # type: ignore[arg-type]
    given = f" (given {', '.join(f'{n}={getattr(settings, n)!r}' for n in names)})" if names else ""
    return f"invalid {what}: {', '.join(rules)} violated{given}"


# -- checks of settings, shared by every config and constructor ------------------------------------


def changed(names: list[str] | tuple[str, ...]) -> str:
    """The settings that differ from the saved ones ("changed: a, b"), for a refusal's one line."""
    return f"changed: {', '.join(names)}"


def is_whole(value: Any) -> bool:
    """An integer setting (not a bool, which Python counts as one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """A real-valued setting: a finite int or float (not a bool, not NaN or infinite)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def plain_number(value: Any) -> Any:
    """A NumPy scalar or 0-d tensor (bool, integer or real) as Python's bool, int or float, so that settings from
    ``np.arange`` or ``torch.quantile`` pass the checks and are written to JSON; anything else unchanged (and
    judged by the checks)."""
    if isinstance(value, (int, float)):  # bool too: is_whole and is_finite_number refuse it
        return value
    if getattr(value, "shape", None) == () and callable(getattr(value, "item", None)):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return value
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def plain_fields(settings: object, names: tuple[str, ...] | list[str]) -> None:
    """Replace NumPy scalars among the named fields of a (frozen) dataclass by Python numbers, in place."""
    for name in names:
        object.__setattr__(settings, name, plain_number(getattr(settings, name)))


def check_whole(what: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``; InputError naming ``what`` otherwise."""
    value = plain_number(value)
    if not is_whole(value) or value < minimum:
        raise InputError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def check_positive(what: str, value: Any) -> float:
    """``value`` as a finite float > 0; InputError naming ``what`` otherwise."""
    value = plain_number(value)
    if not is_finite_number(value) or value <= 0:
        raise InputError(f"{what} must be a finite number > 0, got {value!r}")
    return float(value)
