"""The report's checklist row on gradient-free attacks (Carlini et al.): "yes" only where no gradient-free attack
broke an image that every gradient attack left; fewer such images than the masking threshold are named, not passed."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

from dam.experiments.report.build import build_report

ROW = "gradient-free attacks (Square, HopSkipJump, transfer) do no better than gradient attacks"


class _Rows(HTMLParser):
    """The text of every table row of a page, cell by cell."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append("".join(self.cell).strip())
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def _row(page: str) -> list[str]:
    rows = _Rows()
    rows.feed(page)
    return next(r for r in rows.rows if r and r[0] == ROW)


def _with_beyond(reproduction: Path, tmp_path: Path, images: int) -> Path:
    """A copy of the reproduction whose attack results say HopSkipJump broke ``images`` images of n30 at the
    first L-inf budget that every gradient attack left (and nothing anywhere else)."""
    out = tmp_path / "out"
    shutil.copytree(reproduction, out, ignore=shutil.ignore_patterns("report"))
    path = out / "beyond" / "attacks" / "robustness.json"
    summary = json.loads(path.read_text())
    for name, m in summary["models"].items():
        for norm, t in m["tables"].items():
            t["beyond_gradients"] = {kind: [0.0] * len(t["epsilons"]) for kind in t["beyond_gradients"] or
                                     {"decision-based": None}}  # fmt: skip
            if name == "n30" and norm == "linf":
                t["beyond_gradients"]["decision-based"][0] = images / t["images"]
    path.write_text(json.dumps(summary))
    return out


def test_one_image_beyond_the_gradient_attacks_is_not_a_pass(tiny_reproduction: Path, tmp_path: Path) -> None:
    count = 1  # one image: under any masking threshold
    page = build_report(_with_beyond(tiny_reproduction, tmp_path / "one", count)).read_text()
    holds, evidence = _row(page)[1:]
    assert holds == "no (within noise)"
    assert "decision-based, 1 image(s) of n30 at linf" in evidence and "counted in the worst case" in evidence
    page = build_report(_with_beyond(tiny_reproduction, tmp_path / "none", 0)).read_text()
    holds, evidence = _row(page)[1:]
    assert holds in ("yes", "partly checked") and "no image broken by a gradient-free attack" in evidence
