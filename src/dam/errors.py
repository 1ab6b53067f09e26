"""The errors a user can fix, as one family.

Everything raised as a :class:`DamError` is a problem with the user's input, files or environment and is
shown by the ``dam`` command as one line naming the problem (exit status 2).  Anything else is a bug and
keeps its traceback.  ``dam --debug`` (or ``DAM_DEBUG=1``) shows the traceback of user errors too.
"""

from __future__ import annotations


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
