from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dam.errors import RunFolderError
from dam.model import CheckpointError, DenseAssociativeMemory
from dam.training import TrainConfig, dam_loss, train, update_memories
from dam.training.presets import preset, preset_names, schedule_names
from fakes import tiny_mnist


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return tiny_mnist(tmp_path_factory.mktemp("tiny") / "mnist")


def tiny_config(**kw) -> TrainConfig:
    base = dict(
        n=3,
        m=2,
        num_memories=24,
        temperature_start=300.0,
        temperature_end=150.0,
        ramp_epochs=3,
        epochs=6,
        batch_size=100,
        lr=0.04,
        lr_decay=0.95,
        momentum=0.8,
        train_subset=1500,
        seed=7,
    )
    return TrainConfig(**{**base, **kw})


def test_update_rule_normalises_each_memory_and_clips() -> None:
    memories = torch.zeros(3, 5)
    memories[2] = 0.99
    grad = torch.tensor([[1.0, -2.0, 0.5, 0, 0], [0, 0, 0, 0, 0], [-4.0, -1.0, 0, 0, 0]])
    velocity = torch.zeros(3, 5)
    update_memories(memories, grad, velocity, lr=0.1, momentum=0.5)
    torch.testing.assert_close(velocity, -grad)
    # row 0: V = (-1, 2, -0.5) / max 2 * 0.1 -> largest change exactly lr
    torch.testing.assert_close(memories[0], torch.tensor([-0.05, 0.1, -0.025, 0, 0]))
    assert torch.equal(memories[1], torch.zeros(5)), "a memory without gradient stays put"
    assert float(memories[2].max()) == 1.0, "weights are clipped to [-1, 1]"
    update_memories(memories, torch.zeros(3, 5), velocity, lr=0.1, momentum=0.5)
    torch.testing.assert_close(velocity, -0.5 * grad)  # momentum decays V


def test_loss_is_eq3() -> None:
    y = torch.tensor([[0.5, -0.5, 0.0]])
    expected = (0.5 + 1) ** 4 + (-0.5 - 1) ** 4 + (0.0 + 1) ** 4
    assert float(dam_loss(y, torch.tensor([1]), m=2)) == pytest.approx(expected)


def test_temperature_ramp_and_learning_rate() -> None:
    c = TrainConfig(temperature_start=400, temperature_end=100, ramp_epochs=3, lr=0.04, lr_decay=0.5)
    assert [c.temperature_at(e) for e in range(5)] == [400, 300, 200, 100, 100]
    assert c.lr_at(2) == pytest.approx(0.01)
    constant = TrainConfig(temperature_start=540, temperature_end=540, ramp_epochs=0)
    assert constant.temperature_at(0) == constant.temperature_at(99) == 540


def test_presets_stay_in_the_papers_windows() -> None:
    for name in preset_names():
        for schedule in schedule_names():
            c = preset(name, schedule)
            assert 0.6 <= c.momentum <= 0.95 and 0.01 <= c.lr <= 0.04
            assert (c.init_mean, c.init_std) == (-0.3, 0.3)
            if c.n >= 20:
                assert c.m >= 20 and 500 <= c.temperature_start == c.temperature_end <= 700
            else:
                assert 2 <= c.m <= 4 and 250 <= c.temperature_start <= 400 and 30 <= c.temperature_end <= 100
    paper = preset("n3", "paper")
    assert (paper.epochs, paper.lr_decay, paper.batch_size, paper.num_memories, paper.ramp_epochs) == (
        3000,
        0.998,
        1000,
        2000,
        200,
    )
    assert preset("n20", "cpu", epochs=5).epochs == 5


