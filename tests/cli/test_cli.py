from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dam.cli import main
from fakes import tiny_mnist

TINY = ["--n", "3", "--m", "2", "--memories", "16", "--temperature", "200", "--epochs", "2", "--batch-size", "250",
        "--train-subset", "1000", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return tiny_mnist(tmp_path_factory.mktemp("tiny") / "mnist")


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_data) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", *TINY, "--data-dir", str(tiny_data), "--out", str(out)]) == 0
    return out


def test_train_writes_run(run: Path) -> None:
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["num_memories"] == 16 and config["train"]["temperature_start"] == 200
    assert config["train"]["ramp_epochs"] == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_evaluate_json(run: Path, tiny_data: Path, tmp_path: Path, capsys) -> None:
    out_file = tmp_path / "eval.json"
    assert main(["evaluate", str(run), "--data-dir", str(tiny_data), "--format", "json", "--json", str(out_file)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result == json.loads(out_file.read_text())
    cm = torch.tensor(result["confusion_matrix"])
    assert cm.shape == (10, 10) and int(cm.sum()) == 10000 == result["examples"]
    assert result["errors"] == 10000 - int(cm.trace())
    before = (run / "config.json").read_bytes()
    assert main(["evaluate", str(run), "--data-dir", str(tiny_data), "--json", str(run / "config.json")]) == 2
    assert "a file of the run folder itself" in capsys.readouterr().err
    assert (run / "config.json").read_bytes() == before


def test_evaluate_text_and_info(run: Path, tiny_data: Path, capsys) -> None:
    assert main(["evaluate", str(run), "--data-dir", str(tiny_data)]) == 0
    text = capsys.readouterr().out
    assert "test error" in text and "confusion matrix" in text
    assert main(["info", str(run)]) == 0
    info = capsys.readouterr().out
    assert "DAM_3" in info and "K=16" in info and "epochs 2/2" in info


def test_resume_extends_a_finished_run(run: Path, tmp_path: Path, capsys) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    assert main(["train", "--out", str(copy), "--resume", "--epochs", "3", "--no-progress"]) == 0
    assert len((copy / "metrics.jsonl").read_text().splitlines()) == 3
    # a settings flag on resume is checked against the saved run: the same value is fine, another refused
    assert main(["train", "--out", str(copy), "--resume", "--epochs", "4", "--memories", "16", "--no-progress"]) == 0
    capsys.readouterr()
    for flags in (["--lr", "0.5"], ["--n", "7"], ["--preset", "n3"], ["--schedule", "cpu"]):  # not how it started
        assert main(["train", "--out", str(copy), "--resume", *flags, "--no-progress"]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert json.loads((copy / "config.json").read_text())["train"]["lr"] != 0.5
    # fewer epochs than are done: refused, the saved plan untouched (the weights already hold epoch 4)
    assert main(["train", "--out", str(copy), "--resume", "--epochs", "2", "--no-progress"]) == 2
    assert "fewer than the 4 already done" in capsys.readouterr().err
    assert json.loads((copy / "config.json").read_text())["train"]["epochs"] == 4


def test_the_starting_command_again_with_resume_continues_it(tiny_data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "p"
    start = ["train", "--preset", "n3", "--schedule", "quick", "--memories", "16", "--train-subset", "500",
             "--data-dir", str(tiny_data), "--out", str(out), "--no-progress"]  # fmt: skip
    assert main([*start, "--epochs", "1"]) == 0
    assert main([*start, "--epochs", "2", "--resume"]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    capsys.readouterr()
    assert main([*start, "--epochs", "3", "--resume", "--lr", "0.5"]) == 2  # not the command that started it
    assert "differ from the saved run" in capsys.readouterr().err


def test_a_baseline_resumed_with_other_settings_is_refused(tiny_data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "mlp"
    common = ["train", "--model", "mlp-relu", "--out", str(out), "--data-dir", str(tiny_data), "--no-progress"]
    assert main([*common, "--hidden", "8", "--epochs", "1", "--train-subset", "500"]) == 0
    capsys.readouterr()
    for flags in (["--hidden", "50"], ["--lr", "0.5"], ["--batch-size", "3"]):
        assert main([*common, "--resume", *flags]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert main(["train", "--model", "mlp-repu", "--out", str(out), "--resume", "--no-progress"]) == 2
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 2  # the flag to give is named
    assert capsys.readouterr().err.strip().endswith("holds a 'mlp' run; resume it with --model mlp-relu")
    assert main([*common, "--resume", "--epochs", "2"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"]["hidden"] == 8 and saved["train"]["epochs"] == 2
    capsys.readouterr()
    assert main([*common, "--resume", "--epochs", "1"]) == 2  # a run is extended, never shortened
    assert "fewer than the 2 already done" in capsys.readouterr().err
    # killed before its first epoch was saved: a baseline's record starts again as that baseline, never a DAM
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "config.json").write_text((out / "config.json").read_text())
    assert main(["train", "--out", str(cut), "--resume", "--data-dir", str(tiny_data), "--no-progress"]) == 2
    assert "holds a 'mlp' run; resume it with --model mlp-relu" in capsys.readouterr().err
    assert main(["train", "--model", "mlp-relu", "--out", str(cut), "--resume", "--data-dir", str(tiny_data),
                 "--no-progress"]) == 0  # fmt: skip
    restarted = json.loads((cut / "config.json").read_text())
    assert restarted["kind"] == "mlp" and restarted["model"]["hidden"] == 8 and restarted["train"] == saved["train"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["evaluate", "/nonexistent/run"], "no such run folder"),
        (["info", "/nonexistent/run"], "no such run folder"),
        (["train", "--preset", "n3", "--n", "20", "--out", "x"], "contradicts"),
        (["train", "--out", "x"], "--preset"),
        (["train", "--n", "3", "--momentum", "2", "--out", "x"], "momentum"),
        (["train", "--n", "3", "--seed", "99999999999999999999999", "--out", "x"], "seed must be between"),
        (["attack", "x", "--out", "y", "--seed", "-1"], "seed must be between"),
        (["attack", "x", "--out", "y", "--workers", "0"], "--workers: must be at least 1"),
        (["reproduce", "--out", "y", "--workers", "0"], "--workers: must be at least 1"),
    ],
)
def test_user_errors_are_one_line(argv, message: str, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # refused before any output folder was made


def test_missing_data_dir_is_clear(tmp_path, capsys) -> None:
    assert main(["train", *TINY, "--data-dir", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "no mnist IDX files" in capsys.readouterr().err


def test_cuda_without_gpu_is_clear(tmp_path, tiny_data, capsys) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    argv = ["train", *TINY, "--data-dir", str(tiny_data), "--out", str(tmp_path / "r"), "--device", "cuda"]
    assert main(argv) == 2
    assert "cuda" in capsys.readouterr().err


def test_console_script_installed() -> None:
    out = subprocess.run([sys.executable, "-m", "dam", "--help"], capture_output=True, text=True, check=True)
    for verb in ("train", "evaluate", "info"):
        assert verb in out.stdout


def test_every_command_has_help(capsys) -> None:
    """``dam VERB --help`` prints and exits 0 for every verb (argparse formats help with %, so a stray
    percent sign in a preset's description once crashed ``dam reproduce --help``)."""
    out = subprocess.run([sys.executable, "-m", "dam", "--help"], capture_output=True, text=True, check=True).stdout
    verbs = out.split("{", 1)[1].split("}", 1)[0].split(",")
    assert "reproduce" in verbs and len(verbs) >= 10
    for verb in verbs:
        assert main([verb, "--help"]) == 0, verb
        assert "usage: dam " + verb in capsys.readouterr().out


def test_reproduce_seed_reaches_the_preset(monkeypatch, tmp_path, capsys) -> None:
    import dam.experiments.reproduce as reproduce_module

    seen = {}

    def fake_reproduce(plan, out, **kwargs):
        seen["plan"], seen["out"], seen["kwargs"] = plan, out, kwargs
        return tmp_path / "report" / "index.html"

    real_reproduce = reproduce_module.reproduce
    monkeypatch.setattr(reproduce_module, "reproduce", fake_reproduce)
    monkeypatch.chdir(tmp_path)
    assert main(["reproduce", "--preset", "quick", "--seed", "1", "--no-check"]) == 0
    assert seen["plan"].seed == 1 and seen["plan"].name == "quick" and seen["out"] == "runs/quick-seed1"
    assert seen["kwargs"]["paper_only"] is False
    assert main(["reproduce", "--preset", "paper", "--paper-only", "--no-check"]) == 0
    assert seen["plan"].name == "paper" and seen["kwargs"]["paper_only"] is True
    monkeypatch.setattr(reproduce_module, "reproduce", real_reproduce)  # a flag it would ignore: refused first
    assert main(["reproduce", "--paper-only", "--workers", "2", "--out", "x"]) == 2
    assert "--workers sets the attack stage, which --paper-only leaves out" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(["reproduce", "--seed", "-1"]) == 2 and "seed" in capsys.readouterr().err
    assert main(["reproduce", "--seed", str(2**63 - 1)]) == 2  # its substitutes would train from 2**63
    assert "substitutes train from seed + 1" in capsys.readouterr().err
