"""The command line as a user runs it (``python -m dam`` in a subprocess): train, evaluate, info, resume, and
the one-line errors of bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from dam.cli import main
from fakes import dam, one_line_error, succeeded, tiny_mnist

TINY = ["--n", "3", "--m", "2", "--memories", "16", "--temperature", "200", "--epochs", "2", "--batch-size", "250",
        "--train-subset", "1000", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return tiny_mnist(tmp_path_factory.mktemp("tiny") / "mnist")


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_data) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    succeeded(dam("train", *TINY, "--data-dir", str(tiny_data), "--out", str(out)))
    return out


def test_train_writes_run(run: Path) -> None:
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["num_memories"] == 16 and config["train"]["temperature_start"] == 200
    assert config["train"]["ramp_epochs"] == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_evaluate_json(run: Path, tiny_data: Path, tmp_path: Path) -> None:
    out_file = tmp_path / "eval.json"
    printed = succeeded(dam("evaluate", str(run), "--data-dir", str(tiny_data), "--format", "json", "--json",
                            str(out_file))).stdout  # fmt: skip
    result = json.loads(printed)
    assert result == json.loads(out_file.read_text())
    cm = torch.tensor(result["confusion_matrix"])
    assert cm.shape == (10, 10) and int(cm.sum()) == 10000 == result["examples"]
    assert result["errors"] == 10000 - int(cm.trace())
    before = (run / "config.json").read_bytes()
    line = one_line_error(dam("evaluate", str(run), "--data-dir", str(tiny_data), "--json", str(run / "config.json")))
    assert "a file of the run folder itself" in line
    assert (run / "config.json").read_bytes() == before


def test_evaluate_text_and_info(run: Path, tiny_data: Path) -> None:
    text = succeeded(dam("evaluate", str(run), "--data-dir", str(tiny_data))).stdout
    assert "test error" in text and "confusion matrix" in text
    info = succeeded(dam("info", str(run))).stdout
    assert "DAM_3" in info and "K=16" in info and "epochs 2/2" in info


def test_resume_extends_a_finished_run(run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    resume = ["train", "--out", str(copy), "--resume", "--no-progress"]
    succeeded(dam(*resume, "--epochs", "3"))
    assert len((copy / "metrics.jsonl").read_text().splitlines()) == 3
    # a settings flag on resume is checked against the saved run: the same value is fine, another refused
    succeeded(dam(*resume, "--epochs", "4", "--memories", "16"))
    for flags in (["--lr", "0.5"], ["--n", "7"], ["--preset", "n3"], ["--schedule", "cpu"]):  # not how it started
        one_line_error(dam(*resume, *flags))
    assert json.loads((copy / "config.json").read_text())["train"]["lr"] != 0.5
    # fewer epochs than are done: refused, the saved plan untouched (the weights already hold epoch 4)
    assert "fewer than the 4 already done" in one_line_error(dam(*resume, "--epochs", "2"))
    assert json.loads((copy / "config.json").read_text())["train"]["epochs"] == 4


def test_the_starting_command_again_with_resume_continues_it(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "p"
    start = ["train", "--preset", "n3", "--schedule", "quick", "--memories", "16", "--train-subset", "500",
             "--data-dir", str(tiny_data), "--out", str(out), "--no-progress"]  # fmt: skip
    succeeded(dam(*start, "--epochs", "1"))
    succeeded(dam(*start, "--epochs", "2", "--resume"))
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    line = one_line_error(dam(*start, "--epochs", "3", "--resume", "--lr", "0.5"))  # not the command that started it
    assert "differ from the saved run" in line


def test_a_baseline_resumed_with_other_settings_is_refused(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "mlp"
    common = ["train", "--model", "mlp-relu", "--out", str(out), "--data-dir", str(tiny_data), "--no-progress"]
    succeeded(dam(*common, "--hidden", "8", "--epochs", "1", "--train-subset", "500"))
    for flags in (["--hidden", "50"], ["--lr", "0.5"], ["--batch-size", "3"]):
        one_line_error(dam(*common, "--resume", *flags))
    one_line_error(dam("train", "--model", "mlp-repu", "--out", str(out), "--resume", "--no-progress"))
    line = one_line_error(dam("train", "--out", str(out), "--resume", "--no-progress"))  # the flag to give is named
    assert line.endswith("holds a 'mlp' run; resume it with --model mlp-relu")
    succeeded(dam(*common, "--resume", "--epochs", "2"))
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"]["hidden"] == 8 and saved["train"]["epochs"] == 2
    line = one_line_error(dam(*common, "--resume", "--epochs", "1"))  # a run is extended, never shortened
    assert "fewer than the 2 already done" in line
    # killed before its first epoch was saved: a baseline's record starts again as that baseline, never a DAM
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "config.json").write_text((out / "config.json").read_text())
    line = one_line_error(dam("train", "--out", str(cut), "--resume", "--data-dir", str(tiny_data), "--no-progress"))
    assert "holds a 'mlp' run; resume it with --model mlp-relu" in line
    succeeded(dam("train", "--model", "mlp-relu", "--out", str(cut), "--resume", "--data-dir", str(tiny_data),
                  "--no-progress"))  # fmt: skip
    restarted = json.loads((cut / "config.json").read_text())
    assert restarted["kind"] == "mlp" and restarted["model"]["hidden"] == 8 and restarted["train"] == saved["train"]


def test_a_baseline_trains_evaluates_and_is_described(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "relu"
    succeeded(dam("train", "--model", "mlp-relu", "--hidden", "16", "--epochs", "1", "--train-subset", "300",
                  "--data-dir", str(tiny_data), "--out", str(out), "--no-progress"))  # fmt: skip
    result = json.loads(succeeded(dam("evaluate", str(out), "--data-dir", str(tiny_data), "--format", "json")).stdout)
    assert result["examples"] == 10000 and 0 <= result["error"] <= 1
    assert "MLP 784-16-10, ReLU units" in succeeded(dam("info", str(out))).stdout
    line = one_line_error(dam("train", "--model", "mlp-relu", "--preset", "n3", "--out", str(tmp_path / "x")))
    assert "DAM settings" in line
    one_line_error(dam("train", "--model", "mlp-repu", "--degree", "1", "--out", str(tmp_path / "y")))


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
def test_user_errors_are_one_line(argv, message: str, tmp_path) -> None:
    assert message in one_line_error(dam(*argv, cwd=tmp_path))
    assert list(tmp_path.iterdir()) == []  # refused before any output folder was made


def test_missing_data_dir_is_clear(tmp_path) -> None:
    line = one_line_error(dam("train", *TINY, "--data-dir", str(tmp_path), "--out", str(tmp_path / "r")))
    assert "no mnist IDX files" in line


def test_cuda_without_gpu_is_clear(tmp_path, tiny_data) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    argv = ["train", *TINY, "--data-dir", str(tiny_data), "--out", str(tmp_path / "r"), "--device", "cuda"]
    assert "cuda" in one_line_error(dam(*argv))


def test_console_script_installed() -> None:
    out = succeeded(dam("--help")).stdout
    for verb in ("train", "evaluate", "info"):
        assert verb in out


def test_every_command_has_help(capsys) -> None:
    """``dam VERB --help`` prints and exits 0 for every verb (argparse formats help with %, so a stray
    percent sign in a preset's description once crashed ``dam reproduce --help``).  In this process: one
    interpreter start per verb would add nothing that the subprocess above does not show."""
    verbs = succeeded(dam("--help")).stdout.split("{", 1)[1].split("}", 1)[0].split(",")
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