def test_invalid_settings_are_named() -> None:
    with pytest.raises(ValueError, match="momentum"):
        TrainConfig(momentum=1.5)
    # a type a setting cannot have is refused before anything runs (m = 1.5 used to train an odd-power loss)
    for kw, message in (({"m": 1.5}, "m is an integer violated"), ({"epochs": 2.0}, "epochs is an integer"),
                        ({"lr": float("inf")}, "lr is a finite number"), ({"init_mean": float("nan")}, "init_mean"),
                        ({"validation": 1}, "validation is True or False"), ({"seed": 2**63}, "seed < 2\\*\\*63"),
                        ({"n": True}, "n is an integer")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            TrainConfig(**kw)


def test_a_temperature_without_its_ramp_or_a_bad_stop_is_refused_before_the_folder(tmp_path, tiny_data) -> None:
    from dam.errors import ConfigError, InputError

    with pytest.raises(ConfigError, match="T_i = 300 and T_f = 150 with no ramp"):
        train(tiny_config(ramp_epochs=0), tmp_path / "a", data_dir=tiny_data)
    with pytest.raises(InputError, match="stop_after must be an integer of at least 1"):
        train(tiny_config(), tmp_path / "b", data_dir=tiny_data, stop_after=0)
    with pytest.raises(InputError, match="resume and force"):
        train(tiny_config(), tmp_path / "c", data_dir=tiny_data, resume=True, force=True)
    assert not any(tmp_path.iterdir())  # nothing left behind


def test_a_run_stopped_in_its_first_epoch_starts_again(tmp_path, tiny_data) -> None:
    """Killed before its first epoch was saved, a run leaves its record and no epoch: it is started again (with
    or without resume), not refused as a foreign folder that only --force could clear."""
    full = train(tiny_config(epochs=1), tmp_path / "full", data_dir=tiny_data)
    for resume in (False, True):
        cut = tmp_path / f"cut{resume}"
        cut.mkdir()
        (cut / "config.json").write_text((tmp_path / "full" / "config.json").read_text())
        (cut / "metrics.jsonl").write_text("")
        again = train(tiny_config(epochs=1), cut, data_dir=tiny_data, resume=resume)
        assert torch.equal(again.memories, full.memories)
    # killed between its first metrics line and its first state: nothing to continue from either; resumed without
    # settings, it starts again with those of its record
    cut = tmp_path / "cut-after-metrics"
    cut.mkdir()
    (cut / "config.json").write_text((tmp_path / "full" / "config.json").read_text())
    (cut / "metrics.jsonl").write_text((tmp_path / "full" / "metrics.jsonl").read_text())
    again = train(None, cut, data_dir=tiny_data, resume=True)
    assert torch.equal(again.memories, full.memories)
    foreign = tmp_path / "foreign"  # a config.json that is not a dam run's record: still refused
    foreign.mkdir()
    (foreign / "config.json").write_text("{}")
    with pytest.raises(RunFolderError, match="without a training state"):
        train(tiny_config(epochs=1), foreign, data_dir=tiny_data)


def test_the_record_names_the_data_and_every_session(tmp_path, tiny_data) -> None:
    train(tiny_config(epochs=2), tmp_path / "run", data_dir=tiny_data, stop_after=1)
    first = json.loads((tmp_path / "run" / "config.json").read_text())
    assert set(first["data_md5"]) == {"train_images", "train_labels", "test_images", "test_labels"}
    assert "compiled_kernels" in first["environment"]
    assert "earlier_sessions" not in first
    train(None, tmp_path / "run", data_dir=tiny_data, resume=True)
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    (session,) = record["earlier_sessions"]  # the first session, kept beside the second's record
    assert session["resumed_at_epoch"] == 1 and session["environment"] == first["environment"]
    assert session["data_md5"] == record["data_md5"]
    train(None, tmp_path / "run", data_dir=tiny_data, resume=True)  # a finished run: this session trains nothing
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == record  # and leaves the record as it was


def test_any_seed_the_cli_accepts_orders_the_epochs() -> None:
    from dam.training.loop import epoch_permutation

    before = torch.randperm(10, generator=torch.Generator().manual_seed(7 * 1_000_003 + 0 + 1))  # dam 0.9's order
    assert torch.equal(epoch_permutation(10, 7, 0), before)  # unchanged for the seeds it took
    assert sorted(epoch_permutation(10, 2**63 - 1, 3).tolist()) == list(range(10))


def test_training_writes_a_run_folder_and_learns(tmp_path, tiny_data) -> None:
    model = train(tiny_config(), tmp_path / "run", data_dir=tiny_data)
    files = sorted(p.name for p in (tmp_path / "run").iterdir() if not p.name.startswith("."))
    assert files == ["config.json", "metrics.jsonl", "model.safetensors", "train_state.safetensors"]
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "train_error", "test_error", "seconds", "temperature", "lr"} <= set(lines[0])
    assert lines[-1]["loss"] < lines[0]["loss"]  # learning itself is tested on real MNIST (test_learning.py)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["seed"] == 7 and config["train"]["n"] == 3 and config["environment"]["torch"]
    assert config["environment"]["denormals"] == "flushed"  # the epochs ran in dam.environment.flush_denormals
    tiny = torch.full((1 << 20,), 1e-39)  # and after training, denormals are computed again, in every thread
    assert torch.equal((tiny * 1.0).view(torch.int32), tiny.view(torch.int32))
    loaded = DenseAssociativeMemory.load(tmp_path / "run")
    assert torch.equal(loaded.memories, model.memories)
    assert loaded.temperature == 150.0
    assert float(loaded.memories.detach().abs().max()) <= 1.0


def test_same_seed_same_weights_other_seed_differs(tmp_path, tiny_data) -> None:
    a = train(tiny_config(epochs=2), tmp_path / "a", data_dir=tiny_data)
    b = train(tiny_config(epochs=2), tmp_path / "b", data_dir=tiny_data)
    c = train(tiny_config(epochs=2, seed=8), tmp_path / "c", data_dir=tiny_data)
    assert torch.equal(a.memories, b.memories) and not torch.equal(a.memories, c.memories)


