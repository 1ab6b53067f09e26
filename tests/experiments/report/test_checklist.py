"""The report's checklist row on gradient-free attacks (Carlini et al.): "yes" only where no gradient-free attack
broke an image that every gradient attack left; fewer such images than the masking threshold are named, not passed."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

from dam.experiments.report.build import build_report

ROW = "gradient-free attacks (Square, HopSkipJump, transfer) do no better than gradient attacks"
MONOTONE = (
    "each attack that runs every budget on its own breaks, within a larger budget, what it broke within a smaller"
)


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


def _row(page: str, check: str = ROW) -> list[str]:
    rows = _Rows()
    rows.feed(page)
    return next(r for r in rows.rows if r and r[0] == check)


def _copy(reproduction: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(reproduction, out, ignore=shutil.ignore_patterns("report"))
    return out


def _with_beyond(reproduction: Path, tmp_path: Path, images: int) -> Path:
    """A copy of the reproduction whose attack results say HopSkipJump broke ``images`` images of n30 at the
    first L-inf budget that every gradient attack left (and nothing anywhere else)."""
    out = _copy(reproduction, tmp_path)
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
    out = _with_beyond(tiny_reproduction, tmp_path / "none", 0)
    holds, evidence = _row(build_report(out).read_text())[1:]
    # "yes", but for a norm where no gradient-free attack ran at all (then only "partly checked", and named)
    summary = json.loads((out / "beyond" / "attacks" / "robustness.json").read_text())
    unchecked = sorted({norm for m in summary["models"].values() for norm, t in m["tables"].items()
                        if not any(t["gradient_free"].values())})  # fmt: skip
    assert holds == ("partly checked" if unchecked else "yes")
    assert "no image broken by a gradient-free attack" in evidence
    assert all(f"not checked in {norm}" in evidence for norm in unchecked)


def test_images_an_attack_lost_at_a_larger_budget_are_counted_and_named(
    tiny_reproduction: Path, tmp_path: Path
) -> None:
    # as made: this dam measures it on the attacks that run every budget on their own (the tiny stage's PGD, ...)
    holds, evidence = _row(build_report(_copy(tiny_reproduction, tmp_path / "as made")).read_text(), MONOTONE)[1:]
    summary = json.loads((tiny_reproduction / "beyond" / "attacks" / "robustness.json").read_text())
    counts = [c for m in summary["models"].values() for t in m["tables"].values() for a in t["carried_up"].values()
              for c in a]  # fmt: skip
    assert holds == ("no (carried up)" if any(counts) else "yes") and "not measured" not in evidence
    carried = {a for m in summary["models"].values() for t in m["tables"].values() for a in t["carried_up"]}
    assert {"fgsm", "pgd"} <= carried  # Foolbox's attacks run every budget; a transfer's adversarials are another
    assert not any(a.startswith(("transfer:", "apgd")) for a in carried)  # model's, AutoAttack's skip carried images
    out = _copy(tiny_reproduction, tmp_path / "planted")
    path = out / "beyond" / "attacks" / "robustness.json"
    summary = json.loads(path.read_text())
    for name, m in summary["models"].items():
        for norm, t in m["tables"].items():
            t["carried_up"] = {a: [0] * len(t["epsilons"]) for a in t["carried_up"]}
            if name == "n30" and norm == "l2":
                t["carried_up"]["pgd"] = [0, 3, *[0] * (len(t["epsilons"]) - 2)]
    path.write_text(json.dumps(summary))
    holds, evidence = _row(build_report(out).read_text(), MONOTONE)[1:]
    assert holds == "no (carried up)" and "most: pgd, 3 of n30's images at l2 eps" in evidence
    # results made before it was measured say so, never "yes"
    for m in summary["models"].values():
        for t in m["tables"].values():
            del t["carried_up"]
    path.write_text(json.dumps(summary))
    holds, evidence = _row(build_report(out).read_text(), MONOTONE)[1:]
    assert holds == "not run" and "not measured" in evidence


def test_one_step_beating_the_iterations_is_named(tiny_reproduction: Path, tmp_path: Path) -> None:
    check = "iterative attacks do at least as well as one step on the same loss (PGD, APGD-CE against FGSM)"
    out = _copy(tiny_reproduction, tmp_path)
    path = out / "beyond" / "attacks" / "robustness.json"
    summary = json.loads(path.read_text())
    for name, m in summary["models"].items():
        for norm, t in m["tables"].items():
            iterative = [t["attacks"][a] for a in ("pgd", "apgd-ce") if a in t["attacks"]]
            assert "fgsm" in t["attacks"] and iterative  # the stage runs both
            best = [min(a[i] for a in iterative) for i in range(len(t["epsilons"]))]
            t["attacks"]["fgsm"] = best  # never better than the iterations ...
            if name == "n30" and norm == "linf":  # ... but here, by 50 points
                for a in ("pgd", "apgd-ce"):
                    if a in t["attacks"]:
                        t["attacks"][a] = [0.6] * len(t["epsilons"])
                t["attacks"]["fgsm"] = [0.1] * len(t["epsilons"])
    path.write_text(json.dumps(summary))
    holds, evidence = _row(build_report(out).read_text(), check)[1:]
    assert holds == "no" and evidence.startswith("most telling: n30 linf eps") and "points" in evidence
