"""``dam attack`` as a user runs it (``python -m dam`` in a subprocess): the table and verdicts it prints, its
record, reuse and --force, and the one-line refusals that come before any attack."""

from __future__ import annotations

import json
import shutil

import pytest

from fakes import dam, need_foolbox, one_line_error, succeeded


@pytest.fixture(autouse=True)
def _foolbox() -> None:
    need_foolbox()


def test_attack_prints_the_table_and_verdicts(tiny_reproduction, mnist_dir, tmp_path):
    run = str(tiny_reproduction / "runs" / "n3")
    out = succeeded(dam("attack", run, "--out", str(tmp_path), "--images", "16", "--linf", "0.1", "--l2", "1",
                        "--pgd-steps", "3", "--hsj-steps", "0", "--aa-steps", "3", "--no-fab", "--square-queries",
                        "10", "--data-dir", str(mnist_dir), timeout=600)).stdout  # fmt: skip
    assert "robust accuracy, linf" in out and "n3:" in out and "strongest in linf" in out
    assert "protocol: AutoAttack standard, reduced (3 APGD iterations, no FAB-T, Square 10 queries)" in out
    record = json.loads((tmp_path / "models" / "n3.robustbench.json").read_text())
    assert record["threat_models"]["Linf"]["eps"] == [0.1] and record["n_examples"] == 16
    linf = record["threat_models"]["Linf"]
    assert {"apgd-ce", "apgd-t"} <= set(linf["per_attack"])
    # Square saw only what APGD left: what it added to the worst case, never a robust accuracy of its own
    assert not any("on survivors" in a for a in linf["per_attack"])
    assert set(linf["broken_on_survivors"]) == {"square (on survivors)", "effort check (on survivors)"}
    assert record["libraries"]["pyautoattack"]
    # Another budget into the same --out: the finished result is refused before any attack, kept as it was;
    # --force attacks again and replaces it.
    before = (tmp_path / "models" / "n3.json").read_text()
    other = ["attack", run, "--out", str(tmp_path), "--images", "16", "--linf", "0.2", "--l2", "1", "--pgd-steps", "3",
             "--hsj-steps", "0", "--autoattack", "none", "--data-dir", str(mnist_dir)]  # fmt: skip
    line = one_line_error(dam(*other))
    assert "holds a finished attack made with other settings" in line and "--force" in line
    assert (tmp_path / "models" / "n3.json").read_text() == before
    succeeded(dam(*other, "--force", timeout=600))
    assert json.loads((tmp_path / "robustness.json").read_text())["suite"]["linf"] == [0.2]


def test_a_bad_budget_is_one_line(tmp_path):
    line = one_line_error(dam("attack", "x", "--out", str(tmp_path), "--linf", "a,b"))
    assert "argument --linf" in line and "not a number" in line


def test_a_missing_run_is_one_line_before_any_data(tmp_path):
    line = one_line_error(dam("attack", str(tmp_path / "nope"), "--out", str(tmp_path / "out"), "--data-dir",
                              "/nowhere"))  # fmt: skip
    assert "no such run folder" in line


def test_damaged_weights_are_one_line_before_any_attack(tiny_reproduction, tmp_path):
    """The second run (or a transfer source) with unreadable weights fails before the first is attacked."""
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_reproduction / "runs" / "n2", damaged)
    (damaged / "model.safetensors").write_bytes(b"not safetensors")
    good = str(tiny_reproduction / "runs" / "n3")
    for argv in ([good, str(damaged)], [good, "--transfer-from", str(damaged)]):
        out = tmp_path / f"out{len(argv)}"
        line = one_line_error(dam("attack", *argv, "--out", str(out), "--images", "8", "--autoattack", "none"))
        assert "model.safetensors" in line
        assert not out.exists()  # nothing attacked, no folder made


def test_a_source_it_would_skip_is_refused(tiny_reproduction, tmp_path):
    """A transfer source named like an attacked run but another model, or a run as its own only source, would
    give no transfer at all: refused in one line before any attack."""
    runs = tiny_reproduction / "runs"
    impostor = tmp_path / "other" / "n2"
    shutil.copytree(runs / "n3", impostor)  # another model, in a folder named n2
    cases = [
        ([str(runs / "n2"), "--transfer-from", str(impostor)], "are both named n2 but are different models"),
        ([str(runs / "n2"), "--transfer-from", str(runs / "n2")], "a model is not its own transfer source"),
    ]
    for argv, message in cases:
        out = tmp_path / "out"
        line = one_line_error(dam("attack", *argv, "--out", str(out), "--images", "8", "--autoattack", "none"))
        assert message in line
        assert not out.exists()


def test_bad_settings_name_the_rule_before_the_output_folder_exists(tiny_reproduction, tmp_path):
    out = tmp_path / "out"
    run = str(tiny_reproduction / "runs" / "n2")
    assert "hsj_norms among linf, l2 violated" in one_line_error(dam("attack", run, "--out", str(out), "--hsj-norms",
                                                                     "linf,l1"))  # fmt: skip
    # flags that would have no effect, two runs of one name, more images than the test set: refused
    n2_elsewhere = tmp_path / "elsewhere" / "n2"
    shutil.copytree(run, n2_elsewhere)
    for argv, message in (
        (
            ["--autoattack", "none", "--aa-steps", "5", "--no-fab"],
            "--aa-steps, --no-fab: no effect with --autoattack none",
        ),
        (["--hsj-steps", "0", "--hsj-norms", "l2"], "--hsj-norms: no effect with --hsj-steps 0"),
        (["--hsj-norms", ""], "--hsj-norms ''"),
        (["--images", "20000"], "--images must be between 1 and 10000, got 20000: the MNIST test set has 10000 images"),
        ([str(n2_elsewhere)], "two runs are named n2"),
    ):
        runs, flags = ([run, *argv], []) if argv[0].startswith("/") else ([run], argv)
        assert message in one_line_error(dam("attack", *runs, "--out", str(out), *flags))
    assert not out.exists()
