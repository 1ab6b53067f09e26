"""The one rule for reusing a finished result: a result file records the key of what it was made from
(the model's weight fingerprint, the images' fingerprint, the settings), and is reused only when the key
of the request equals it.  Keys are compared as they read back from JSON (tuples become lists), so a
key made now and one read from disk compare equal exactly when they describe the same work."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from torch import Tensor


def tensor_md5(t: Tensor) -> str:
    """Fingerprint of a tensor's values (e.g. the images a result was computed on)."""
    return hashlib.md5(t.detach().cpu().contiguous().numpy().tobytes(), usedforsecurity=False).hexdigest()


def result_key(**parts: Any) -> dict[str, Any]:
    """A key in the form it has once written to and read back from JSON."""
    return json.loads(json.dumps(parts, sort_keys=True, default=str))


def read_json(path: str | os.PathLike[str]) -> Any | None:
    """A JSON file's contents, or None when it is missing or unreadable (then the work is redone)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def key_matches(saved: Any, key: dict[str, Any], field: str | None = None) -> bool:
    """Whether a saved record (or its ``field``) holds exactly ``key``."""
    if field is not None:
        saved = saved.get(field) if isinstance(saved, dict) else None
    return saved is not None and saved == result_key(**key)