def test_resume_matches_uninterrupted_run(tmp_path, tiny_data) -> None:
    full = train(tiny_config(), tmp_path / "full", data_dir=tiny_data)
    train(tiny_config(), tmp_path / "cut", data_dir=tiny_data, stop_after=2)
    with pytest.raises(RunFolderError, match="--resume"):
        train(tiny_config(), tmp_path / "cut", data_dir=tiny_data)
    resumed = train(None, tmp_path / "cut", data_dir=tiny_data, resume=True)
    assert torch.equal(resumed.memories, full.memories)
    # resuming a finished run rewrites its files and keeps the training settings in config.json
    again = train(None, tmp_path / "cut", data_dir=tiny_data, resume=True)
    assert torch.equal(again.memories, full.memories)
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["train"]["epochs"] == 6
    full_lines = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    cut_lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    strip = lambda lines: [{k: v for k, v in json.loads(x).items() if "seconds" not in k} for x in lines]  # noqa: E731
    assert strip(cut_lines) == strip(full_lines)


def test_a_minibatch_larger_than_the_data_is_refused_for_new_runs_only(tmp_path, tiny_data) -> None:
    from dam.errors import ConfigError

    with pytest.raises(ConfigError, match="batch_size 2000 is larger than the train_subset of 1500"):
        train(tiny_config(batch_size=2000), tmp_path / "new", data_dir=tiny_data)
    # a run saved with such settings (dam 0.7 accepted them) still resumes
    train(tiny_config(epochs=2, batch_size=1500), tmp_path / "old", data_dir=tiny_data, stop_after=1)
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    config["train"]["batch_size"] = 2000
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    train(None, tmp_path / "old", data_dir=tiny_data, resume=True)
    assert len((tmp_path / "old" / "metrics.jsonl").read_text().splitlines()) == 2


def test_resume_refuses_other_settings(tmp_path, tiny_data) -> None:
    train(tiny_config(epochs=1), tmp_path / "run", data_dir=tiny_data)
    with pytest.raises(CheckpointError, match="differ"):
        train(tiny_config(epochs=2, lr=0.01), tmp_path / "run", data_dir=tiny_data, resume=True)
    more = train(tiny_config(epochs=2), tmp_path / "run", data_dir=tiny_data, resume=True)  # extending is fine
    assert more is not None


def test_resume_after_sigkill_gives_identical_weights(tmp_path, tiny_data) -> None:
    """A real `dam train` process killed with SIGKILL mid-run, then `dam train --resume`."""
    args = [
        "--n",
        "3",
        "--m",
        "2",
        "--memories",
        "24",
        "--temperature-start",
        "300",
        "--temperature-end",
        "150",
        "--ramp-epochs",
        "3",
        "--epochs",
        "25",
        "--batch-size",
        "100",
        "--lr",
        "0.04",
        "--lr-decay",
        "0.95",
        "--momentum",
        "0.8",
        "--train-subset",
        "1500",
        "--seed",
        "7",
        "--data-dir",
        str(tiny_data),
        "--no-progress",
    ]
    env = {**os.environ, "DAM_COMPILE": "0"}
    cmd = [sys.executable, "-m", "dam", "train", *args]
    subprocess.run([*cmd, "--out", str(tmp_path / "ref")], check=True, env=env, capture_output=True)
    run = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, "--out", str(run)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed; make it longer"
    done = len(metrics.read_text().splitlines())
    assert 3 <= done < 25
    subprocess.run([*cmd[:4], "--out", str(run), "--resume", "--no-progress"], check=True, env=env, capture_output=True)
    ref = load_file(str(tmp_path / "ref" / "model.safetensors"))["memories"]
    got = load_file(str(run / "model.safetensors"))["memories"]
    assert torch.equal(ref, got)
    assert len(metrics.read_text().splitlines()) == 25


def test_validation_split_reports_validation_error(tmp_path, tiny_data) -> None:
    train(replace(tiny_config(epochs=1), validation=True), tmp_path / "v", data_dir=tiny_data)
    line = json.loads((tmp_path / "v" / "metrics.jsonl").read_text())
    assert "validation_error" in line and "test_error" not in line


def test_state_written_less_often_than_metrics_still_resumes_exactly(tmp_path, tiny_data, monkeypatch) -> None:
    """Where epochs are far cheaper than writing the state (a GPU), the state is written only now and then:
    an interruption drops the metrics of the epochs after it, and the resumed run ends as an uninterrupted one."""
    from safetensors import safe_open

    from dam.training import loop

    monkeypatch.setattr(loop, "SAVE_COST_RATIO", 1e12)  # only each invocation's first and last epoch written
    ref = train(tiny_config(epochs=6), tmp_path / "ref", data_dir=tiny_data)
    written = []

    def interrupt_at_4(line: str) -> None:
        written.append(json.loads(line)["epoch"])
        if written[-1] == 4:
            raise KeyboardInterrupt

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(epochs=6), run, data_dir=tiny_data, log=interrupt_at_4)
    with safe_open(str(run / "train_state.safetensors"), framework="pt") as f:
        assert f.metadata()["epochs_done"] == "1"
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    resumed = train(tiny_config(epochs=6), run, data_dir=tiny_data, resume=True)
    assert torch.equal(ref.memories, resumed.memories)
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == list(range(1, 7))
    assert torch.equal(load_file(str(run / "model.safetensors"))["memories"], ref.memories.detach())
