"""Render a report in headless Chromium: a screenshot for a person, and a check that every figure decoded and
every required table has rows (the page's own script marks ``<body data-render-check>``)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from dam.errors import ReportCheckError

# Without the networking flags Chromium keeps trying to reach Google from a machine with a closed network.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--virtual-time-budget=10000",
)


@dataclass
class RenderCheck:
    ok: bool
    problems: list[str] = field(default_factory=list)
    screenshot: Path | None = None
    page_height: int = 0


def find_chromium() -> str | None:
    """``$DAM_CHROMIUM``, else the first Chromium or Chrome on PATH."""
    if os.environ.get("DAM_CHROMIUM"):
        return os.environ["DAM_CHROMIUM"]
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        if path := shutil.which(name):
            return path
    return None


def require_chromium() -> str:
    """The Chromium :func:`find_chromium` finds, checked to be a program that can run; one-line error otherwise
    (for a check asked for at the start of hours of work, so that its absence is known before them)."""
    exe = find_chromium()
    if exe is None:
        raise ReportCheckError("no Chromium found: install it (Debian: apt-get install chromium) or set DAM_CHROMIUM")
    if shutil.which(exe) is None:
        raise ReportCheckError(f"DAM_CHROMIUM={exe}: no such program (or not executable)")
    return exe


def _chromium(args: list[str], timeout: float) -> str:
    exe = find_chromium()
    if exe is None:
        raise ReportCheckError("no Chromium found: install it (Debian: apt-get install chromium) or set DAM_CHROMIUM")
    with tempfile.TemporaryDirectory(prefix="dam-chromium-") as profile:
        try:
            proc = subprocess.run(
                [exe, *FLAGS, f"--user-data-dir={profile}", *args],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ReportCheckError(f"{exe} did not finish within {timeout:.0f} s") from None
        except OSError as exc:
            raise ReportCheckError(f"{exe} could not be started ({exc})") from None
    if proc.returncode != 0:
        raise ReportCheckError(f"{exe} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return proc.stdout


def dump_dom(html: str | os.PathLike[str], timeout: float = 120) -> str:
    """The page's DOM as headless Chromium serialises it once the page's scripts ran (``--dump-dom``)."""
    return _chromium(["--dump-dom", Path(html).resolve().as_uri()], timeout)


def check_report(
    html: str | os.PathLike[str],
    screenshot: str | os.PathLike[str] | None = None,
    width: int = 1280,
    timeout: float = 120,
) -> RenderCheck:
    """Load ``html`` in headless Chromium; report missing figures or tables; optionally save a full-page PNG."""
    html = Path(html).resolve()
    if not html.exists():
        return RenderCheck(False, [f"{html} does not exist"])
    dom = dump_dom(html, timeout)
    mark = re.search(r'data-render-check="([^"]*)"', dom)
    if mark is None:
        return RenderCheck(False, ["the page's check script did not run (no data-render-check mark)"])
    problems = [] if mark.group(1) == "ok" else [p.strip() for p in mark.group(1).split("|")]
    height = int(m.group(1)) if (m := re.search(r'data-page-height="(\d+)"', dom)) else 4000
    shot = None
    if screenshot is not None:
        shot = Path(screenshot).resolve()
        if shot.is_dir():
            raise ReportCheckError(f"{shot} is a folder: the screenshot needs a file name")
        shot.parent.mkdir(parents=True, exist_ok=True)
        shot.unlink(missing_ok=True)  # Chromium may leave an existing file as it was: never take that for this one
        # One tall window gives the whole page in one image; capped so a runaway page cannot eat memory.
        _chromium([f"--screenshot={shot}", f"--window-size={width},{min(height + 50, 30000)}", html.as_uri()], timeout)
        if not shot.exists() or shot.stat().st_size == 0:
            problems.append("chromium wrote no screenshot")
    return RenderCheck(not problems, problems, shot, height)
