"""``dam train --seeds``: one DAM per seed, trained together in one process, each into OUT/s{seed}."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fakes import dam, one_line_error, succeeded, tiny_mnist

TINY = ["--n", "3", "--m", "2", "--memories", "16", "--temperature", "200", "--batch-size", "250",
        "--train-subset", "1000", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return tiny_mnist(tmp_path_factory.mktemp("tiny") / "mnist")


def test_seeds_train_together_resume_and_match_single_runs(tmp_path, tiny_data) -> None:
    env = {**os.environ, "DAM_COMPILE": "0"}
    cmd = [sys.executable, "-m", "dam", "train", *TINY, "--data-dir", str(tiny_data)]
    out = tmp_path / "seeds"
    first = subprocess.run([*cmd, "--epochs", "1", "--seeds", "3", "4", "--out", str(out)], env=env,
                           capture_output=True, text=True, check=True)  # fmt: skip
    assert [r["run"] for r in json.loads(first.stdout)] == [str(out / "s3"), str(out / "s4")]
    again = subprocess.run([*cmd, "--epochs", "1", "--seeds", "3", "--out", str(out)], env=env, capture_output=True,
                           text=True)  # fmt: skip
    assert again.returncode == 2 and "--resume" in again.stderr and "Traceback" not in again.stderr
    subprocess.run([sys.executable, "-m", "dam", "train", "--out", str(out), "--seeds", "3", "4", "--resume",
                    "--epochs", "2", "--no-progress"], env=env, capture_output=True, check=True)  # fmt: skip
    for seed in (3, 4):
        folder = out / f"s{seed}"
        assert json.loads((folder / "config.json").read_text())["train"]["seed"] == seed
        assert len((folder / "metrics.jsonl").read_text().splitlines()) == 2
        single = tmp_path / f"single{seed}"
        succeeded(dam("train", *TINY, "--epochs", "2", "--seed", str(seed), "--data-dir", str(tiny_data), "--out",
                      str(single)))  # fmt: skip
        got, want = (load_file(str(f / "model.safetensors"))["memories"] for f in (folder, single))
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--seed", "1", "--seeds", "2", "3"], "--seed and --seeds"),
        (["--seeds", "2", "2"], "repeated"),
        (["--model", "mlp-relu", "--seeds", "2", "3"], "--seeds trains DAMs"),
    ],
)
def test_seeds_user_errors_are_one_line(extra, message: str, tmp_path) -> None:
    assert message in one_line_error(dam("train", *TINY, *extra, "--out", str(tmp_path / "x")))
