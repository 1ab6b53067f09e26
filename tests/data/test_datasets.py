from __future__ import annotations

import numpy as np
import pytest
import torch

from dam.data import DatasetError, load_dataset, locate_dataset, train_val_split
from dam.errors import DamError
from fakes import fake_mnist, write_split


def test_explicit_dir_raw_files(tmp_path) -> None:
    fake_mnist(tmp_path, gz=False)
    x, y = load_dataset("mnist", "test", data_dir=tmp_path)
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.float32
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert y.shape == (10000,) and y.dtype == torch.int64
    xu, _ = load_dataset("mnist", "test", data_dir=tmp_path, as_float=False)
    assert xu.dtype == torch.uint8 and xu.shape == (10000, 28, 28)
    torch.testing.assert_close(xu.float()[:, None] / 255, x)


def test_explicit_dir_with_name_subfolder(tmp_path) -> None:
    fake_mnist(tmp_path / "mnist")
    assert locate_dataset("mnist", tmp_path) == tmp_path / "mnist"


def test_explicit_dir_without_files_is_an_error(tmp_path) -> None:
    with pytest.raises(DatasetError, match="no mnist IDX files"):
        load_dataset("mnist", "train", data_dir=tmp_path)


def test_a_file_given_as_the_data_folder_is_named_so(tmp_path) -> None:
    (tmp_path / "mnist.tar").write_bytes(b"")
    with pytest.raises(DatasetError, match="is a file, not a folder"):
        locate_dataset("mnist", tmp_path / "mnist.tar")


def test_search_order_env_then_cache(tmp_path, monkeypatch) -> None:
    env_root, cache = tmp_path / "env", tmp_path / "cache"
    fake_mnist(cache / "mnist", seed=1)
    monkeypatch.setenv("DAM_CACHE_DIR", str(cache))
    monkeypatch.delenv("DAM_DATA_DIR", raising=False)
    assert locate_dataset("mnist") == cache / "mnist"
    fake_mnist(env_root / "mnist", seed=2)
    monkeypatch.setenv("DAM_DATA_DIR", str(env_root))
    assert locate_dataset("mnist") == env_root / "mnist"


def test_mislabelled_file(tmp_path) -> None:
    fake_mnist(tmp_path)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=10000).astype(np.uint8)
    labels[1234] = 11
    write_split(tmp_path, "t10k", rng.integers(0, 256, (10000, 28, 28), dtype=np.uint8), labels)
    with pytest.raises(DatasetError, match=r"label 11 at index 1234.*0\.\.9|t10k-labels"):
        load_dataset("mnist", "test", data_dir=tmp_path)


def test_count_mismatch(tmp_path) -> None:
    fake_mnist(tmp_path)
    rng = np.random.default_rng(0)
    write_split(
        tmp_path,
        "t10k",
        rng.integers(0, 256, (10000, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, 9999, dtype=np.uint8),
    )
    with pytest.raises(DatasetError, match="9999 labels"):
        load_dataset("mnist", "test", data_dir=tmp_path)


def test_wrong_image_size(tmp_path) -> None:
    fake_mnist(tmp_path)
    rng = np.random.default_rng(0)
    write_split(
        tmp_path,
        "t10k",
        rng.integers(0, 256, (10000, 32, 32), dtype=np.uint8),
        rng.integers(0, 10, 10000, dtype=np.uint8),
    )
    with pytest.raises(DatasetError, match=r"\(N, 28, 28\)"):
        load_dataset("mnist", "test", data_dir=tmp_path)


def test_unknown_dataset_and_split(tmp_path) -> None:
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_dataset("cifar", "train", data_dir=tmp_path)
    with pytest.raises(DamError, match="split"):  # a mistake the user can fix: the package's own error
        load_dataset("mnist", "valid", data_dir=tmp_path)


def test_train_val_split_is_seeded_and_disjoint() -> None:
    train, val = train_val_split(60000, 10000, seed=3)
    assert len(train) == 50000 and len(val) == 10000
    assert len(set(train.tolist()) | set(val.tolist())) == 60000
    again, _ = train_val_split(60000, 10000, seed=3)
    other, _ = train_val_split(60000, 10000, seed=4)
    assert torch.equal(train, again) and not torch.equal(train, other)


def test_real_mnist(mnist_dir) -> None:
    x, y = load_dataset("mnist", "test", data_dir=mnist_dir)
    assert y[:8].tolist() == [7, 2, 1, 0, 4, 1, 4, 9]
    assert abs(float(x.mean()) - 0.1325) < 0.002
    xt, yt = load_dataset("mnist", "train", data_dir=mnist_dir)
    assert len(xt) == 60000 and torch.bincount(yt).min() > 5000
