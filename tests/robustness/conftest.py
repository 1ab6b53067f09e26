from __future__ import annotations

from pathlib import Path

import pytest

from fakes import need_foolbox


@pytest.fixture(autouse=True)
def _foolbox() -> None:
    need_foolbox()


@pytest.fixture(scope="session")
def mlp_run(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small ReLU network trained on 5,000 real MNIST images for one epoch (about 90% accurate)."""
    from dam.baselines import MLPConfig
    from dam.training import MLPTrainConfig, train_mlp

    out = tmp_path_factory.mktemp("attacks") / "mlp-relu"
    train_mlp(MLPConfig(degree=1, hidden=64), MLPTrainConfig(epochs=1, train_subset=5000), out,
              data_dir=mnist_dir, progress=False)  # fmt: skip
    return out


@pytest.fixture(scope="session")
def test_subset(mnist_dir: Path):
    from dam.data import load_dataset
    from dam.robustness.attacks import evaluation_subset

    x, y = load_dataset("mnist", "test", data_dir=mnist_dir)
    return evaluation_subset(x.reshape(-1, 784), y, 40, seed=0)[:2]
