"""studies/ce_gradient.py, run as a user runs it: a subprocess, on a small DAM_30 trained on MNIST."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fakes import need_foolbox

SCRIPT = Path(__file__).parents[2] / "studies" / "ce_gradient.py"


@pytest.fixture(scope="module")
def dam30(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_foolbox()
    from dam.training import preset, train

    out = tmp_path_factory.mktemp("study") / "n30"
    train(preset("n30", "quick", epochs=2, num_memories=50, train_subset=2000), out, data_dir=mnist_dir,
          progress=False)  # fmt: skip
    return out


def test_one_line_per_place_and_dtype_with_both_dtypes_agreeing(dam30: Path, mnist_dir: Path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), str(dam30), "--images", "20", "--linf", "0.1", "0.4",
                           "--data-dir", str(mnist_dir.parent)],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [line.split(" | ") for line in done.stdout.splitlines()[1:]]
    places = list(dict.fromkeys(r[1] for r in rows))
    assert places == [
        "clean",
        "PGD's end points it left unbroken, L-inf 0.1",
        "PGD's end points it left unbroken, L-inf 0.4",
    ]
    clean = [r for r in rows if r[1] == "clean"]
    assert [r[2] for r in clean] == ["float32", "float64"]
    # the same images in both precisions: the same count, and medians within 1% (no underflow at the clean images)
    (m32, _, n32), (m64, _, n64) = (r[3].split(", ") for r in clean)
    assert n32 == n64 and float(m64) == pytest.approx(float(m32), rel=0.01) and float(clean[0][4]) > 0
