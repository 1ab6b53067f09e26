"""Small IDX files and fake MNIST folders for tests, written independently of dam's reader."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np


def idx_bytes(array: np.ndarray) -> bytes:
    assert array.dtype == np.uint8
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_split(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, arr in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
        data = idx_bytes(arr)
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data, compresslevel=1))
        else:
            (folder / stem).write_bytes(data)


def fake_mnist(folder: Path, train: int = 60000, test: int = 10000, gz: bool = True, seed: int = 0) -> None:
    """A folder with MNIST's layout and sizes but random content."""
    rng = np.random.default_rng(seed)
    for prefix, num in (("train", train), ("t10k", test)):
        # Mostly blank images compress fast; a few random pixels keep them distinct.
        images = np.zeros((num, 28, 28), dtype=np.uint8)
        images[:, 14, :] = rng.integers(0, 256, size=(num, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=num, dtype=np.uint8)
        write_split(folder, prefix, images, labels, gz=gz)


def tiny_mnist(folder: Path, seed: int = 0) -> Path:
    """60000/10000 examples are required by the validator; most of them are blank."""
    rng = np.random.default_rng(seed)
    for prefix, num in (("train", 60000), ("t10k", 10000)):
        labels = rng.integers(0, 10, size=num, dtype=np.uint8)
        images = np.zeros((num, 28, 28), dtype=np.uint8)
        # a learnable signal: a bright bar whose row is the label
        images[np.arange(num), 3 + 2 * labels, :] = 255
        images[:, 0, :] = rng.integers(0, 256, size=(num, 28), dtype=np.uint8)
        write_split(folder, prefix, images, labels)
    return folder
