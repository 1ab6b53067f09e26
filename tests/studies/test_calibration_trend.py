"""studies/calibration_trend.py, run as a user runs it: a subprocess on a small MNIST-shaped set."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dam import load_dataset, load_model
from dam.probes.confidence import calibrate_beta_sm
from fakes import tiny_mnist, write_split

SCRIPT = Path(__file__).parents[2] / "studies" / "calibration_trend.py"


def study(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bar images of tiny_mnist, with 10% of the test labels wrong so that the accuracy can be calibrated."""
    root = tmp_path_factory.mktemp("tiny")
    tiny_mnist(root / "mnist")
    test = np.zeros((10000, 28, 28), dtype=np.uint8)
    labels = np.arange(10000, dtype=np.uint8) % 10
    test[np.arange(10000), 3 + 2 * labels, :] = 255
    labels[::10] = (labels[::10] + 1) % 10
    write_split(root / "mnist", "t10k", test, labels)
    return root


@pytest.fixture(scope="module")
def perfect_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_mnist(tmp_path_factory.mktemp("perfect") / "mnist").parent


def test_one_line_per_checkpoint_on_one_run(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "n30"
    done = study("n30", "quick", "--memories", "20", "--epochs", "2,1", "--data-dir", str(data_dir), "--out", str(out))
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]  # sorted, each measured once
    assert rows == [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    # The checkpoints lie on one run: its metrics hold epochs 1 and 2 once each, and each row's test error is the
    # one training recorded at that epoch.
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    for row, m in zip(rows, metrics, strict=True):
        assert row["test_error"] == pytest.approx(m["test_error"], abs=1e-6)
        assert row["beta_sm"] > 0 and 0 < row["mean_top_output"] <= 1
    # beta_sm multiplies the outputs Y = tanh(scores), as `dam calibrate` has it (the run ends at the last row).
    x, y = load_dataset("mnist", "test", data_dir=data_dir)
    assert rows[-1]["beta_sm"] == pytest.approx(calibrate_beta_sm(load_model(out), x, y), rel=1e-4)


def test_run_again_it_resumes_and_skips_the_checkpoints_it_passed(data_dir: Path, tmp_path: Path) -> None:
    """A resumed study measures only epochs it reaches: the model of a passed checkpoint is gone, and measuring
    the current one under that epoch would mislabel it (dam 0.8's study did)."""
    out = tmp_path / "n20"
    common = ("n20", "quick", "--memories", "20", "--data-dir", str(data_dir), "--out", str(out))
    first = study(*common, "--epochs", "1,2")
    assert first.returncode == 0, first.stderr
    again = study(*common, "--epochs", "1,2,3")
    assert again.returncode == 0, again.stderr
    assert "2 epochs done; skipping the checkpoints it has passed: [1]" in again.stderr
    rows = [json.loads(line) for line in again.stdout.splitlines()]
    assert [r["epoch"] for r in rows] == [2, 3]
    first_rows = [json.loads(line) for line in first.stdout.splitlines()]
    assert {k: v for k, v in rows[0].items() if k != "seconds"} == {
        k: v for k, v in first_rows[1].items() if k != "seconds"
    }  # epoch 2 measured again on the same model
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert rows[1]["test_error"] == pytest.approx(metrics[2]["test_error"], abs=1e-6)
    # The folder of another run (here K = 30) is refused in one line, before any line about its checkpoints.
    other = study(*common[:3], "30", *common[4:], "--epochs", "4")
    assert other.returncode == 2
    assert other.stderr.splitlines()[-1].endswith("holds a run with other settings (num_memories); give another --out")
    assert "skipping" not in other.stderr and "Traceback" not in other.stderr


def test_a_model_at_100_percent_is_reported_not_calibrated(perfect_data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "n30"
    done = study(
        "n30", "quick", "--memories", "20", "--epochs", "3", "--data-dir", str(perfect_data_dir), "--out", str(out)
    )
    assert done.returncode == 0, done.stderr
    (row,) = [json.loads(line) for line in done.stdout.splitlines()]
    assert row["test_error"] == 0 and row["beta_sm"] is None
    assert "leaves no beta_sm" in row["not_calibrated"]


def test_epochs_past_the_schedule_are_refused_before_training(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "n2"
    done = study("n2", "quick", "--epochs", "10,31", "--data-dir", str(data_dir), "--out", str(out))
    assert done.returncode == 2
    assert "past the schedule's 30 epochs" in done.stderr.splitlines()[-1]
    assert not out.exists()


PLOT = Path(__file__).parents[2] / "studies" / "plot_calibration_trend.py"


def test_the_trend_is_drawn_and_a_wrong_file_refused_in_one_line(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "n30"
    done = study("n30", "quick", "--memories", "20", "--epochs", "1,2", "--data-dir", str(data_dir), "--out", str(out))
    assert done.returncode == 0, done.stderr
    png = tmp_path / "trend.png"
    drawn = subprocess.run([sys.executable, str(PLOT), str(out.with_suffix(".jsonl")), "--out", str(png)],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert drawn.returncode == 0, drawn.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    wrong = subprocess.run([sys.executable, str(PLOT), str(out / "metrics.jsonl"), "--out", str(png)],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert wrong.returncode == 1 and wrong.stderr.strip().endswith(
        "not a trend file beside its run folder (give the OUT.jsonl of calibration_trend.py)"
    )
