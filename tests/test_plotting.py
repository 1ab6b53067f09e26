"""Figures without pyplot: every public figure function writes a PNG that decodes, and none of them
imports ``matplotlib.pyplot`` or reads or changes the process's backend (as a notebook needs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import matplotlib
import pytest
import torch
from PIL import Image

from dam.model import DenseAssociativeMemory
from dam.plotting import new_figure, save_figure
from dam.probes.boundary import BoundaryResult
from dam.probes.confidence import confidence_binned_error
from dam.probes.figures import boundary_figure, confidence_figure, heatmap_figure, memories_figure, rubbish_figure
from dam.probes.rubbish import RubbishResult
from dam.robustness.attacks.figures import robust_accuracy_figure
from dam.robustness.detector import detector_figure

PNG = b"\x89PNG\r\n\x1a\n"
NAMES = ["n2", "n30"]


def assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > len(PNG), path
    assert path.read_bytes().startswith(PNG), path
    with Image.open(path) as image:
        image.load()  # decodes every pixel: a truncated file raises here
        assert image.format == "PNG" and image.width > 10 and image.height > 10


# -- small synthetic inputs, shaped as the probes and runners produce them ---------------------------------


def rubbish_result(count: int = 20) -> RubbishResult:
    g = torch.Generator().manual_seed(0)
    targets = torch.arange(count) % 10
    predictions = targets.clone()
    predictions[::7] = (predictions[::7] + 1) % 10  # some searches failed: marked with an x
    return RubbishResult(
        images=torch.rand(count, 784, generator=g),
        start=torch.rand(count, 784, generator=g),
        targets=targets,
        objective=torch.rand(count, 6, generator=g, dtype=torch.float64),
        steps=torch.full((count,), 5),
        converged=torch.ones(count, dtype=torch.bool),
        stalled=torch.zeros(count, dtype=torch.bool),
        stuck=torch.zeros(count, dtype=torch.bool),
        predictions=predictions,
    )


def boundary_result(success: list[bool]) -> BoundaryResult:
    count, steps = len(success), 8
    g = torch.Generator().manual_seed(1)
    images = lambda: torch.rand(count, 784, generator=g)  # noqa: E731
    log_c = torch.linspace(2, -3, steps + 1).repeat(count, 1)
    return BoundaryResult(
        clean=images(), boundary=images(), past=images(), final=images(),
        top=torch.arange(count) % 10, second=(torch.arange(count) + 3) % 10,
        log_c_top=-log_c, log_c_second=log_c,
        crossing_step=torch.full((count,), 4), steps=torch.tensor([4, steps] * count)[:count],
        boundary_gap=torch.zeros(count), past_label=(torch.arange(count) + 3) % 10,
        converged=torch.ones(count, dtype=torch.bool), stalled=torch.zeros(count, dtype=torch.bool),
        stuck=torch.zeros(count, dtype=torch.bool), success=torch.tensor(success),
    )  # fmt: skip


def adversarial_table() -> dict[str, Any]:
    return {
        "kind": "adversarial_transfer",
        "rows_are": "adversarial set made by",
        "columns_are": "classified by",
        "models": NAMES,
        "error": [[0.99, 0.4], [0.03, 0.98]],
        "clean_error": [0.016, 0.015],
        "examples": 50,
    }


def rubbish_table() -> dict[str, Any]:
    return {"kind": "rubbish_transfer", "rows_are": "rubbish set made by", "columns_are": "judged by",
            "models": NAMES, "beta_sm": [3.2, 3.2], "mean_confidence": [[0.985, 0.1], [0.9, 0.95]],
            "examples": {"n2": 10, "n30": 10}}  # fmt: skip


def calibrations() -> dict[str, dict[str, Any]]:
    g = torch.Generator().manual_seed(2)
    outputs = torch.rand(200, 10, generator=g, dtype=torch.float64) * 2 - 1
    labels = outputs.argmax(dim=1)
    labels[:20] = (labels[:20] + 1) % 10
    binned = confidence_binned_error(outputs, labels, 4.0)
    return {"n2": {"beta_sm": 4.0, "binned_error_calibrated": binned}, "n30": {"beta_sm": None}}


def attack_summary() -> dict[str, Any]:
    def table(clean: float) -> dict[str, Any]:
        return {"clean_accuracy": clean, "worst_case": [0.6, 0.2], "gradient_free": {"pgd": False, "boundary": True},
                "attacks": {"pgd": [0.7, 0.3], "boundary": [0.6, 0.2]}}  # fmt: skip

    models = {name: {"tables": {"linf": table(0.98), "l2": table(0.97)}} for name in NAMES}
    return {"suite": {"linf": [0.1, 0.3], "l2": [1.0, 3.0]}, "models": models, "images": {"count": 50}}


def detector_report(adaptive: bool = False) -> dict[str, Any]:
    edges = torch.linspace(0.1, 1.0, 11).tolist()
    roc = {"fpr": [0.0, 0.05, 1.0], "tpr": [0.0, 0.9, 1.0], "auc": 0.95, "operating_point": {"fpr": 0.05, "tpr": 0.9}}
    sets = {"clean": {"histogram": [0] * 8 + [5, 95]}, "rubbish_n2": {"histogram": [60, 40] + [0] * 8, "roc": roc}}
    report = {"threshold": 0.5, "beta_sm": 4.0, "clean": "clean", "histogram_edges": edges, "sets": sets}
    if adaptive:
        report["adaptive"] = {"budgets": {"linf 0.3": {"roc": roc}, "l2 2": {"roc": None}}}
    return report


FIGURES: dict[str, Callable[[Path], Path]] = {
    "memories": lambda p: memories_figure(DenseAssociativeMemory(n=3, num_memories=8, temperature=100), p),
    "rubbish": lambda p: rubbish_figure(rubbish_result(), p, "n2"),
    "boundary": lambda p: boundary_figure(boundary_result([True, False, True]), p, "n2"),
    "boundary_failed": lambda p: boundary_figure(boundary_result([False, False]), p, "n2"),
    "adversarial_heatmap": lambda p: heatmap_figure(adversarial_table(), p),
    "rubbish_heatmap": lambda p: heatmap_figure(rubbish_table(), p),
    "confidence": lambda p: confidence_figure(calibrations(), p),
    "robust_accuracy": lambda p: robust_accuracy_figure(attack_summary(), p),
    "detector": lambda p: detector_figure(detector_report(), p),
    "detector_adaptive": lambda p: detector_figure(detector_report(adaptive=True), p),
}


@pytest.fixture
def notebook_backend() -> Iterator[str]:
    """A backend other than Agg, set as a notebook would have it; the process's setting is restored after.

    The raw dict read and write leave an unresolved backend unresolved: reading ``rcParams["backend"]``
    would pick one, and import pyplot to do it.
    """
    was = dict.__getitem__(matplotlib.rcParams, "backend")
    matplotlib.use("svg")
    yield "svg"
    if "matplotlib.pyplot" in sys.modules and isinstance(was, str):
        matplotlib.use(was)
    else:
        dict.__setitem__(matplotlib.rcParams, "backend", was)


def test_every_figure_keeps_the_backend_and_writes_a_png(notebook_backend: str, tmp_path: Path) -> None:
    had_pyplot = "matplotlib.pyplot" in sys.modules  # another test of this session may have imported it
    for name, draw in FIGURES.items():
        path = draw(tmp_path / "figures" / f"{name}.png")
        assert path == tmp_path / "figures" / f"{name}.png"
        assert_png(path)
        assert matplotlib.get_backend() == notebook_backend, f"{name} changed the backend"
        if not had_pyplot:
            assert "matplotlib.pyplot" not in sys.modules, f"{name} imported pyplot"
    # nothing but the pictures: the atomic writes left no temporary files behind
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == sorted(f"{n}.png" for n in FIGURES)


def test_save_figure_replaces_an_old_picture_whole(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "folder" / "figure.png"
    for size in ((2, 2), (5, 3)):
        fig = new_figure(size)
        fig.subplots().plot([0, 1], [1, 0])
        assert save_figure(fig, path, dpi=50) == path
        assert_png(path)
    with Image.open(path) as image:
        assert image.width > image.height  # the second, wider figure
    assert [p.name for p in path.parent.iterdir()] == ["figure.png"]


def test_a_failed_drawing_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "figure.png"
    path.write_bytes(b"old")
    fig = new_figure((2, 2))
    fig.subplots().text(0.5, 0.5, "$\\unknowncommand$")  # mathtext fails only when drawn
    with pytest.raises(ValueError):
        save_figure(fig, path)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["figure.png"]


NOTEBOOK = """
import json, sys
import matplotlib
if {preset!r}:
    matplotlib.use({preset!r})
