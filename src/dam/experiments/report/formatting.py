"""What the report's data modules share: reading an output file, turning its values into the strings a cell
shows, and the plain dicts the templates take for a table, a figure and a claim.

Everything here returns plain data (dicts, lists, strings, numbers); nothing returns HTML. The templates
escape every value (autoescape is on), so a string read from an output file can never become markup.
A value that must be a number but is not (a hand-edited or crafted file) raises :class:`ReportDataError`
naming the file, rather than showing something made up.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dam.errors import DamError
from dam.experiments.report.claims import Claim

VERDICT_CLASS = {"agrees": "ok", "partly": "partly", "differs": "bad", "not measured": "na"}


class ReportDataError(DamError):
    """An output file the report reads holds something it cannot show: not JSON, a missing key, a text where
    a number belongs. The message names the file."""

    located = False  # True once the message names the file


@contextmanager
def reading(path: Path | str, what: str = "") -> Iterator[None]:
    """Turn the errors of malformed content (missing keys, wrong types, a :class:`ReportDataError` of a value)
    into one :class:`ReportDataError` that names ``path``; one that names a file already passes unchanged."""
    where = f"{path}{f' ({what})' if what else ''}"
    try:
        yield
    except ReportDataError as exc:
        if exc.located:
            raise
        raise _located(f"{where}: {exc}") from exc
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        detail = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
        raise _located(f"{where}: unexpected content, cannot be shown ({type(exc).__name__}: {detail})") from exc


def _located(message: str) -> ReportDataError:
    error = ReportDataError(message)
    error.located = True
    return error


def read_json(path: Path) -> Any:
    """The file's JSON, or None when there is no such file."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _located(f"{path}: not readable as JSON ({exc})") from None


def number(value: Any) -> float:
    """``value`` itself if it is a number (int or float, not bool); otherwise a ReportDataError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ReportDataError(f"expected a number, found {_short(value)}")
    return value


def require_numbers(data: Any, *keys: str, none_ok: bool = False) -> None:
    """Check that ``data[key]``, for each key present, is a number or (nested) lists of numbers (None too when
    ``none_ok``): the verdicts compute with these values, so a text there must stop the report, naming it."""
    if not isinstance(data, dict):
        raise ReportDataError(f"expected a JSON object, found {_short(data)}")
    for key in keys:
        if key in data:
            try:
                _numbers(data[key], none_ok)
            except ReportDataError as exc:
                raise ReportDataError(f"{key!r}: {exc}") from None


def _numbers(value: Any, none_ok: bool) -> None:
    if isinstance(value, list):
        for v in value:
            _numbers(v, none_ok)
    elif not (none_ok and value is None):
        number(value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def fmt(value: Any, spec: str) -> str:
    """A number in a format spec (``".3f"``, ``"g"``); anything else is a ReportDataError."""
    return format(number(value), spec)


def fmt_or(value: Any, spec: str, missing: str = "-") -> str:
    """Like :func:`fmt`, ``missing`` for None."""
    return missing if value is None else fmt(value, spec)


def pct(value: Any) -> str:
    """A fraction as a percentage with one decimal, "-" for None."""
    return "-" if value is None else f"{100 * number(value):.1f}%"


def text(value: Any) -> str:
    """What a cell shows for a value that is only displayed (the template escapes it)."""
    return str(value)


def joined(values: Any, empty: str) -> str:
    """A JSON list of names as "a, b, c"; ``empty`` for an empty list."""
    if not isinstance(values, list):
        raise ReportDataError(f"expected a list, found {_short(values)}")
    return ", ".join(text(v) for v in values) or empty


class Verdict(str):
    """A table cell shown as a coloured verdict badge (one of :data:`VERDICT_CLASS`)."""


def table(header: Sequence[Any], rows: Iterable[Sequence[Any]], name: str, text_cols: int = 1) -> dict[str, Any]:
    """A table for the ``table`` macro: every cell a string, except a :class:`Verdict`, which becomes a
    ``{"verdict", "css"}`` dict shown as a badge (any other value, a dict from a file included, is text)."""
    return {
        "name": name,
        "header": [text(h) for h in header],
        "rows": [[_badge(c) if isinstance(c, Verdict) else text(c) for c in row] for row in rows],
        "text_cols": text_cols,
    }


def _badge(name: str) -> dict[str, str]:
    return {"verdict": str(name), "css": VERDICT_CLASS[name]}


def png_data_uri(path: Path) -> str:
    """``data:image/png;base64,...`` of a PNG file (base64 holds no character that needs escaping)."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def figure(path: Path, alt: str) -> dict[str, Any]:
    """An embedded PNG with its caption; a missing file is kept as a broken image on purpose, so that the
    browser check reports it rather than the page hiding it."""
    if not path.exists():
        return {"src": f"missing:{path.name}", "alt": alt, "missing": True}
    return {"src": png_data_uri(path), "alt": alt, "missing": False}


def claim(c: Claim) -> dict[str, str]:
    """A :class:`~dam.experiments.report.claims.Claim` for the ``claim`` macro."""
    return {
        "figure": text(c.figure),
        "statement": text(c.statement),
        "measured": text(c.measured),
        "verdict": c.verdict,
        "css": VERDICT_CLASS[c.verdict],
        "rule": text(c.rule),
        "limit": text(c.limit),
    }
