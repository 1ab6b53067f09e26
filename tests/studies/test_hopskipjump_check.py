"""studies/hopskipjump_check.py, run as a user runs it: a subprocess, on a small network trained on MNIST."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fakes import need_foolbox

SCRIPT = Path(__file__).parents[2] / "studies" / "hopskipjump_check.py"


@pytest.fixture(scope="module")
def mlp(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_foolbox()
    from dam.baselines import MLPConfig
    from dam.training import MLPTrainConfig, train_mlp

    out = tmp_path_factory.mktemp("study") / "mlp-relu"
    train_mlp(MLPConfig(degree=1, hidden=32), MLPTrainConfig(epochs=1, train_subset=3000), out,
              data_dir=mnist_dir, progress=False)  # fmt: skip
    return out


def test_each_norm_gives_one_line_whose_counts_agree_with_its_accuracies(
    mlp: Path, mnist_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "check.jsonl"
    done = subprocess.run([sys.executable, str(SCRIPT), str(mlp), "--images", "12", "--threads", "1",
                           "--data-dir", str(mnist_dir.parent), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["norm"] for r in rows] == ["linf", "l2"] and rows == [json.loads(s) for s in done.stdout.splitlines()]
    for r in rows:
        assert r["model"] == "mlp-relu" and r["images"] == 12 and r["torch_threads"] == 1
        apgd, hsj, only = r["apgd_robust_accuracy"], r["hopskipjump_robust_accuracy"], r["broken_by_hopskipjump_only"]
        assert len(apgd) == len(hsj) == len(only) == len(r["epsilons"])
        for a, h, k in zip(apgd, hsj, only, strict=True):
            worst = a - k / 12  # the worst case of the three attacks
            assert 0 <= k <= 12 and worst >= -1e-9 and worst <= h + 1e-9 and a <= r["clean_accuracy"] + 1e-9
        assert apgd == sorted(apgd, reverse=True) and hsj == sorted(hsj, reverse=True)
        assert apgd[-1] == 0.0  # the budgets reach 0% for the gradient attacks on a small network
        assert r["queries_per_image"]["hopskipjump"] > r["queries_per_image"]["apgd-ce"] > 0
