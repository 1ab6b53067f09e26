"""The reproduction report: one self-contained HTML page (figures embedded as PNG data) with, per figure of
the paper, the picture, the measured table, the paper's statement and a verdict; JSON/CSV tables and PNGs
are copied beside it.

It reads only what ``dam reproduce`` wrote (OUT/reproduce.json, stages.json, runs/, probes/, beyond/), so it
can be rebuilt at any time with ``dam report OUT``.

The page is rendered from the Jinja2 templates in ``templates/`` (``report.html`` on ``base.html``, the
section past the paper in ``past_paper.html``, tables, figures and claims as macros in ``macros.html``), with
autoescape on and undefined values an error. The data (:mod:`.context`, :mod:`.past_paper`) are plain
strings and numbers, so every value read from a file is escaped on the page: a crafted output folder cannot
put markup or script into it.
"""

from __future__ import annotations

import shutil
from functools import cache
from importlib.resources import files
from pathlib import Path

import jinja2

from dam.experiments.report.claims import Claim, Measurements, evaluate_claims
from dam.experiments.report.context import gather, report_context
from dam.experiments.report.formatting import VERDICT_CLASS, reading
from dam.results import read_json

__all__ = ["CHECK_JS", "CSS", "VERDICT_CLASS", "build_report", "gather", "render", "template_environment"]

TEMPLATES = "templates"

# Runs in the browser: marks the page incomplete if an image failed to decode or a required table is empty.
# `dam report --check` (headless Chromium) reads the mark. Part of the template (templates/check.js).
CHECK_JS = files(__package__).joinpath(TEMPLATES, "check.js").read_text(encoding="utf-8")
CSS = files(__package__).joinpath(TEMPLATES, "style.css").read_text(encoding="utf-8")


@cache
def template_environment() -> jinja2.Environment:
    """The report's templates: every ``{{ value }}`` escaped, an undefined name an error."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader(__package__, TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(out: Path, m: Measurements, claims: list[Claim]) -> str:
    """The page's HTML."""
    return template_environment().get_template("report.html").render(report_context(out, m, claims))


def build_report(out: str | Path) -> Path:
    """Write OUT/report/index.html (plus tables/ and figures/ beside it) from a reproduction folder.

    A file that holds something the page cannot show (a text where a number belongs, a missing key) raises
    :class:`~dam.experiments.report.formatting.ReportDataError` naming it, and no page is written.
    """
    from dam.io import atomic_write_bytes, atomic_write_json

    out = Path(out)
    m = gather(out)
    with reading(out / "reproduce.json"):
        limits = ((read_json(out / "reproduce.json") or {}).get("preset") or {}).get("limits") or {}
        if not isinstance(limits, dict):
            raise TypeError("expected an object of limits")
    with reading(out, "its measurements, judged against the paper"):
        claims = evaluate_claims(m, {str(k): str(v) for k, v in limits.items()})
    page = render(out, m, claims)
    report = out / "report"
    copies = [("tables", "probes", "*_transfer.*"), ("figures", "probes", "figures/*.png"),
              ("tables", "beyond/attacks", "*.csv"), ("tables", "beyond/attacks", "robustness.json"),
              ("figures", "beyond/attacks", "*.png"), ("tables", "beyond/detector", "detector.json"),
              ("figures", "beyond/detector", "*.png")]  # fmt: skip
    for path in (out / "beyond" / "detector-agreement").glob("detector.*"):
        (report / "tables").mkdir(parents=True, exist_ok=True)
        (report / "figures").mkdir(parents=True, exist_ok=True)
        sub = "figures" if path.suffix == ".png" else "tables"
        shutil.copy2(path, report / sub / f"detector-agreement{path.suffix}")
    for sub, folder, pattern in copies:
        (report / sub).mkdir(parents=True, exist_ok=True)
        for path in (out / folder).glob(pattern):
            shutil.copy2(path, report / sub / path.name)
    for path in (out / "beyond" / "adversarial").glob("*/robustness.json"):
        shutil.copy2(path, report / "tables" / f"adversarial_training_{path.parent.name}.json")
    atomic_write_json(report / "claims.json", [vars(c) for c in claims])
    atomic_write_bytes(report / "index.html", page.encode())
    return report / "index.html"
