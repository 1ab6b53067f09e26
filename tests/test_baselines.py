"""MLP baselines: the shared model contract, safetensors run folders, conventional training with resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dam.baselines import MLPClassifier, MLPConfig
from dam.errors import RunFolderError
from dam.model import CheckpointError, DenseAssociativeMemory, InputError
from dam.runs import load_model
from dam.training import MLPTrainConfig, train_mlp
from fakes import prototype_model, tiny_mnist


def test_contract_images_in_unit_range_logits_out():
    model = MLPClassifier(MLPConfig(degree=3, hidden=32), torch.Generator().manual_seed(0))
    x = torch.rand(5, 784)
    logits = model(x)
    assert logits.shape == (5, 10)
    assert torch.equal(model(x.reshape(5, 1, 28, 28)), logits)
    assert torch.equal(model.predict(x), logits.argmax(dim=1))
    h = torch.relu(model.hidden(x)) ** 3  # the rectified polynomial of degree 3
    assert torch.allclose(logits, model.out(h), atol=1e-6)
    with pytest.raises(InputError, match="shaped"):
        model(torch.rand(5, 783))
    with pytest.raises(InputError, match="floating point"):
        model(torch.zeros(5, 784, dtype=torch.uint8))
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        model.check_images(x + 2)


def test_relu_is_degree_one_and_names_say_so():
    assert MLPConfig().name == "mlp-relu" and MLPConfig(degree=19).name == "mlp-repu19"
    with pytest.raises(ValueError):
        MLPConfig(degree=0)


def test_save_load_roundtrip_and_kind_checks(tmp_path: Path):
    model = MLPClassifier(MLPConfig(degree=2, hidden=16), torch.Generator().manual_seed(1))
    model.save(tmp_path / "mlp", {"seed": 1})
    again = load_model(tmp_path / "mlp")
    assert isinstance(again, MLPClassifier) and again.config == model.config
    x = torch.rand(3, 784)
    assert torch.equal(again(x), model(x))
    assert json.loads((tmp_path / "mlp" / "config.json").read_text())["kind"] == "mlp"
    with pytest.raises(CheckpointError, match="not a DAM"):
        DenseAssociativeMemory.load(tmp_path / "mlp")
    with pytest.raises(RunFolderError, match="holds a saved model already"):  # a baseline over a run: refused
        model.save(tmp_path / "mlp")
    prototype_model(3).save(tmp_path / "dam")
    assert isinstance(load_model(tmp_path / "dam"), DenseAssociativeMemory)
    with pytest.raises(CheckpointError, match="not an MLP"):
        MLPClassifier.load(tmp_path / "dam")
    (tmp_path / "mlp" / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_model(tmp_path / "mlp")


def test_training_learns_and_resume_equals_uninterrupted(tmp_path: Path):
    data = tiny_mnist(tmp_path / "mnist")
    cfg, tcfg = MLPConfig(degree=2, hidden=32), MLPTrainConfig(epochs=3, batch_size=50, train_subset=600)
    full = train_mlp(cfg, tcfg, tmp_path / "full", data_dir=data, progress=False)
    train_mlp(cfg, tcfg, tmp_path / "part", data_dir=data, progress=False, stop_after=1)
    with pytest.raises(RunFolderError, match="--resume"):
        train_mlp(cfg, tcfg, tmp_path / "part", data_dir=data, progress=False)
    resumed = train_mlp(cfg, tcfg, tmp_path / "part", data_dir=data, progress=False, resume=True)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    metrics = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert metrics[-1]["loss"] < metrics[0]["loss"]
