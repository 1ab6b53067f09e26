"""Progress of long jobs: bars where a person watches, and progress lines that reach a notebook user even though
logging is not set up there."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import dam.progress
from dam.progress import progress_lines


def test_lines_go_to_logging_where_it_is_set_up(caplog) -> None:
    caplog.set_level(logging.INFO)
    progress_lines(logging.getLogger("dam.test.progress"))("apgd-ce: 12 s")
    assert "apgd-ce: 12 s" in caplog.text


def test_lines_are_printed_where_logging_is_not_set_up_and_a_person_watches(monkeypatch, capsys) -> None:
    bare = logging.getLogger("dam.test.bare")
    monkeypatch.setattr(bare, "propagate", False)  # as in a notebook: no handler anywhere above it
    assert not bare.hasHandlers()
    monkeypatch.setattr(dam.progress, "show_progress", lambda enabled: True)  # a Jupyter kernel, a terminal
    progress_lines(bare)("square: 30 s")
    assert capsys.readouterr().err == "square: 30 s\n"
    monkeypatch.setattr(dam.progress, "show_progress", lambda enabled: False)  # output to a file: as logging would
    progress_lines(bare)("square: 30 s")
    assert capsys.readouterr().err == ""


def test_a_script_in_a_kernel_sees_the_attack_lines() -> None:
    """What a notebook cell sees: no logging set up, ipykernel imported, an AutoAttack run prints a line per attack."""
    code = """
import sys, types, torch
sys.modules["ipykernel"] = types.ModuleType("ipykernel")  # what show_progress looks for
from dam.robustness.attacks import AutoAttack
from fakes import prototype_images, prototype_model
model = prototype_model(3)
x, y = prototype_images(model, 6)
AutoAttack(model, [0.05], steps=2, fab=False, square_queries=10)(x, y)
"""
    tests = Path(__file__).parent
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tests, timeout=300,
                            env={**os.environ, "DAM_COMPILE": "0", "PYTHONPATH": str(tests)})  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "autoattack linf" in line]
    assert (
        len(lines) >= 2 and lines[0].strip().startswith("autoattack linf 1/") and "robust accuracy so far" in lines[0]
    )
