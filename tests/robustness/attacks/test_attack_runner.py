from __future__ import annotations

import csv
import json

import pytest

from dam import cli
from dam.robustness.attacks.runner import AttackSuite, run_attacks

SMALL = AttackSuite(
    images=24,
    linf=(0.1, 0.3),
    l2=(1.0, 3.0),
    pgd_steps=5,
    hsj_steps=2,
    hsj_max_evals=20,
    aa_steps=5,
    aa_fab=False,
    square_queries=20,
)


def test_run_attacks_writes_tables_verdicts_and_reuses(tiny_reproduction, mlp_run, mnist_dir, tmp_path):
    runs = [str(tiny_reproduction / "runs" / n) for n in ("n2", "n30")]
    lines: list[str] = []
    summary = run_attacks(runs, tmp_path, SMALL, sources=[str(mlp_run)], data_dir=mnist_dir, log=lines.append)
    assert set(summary["models"]) == {"n2", "n30"}
    for m in summary["models"].values():
        linf = m["tables"]["linf"]
        # the source's PGD and targeted-DLR adversarials are both transferred
        assert {
            "fgsm",
            "pgd",
            "hopskipjump",
            "transfer:mlp-relu",
            "transfer:mlp-relu (apgd-t)",
            "apgd-ce",
            "apgd-t",
        } <= set(linf["attacks"])
        assert "hopskipjump" not in m["tables"]["l2"]["attacks"]
        for accs in linf["attacks"].values():
            assert all(0 <= a <= 1 for a in accs)
            assert all(w <= a + 1e-9 for w, a in zip(linf["worst_case"], accs, strict=True))
        assert m["verdict"]["verdict"].startswith(m["model"])
        check = m["effort_check"]["linf"]  # twice the iterations, restarts, another seed, on the survivors
        assert len(check["extra_broken_points"]) == 2 and all(0 <= p <= 100 for p in check["extra_broken_points"])
        assert isinstance(check["converged"], bool)
        assert [h["dtype"] for h in m["gradient_health"]] == ["float32", "float64"]
    for name in ("robustness.json", "robust_accuracy_linf.csv", "robust_accuracy_l2.csv", "masking.csv"):
        assert (tmp_path / name).stat().st_size > 0
    # an attack on the survivors of those before it records what it broke beyond them, never a robust accuracy
    rows = list(csv.DictReader((tmp_path / "robust_accuracy_linf.csv").read_text().splitlines()))
    for row in rows:
        survivors = row["attack"].endswith("(on survivors)")
        assert row["measure"] == ("broken beyond the attacks before" if survivors else "robust accuracy"), row
    assert any(row["attack"] == "effort check (on survivors)" for row in rows)
    # the two answers of the verdict, each its own column: the model's gradients, and the cross-entropy loss alone
    masking = list(csv.DictReader((tmp_path / "masking.csv").read_text().splitlines()))
    assert [r["model"] for r in masking] == list(summary["models"])
    for row in masking:
        verdict = summary["models"][row["model"]]["verdict"]
        assert row["masking_suspected"] == str(verdict["masking_suspected"]) and row["ce_overstates"] == str(
            verdict["ce_overstates"]
        )
    assert (tmp_path / "robust_accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "robustness.json").read_text())["images"]["count"] == 24
    lines.clear()
    run_attacks(runs, tmp_path, SMALL, sources=[str(mlp_run)], data_dir=mnist_dir, log=lines.append)
    assert sum("reused" in line for line in lines) == 2
    # a model attacked again (here: its result deleted, as a kill mid-model leaves it) reuses the source's
    # attacks from OUT/sources, and its transfers come out as before
    assert sorted(p.name for p in (tmp_path / "sources").iterdir()) == [
        "mlp-relu-l2.json", "mlp-relu-l2.safetensors", "mlp-relu-linf.json", "mlp-relu-linf.safetensors"]  # fmt: skip
    (tmp_path / "models" / "n2.json").unlink()
    lines.clear()
    again = run_attacks(runs, tmp_path, SMALL, sources=[str(mlp_run)], data_dir=mnist_dir, log=lines.append)
    assert sum(line.startswith("source mlp-relu") and "reused" in line for line in lines) == 2
    for norm in ("linf", "l2"):
        before, after = summary["models"]["n2"]["tables"][norm], again["models"]["n2"]["tables"][norm]
        for name in ("transfer:mlp-relu", "transfer:mlp-relu (apgd-t)"):
            assert after["attacks"][name] == before["attacks"][name]


def test_without_foolbox_the_command_says_which_extra(tiny_reproduction, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "foolbox", None)  # as if not installed: import raises ImportError
    assert cli.main(["attack", str(tiny_reproduction / "runs" / "n2"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert 'pip install "dam[attacks]"' in err and len(err.strip().splitlines()) == 1


def test_the_reuse_key_names_the_attacks_that_are_transferred():
    """A result made without the APGD-T transfers is not reused by a suite that transfers them."""
    import torch

    model = torch.nn.Linear(784, 10)
    for suite, names, suffixes in ((SMALL, ["pgd", "apgd-t"], ["", " (apgd-t)"]),
                                   (AttackSuite(autoattack="none"), ["pgd"], [""])):  # fmt: skip
        assert suite.transferred() == names
        made = suite.source_attacks(model, "linf")
        assert list(made) == suffixes
        assert [a.name for a in made.values()] == names


def test_bad_settings_name_the_rule_before_the_output_folder_exists(tiny_reproduction, tmp_path):
    """From Python (the command's refusals: tests/cli/test_attack.py)."""
    from dam.errors import InputError

    with pytest.raises(InputError, match="pgd_steps >= 1 violated"):
        AttackSuite(pgd_steps=0)
    with pytest.raises(InputError, match="positive budgets"):  # a zero budget: found where it is given
        AttackSuite(linf=(0.0, 0.1))
    out = tmp_path / "out"
    run = str(tiny_reproduction / "runs" / "n2")
    # a wrong suite type or device is one line before the output folder exists
    with pytest.raises(InputError, match="suite must be an AttackSuite"):
        run_attacks([run], out, {"images": 10})
    with pytest.raises(InputError, match="gpu"):
        run_attacks([run], out, SMALL, device="gpu")
    assert not out.exists()


def test_a_killed_attack_resumes_at_the_norm_it_was_in(tiny_reproduction, mnist_dir, tmp_path, monkeypatch):
    """Each norm of a model's attack is kept as it finishes: a kill during L2 loses L2 only, and the resumed
    result is the uninterrupted one."""
    from dam.robustness.attacks import runner

    run = [str(tiny_reproduction / "runs" / "n2")]
    whole = run_attacks(run, tmp_path / "whole", SMALL, data_dir=mnist_dir, log=lambda line: None)
    real, calls = runner.robust_accuracy, []

    def killed_in_l2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # L-inf finished, L2 started
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "robust_accuracy", killed_in_l2)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        run_attacks(run, out, SMALL, data_dir=mnist_dir, log=lambda line: None)
    assert sorted(p.name for p in (out / "models").iterdir()) == ["n2-linf.partial.json"]
    monkeypatch.setattr(runner, "robust_accuracy", real)
    lines: list[str] = []
    resumed = run_attacks(run, out, SMALL, data_dir=mnist_dir, log=lines.append)
    assert any(line.strip().startswith("n2, linf: reused") for line in lines)
    assert _untimed(resumed["models"]["n2"]["tables"]) == _untimed(whole["models"]["n2"]["tables"])
    assert resumed["models"]["n2"]["verdict"] == whole["models"]["n2"]["verdict"]
    assert not list((out / "models").glob("*.partial.json"))


def _untimed(value):
    """A result without its wall times (the one thing two runs of the same attack differ in)."""
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def test_models_attacked_in_worker_processes_give_the_same_result(tiny_reproduction, mlp_run, mnist_dir, tmp_path):
    """Each model's attack is seeded on its own, so where it runs cannot change it; the workers' progress lines
    reach the caller."""
    import torch

    runs = [str(tiny_reproduction / "runs" / n) for n in ("n2", "n20")]
    suite = AttackSuite(images=16, linf=(0.1, 0.3), l2=(1.0,), pgd_steps=3, hsj_steps=0, aa_steps=3, aa_fab=False,
                        square_queries=10)  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each of the two workers has on CI's two cores: float sums in the same order
    try:
        here = run_attacks(runs, tmp_path / "here", suite, sources=[str(mlp_run)], data_dir=mnist_dir,
                           log=lambda line: None)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    lines: list[str] = []
    there = run_attacks(runs, tmp_path / "workers", suite, sources=[str(mlp_run)], data_dir=mnist_dir,
                        log=lines.append, workers=2)  # fmt: skip
    assert list(there["models"]) == ["n2", "n20"]
    for name in ("n2", "n20"):
        assert _untimed(there["models"][name]["tables"]) == _untimed(here["models"][name]["tables"])
        assert there["models"][name]["verdict"] == here["models"][name]["verdict"]
    assert any(line.startswith("attack n20: 16 images") for line in lines)
    assert any(line.startswith("  source mlp-relu, linf") for line in lines)
    written = {p.name for p in (tmp_path / "workers" / "models").iterdir()}
    assert {"n2.json", "n20.json"} <= written and not any(name.endswith(".partial.json") for name in written)


def test_the_protocol_and_its_order_are_named_as_they_ran():
    """Fewer iterations or queries than the protocol's are "reduced", more are "strengthened", and the report's
    sentence on the order of the attacks follows what ran (FAB-T and Square only where they did)."""
    assert AttackSuite().autoattack_protocol == "AutoAttack standard"
    assert AttackSuite().autoattack_cascade.endswith(
        "; then FAB-T on the images every attack before it left; then Square on the images every attack before it left"
    )
    stronger = AttackSuite(aa_steps=200, square_queries=10000)
    assert stronger.autoattack_protocol == (
        "AutoAttack standard, strengthened (200 APGD and FAB iterations, Square 10000 queries)"
    )
    mixed = AttackSuite(aa_steps=200, aa_fab=False, square_queries=0)
    assert (
        mixed.autoattack_protocol
        == "AutoAttack standard, reduced (no FAB-T, no Square), strengthened (200 APGD iterations)"
    )
    assert "FAB" not in mixed.autoattack_cascade and "Square" not in mixed.autoattack_cascade
    assert "5 restarts" in AttackSuite(autoattack="plus").autoattack_cascade
    assert AttackSuite(autoattack="none").autoattack_cascade == "not run"


def test_run_attacks_keeps_the_commands_folder_rules(tiny_reproduction, tmp_path):
    # the Python job refuses what `dam attack` refuses (the command only calls it): a training run's folder, and a
    # folder another dam process is writing
    from dam.errors import RunFolderError, RunLockedError
    from dam.runs import OutputFolder

    run = tiny_reproduction / "runs" / "n2"
    with pytest.raises(RunFolderError, match="holds a training run"):
        run_attacks([str(run)], run, SMALL)
    assert not (run / "robustness.json").exists() and not (run / "models").exists()
    with OutputFolder(tmp_path / "out").lock(), pytest.raises(RunLockedError, match="another dam process"):
        run_attacks([str(run)], tmp_path / "out", SMALL)
    assert not (tmp_path / "out" / "models").exists()


def test_no_images_is_one_clear_refusal(tiny_reproduction):
    import torch

    from dam.errors import InputError
    from dam.robustness.attacks import PGD
    from dam.robustness.attacks.accuracy import robust_accuracy
    from dam.runs import load_model

    model = load_model(tiny_reproduction / "runs" / "n2")
    with pytest.raises(InputError, match="no images to attack"):
        robust_accuracy(model, "n2", torch.zeros(0, 784), torch.zeros(0, dtype=torch.long), [PGD(model, [0.1])])
