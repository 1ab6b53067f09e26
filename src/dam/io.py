"""Atomic file writes: a killed process leaves either the old file or the new one, never half of one.

A write that fails (read-only folder, full disk, no permission) raises :class:`dam.errors.RunFolderError`
naming the file and the reason, with the ``OSError`` as its ``__cause__``, and leaves no temporary file.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from dam.errors import CheckpointError, RunFolderError


@functools.cache
def umask_by_setting() -> int:
    """The umask as read by setting it and setting it back, once per process (cached): between the two calls
    another thread that creates a file would get the temporary mask, so :func:`current_umask` prefers /proc."""
    mask = os.umask(0o077)  # the strictest mask while it is briefly in effect, not 0
    os.umask(mask)
    return mask


def current_umask() -> int:
    """The process's umask: from ``/proc/self/status`` (Linux >= 4.7, no side effect, sees later changes),
    else read once per process by setting and restoring it."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return umask_by_setting()


def _write_error(path: Path, exc: OSError, action: str = "cannot write") -> RunFolderError:
    return RunFolderError(f"{path}: {action} ({exc.strerror or exc})")


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file renamed into place, with the permissions that the
    umask gives a newly created file (0644 under umask 022; mkstemp alone would give 0600)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _write_error(path, exc) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, 0o666 & ~current_umask())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from exc
        raise


def json_ready(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float as None: JSON has no NaN (Python writes a token that strict
    readers refuse), and a number that does not exist (the mean of no values) is null, not a silent NaN."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_ready(v) for v in obj]
    return obj


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as strict JSON (NaN and infinities as null), atomically."""
    text = json.dumps(json_ready(obj), indent=2, sort_keys=True, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode())


def append_jsonl(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one JSON line and fsync, so that a finished epoch's metrics survive a kill.

    A write that fails part-way is cut back off, so that the file never holds a torn line followed by
    later, complete ones; the error is a RunFolderError naming the file.
    """
    line = (json.dumps(json_ready(record), sort_keys=True, allow_nan=False) + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as exc:
        raise _write_error(Path(path), exc) from exc
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise
    except OSError as exc:
        raise _write_error(Path(path), exc) from exc
    finally:
        os.close(fd)


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a JSON-lines file, ignoring a torn last line left by a kill mid-write."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise
    return records


def read_json_object(path: str | os.PathLike[str], missing: str) -> dict[str, Any]:
    """A JSON file that must hold an object (a run folder's config.json); a missing, unreadable or other
    file is one CheckpointError, ``missing`` saying what its absence means."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; {missing}") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    return data
