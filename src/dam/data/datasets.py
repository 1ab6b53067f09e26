"""``load_dataset``: find MNIST or Fashion-MNIST locally or download it, validate it, return tensors."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dam.data.idx import DatasetError, read_idx
from dam.data.sources import SPLIT_FILES, DatasetSpec, cache_dir, download_dataset, find_file, get_spec
from dam.errors import InputError

NUM_CLASSES = 10


def _has_split_files(folder: Path) -> bool:
    return all(find_file(folder, stem) for stems in SPLIT_FILES.values() for stem in stems)


def locate_dataset(name: str, data_dir: str | os.PathLike[str] | None = None, *, download: bool = True) -> Path:
    """The folder holding ``name``'s IDX files, searched in this order:

    1. ``data_dir`` (the folder itself or its ``<name>/`` subfolder); when given, nothing else is tried;
    2. ``$DAM_DATA_DIR/<name>``;
    3. the user cache ``~/.cache/dam/<name>`` (``$DAM_CACHE_DIR`` overrides);
    4. system copies (Debian's ``/usr/share/datasets/fashion-mnist``);
    5. a download from the public mirrors into the cache, verified by MD5.
    """
    spec = get_spec(name)
    if data_dir is not None:
        base = Path(data_dir)
        if base.is_file():
            raise DatasetError(f"{base}: is a file, not a folder; give the folder that holds the {name} IDX files")
        for folder in (base, base / name):
            if _has_split_files(folder):
                return folder
        raise DatasetError(
            f"{base}: no {name} IDX files here or in {base / name} "
            f"(expected {', '.join(s + '[.gz]' for stems in SPLIT_FILES.values() for s in stems)})"
        )
    candidates = []
    if os.environ.get("DAM_DATA_DIR"):
        candidates.append(Path(os.environ["DAM_DATA_DIR"]) / name)
    candidates.append(cache_dir() / name)
    candidates.extend(Path(d) for d in spec.system_dirs)
    for folder in candidates:
        if _has_split_files(folder):
            return folder
    if not download:
        raise DatasetError(f"{name} not found in {', '.join(map(str, candidates))} and download=False")
    return download_dataset(spec, cache_dir() / name)


@lru_cache(maxsize=8)
def _load_split(folder: str, name: str, split: str, mtimes: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    spec = get_spec(name)
    image_path = find_file(Path(folder), SPLIT_FILES[split][0])
    label_path = find_file(Path(folder), SPLIT_FILES[split][1])
    assert image_path is not None and label_path is not None
    images, labels = read_idx(image_path), read_idx(label_path)
    _validate(spec, split, image_path, images, label_path, labels)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _validate(
    spec: DatasetSpec, split: str, image_path: Path, images: np.ndarray, label_path: Path, labels: np.ndarray
) -> None:
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise DatasetError(
            f"{image_path}: expected uint8 images of shape (N, 28, 28), got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DatasetError(f"{label_path}: expected a 1-D uint8 label file, got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise DatasetError(f"{image_path} has {len(images)} images but {label_path} has {len(labels)} labels")
    if len(images) != spec.sizes[split]:
        raise DatasetError(
            f"{image_path}: {len(images)} examples, the {spec.name} {split} split has {spec.sizes[split]}"
        )
    if labels.max(initial=0) >= NUM_CLASSES:
        bad = int(np.argmax(labels >= NUM_CLASSES))
        raise DatasetError(f"{label_path}: label {int(labels[bad])} at index {bad} is outside 0..{NUM_CLASSES - 1}")


def load_dataset(
    name: str = "mnist",
    split: str = "train",
    data_dir: str | os.PathLike[str] | None = None,
    *,
    as_float: bool = True,
    download: bool = True,
) -> tuple[Tensor, Tensor]:
    """Images and labels of one split.

    Images are float32 in [0, 1] shaped (N, 1, 28, 28) (uint8 (N, 28, 28) with ``as_float=False``);
    labels are int64 (N,).  See :func:`locate_dataset` for where the files are looked for.
    """
    if split not in SPLIT_FILES:
        raise InputError(f"split must be one of {sorted(SPLIT_FILES)}, got {split!r}")
    folder = locate_dataset(name, data_dir, download=download)
    paths = [find_file(folder, stem) for stem in SPLIT_FILES[split]]
    mtimes = tuple(p.stat().st_mtime_ns for p in paths if p is not None)
    images, labels = _load_split(str(folder.resolve()), name, split, mtimes)  # type: ignore[arg-type]
    x = torch.from_numpy(images.copy())
    y = torch.from_numpy(labels.astype(np.int64))
    if as_float:
        x = (x.to(torch.float32) / 255.0).unsqueeze(1)
    return x, y


VALIDATION_SIZE = 10000  # the paper's 50k/10k split of the training set


def train_val_split(num_examples: int = 60000, val_size: int = VALIDATION_SIZE, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Seeded disjoint (train, validation) index tensors; the paper's 50k/10k split of the training set."""
    if not 0 < val_size < num_examples:
        raise InputError(f"val_size must be in (0, {num_examples}), got {val_size}")
    perm = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:].sort().values, perm[:val_size].sort().values