from dam.model import DenseAssociativeMemory
from dam.probes.figures import heatmap_figure, memories_figure
from dam.robustness.attacks.figures import robust_accuracy_figure
from dam.robustness.detector import detector_figure
import test_plotting as t
memories_figure(DenseAssociativeMemory(n=3, num_memories=8, temperature=100), {out!r} + "/memories.png")
heatmap_figure(t.adversarial_table(), {out!r} + "/heatmap.png")
robust_accuracy_figure(t.attack_summary(), {out!r} + "/robust.png")
detector_figure(t.detector_report(), {out!r} + "/detector.png")
pyplot = "matplotlib.pyplot" in sys.modules
print(json.dumps({{"pyplot": pyplot, "backend": matplotlib.get_backend() if {preset!r} else None}}))
"""


@pytest.mark.parametrize("preset", ["svg", "pdf", ""])
def test_a_fresh_interpreter_never_imports_pyplot(preset: str, tmp_path: Path) -> None:
    """In a clean process (as a notebook kernel starts): the backend a user set stays, and with none set
    the figures never resolve one, which would import pyplot."""
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    script = NOTEBOOK.format(preset=preset, out=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"pyplot": False, "backend": preset or None}
    for name in ("memories", "heatmap", "robust", "detector"):
        assert_png(tmp_path / f"{name}.png")
