"""Reader for the IDX format of MNIST-like data sets, raw or gzip-compressed, with strict validation."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np


class DatasetError(RuntimeError):
    """A data file or data set that is missing, truncated, corrupt or inconsistent."""


# IDX type codes -> big-endian numpy dtypes
_IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DatasetError(f"{path}: corrupt or truncated gzip stream ({exc})") from None
    return raw


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes; check magic number, dimensions and exact length."""
    if len(data) < 4:
        raise DatasetError(f"{name}: {len(data)} bytes is too short for an IDX header")
    zero, type_code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or type_code not in _IDX_TYPES or ndim == 0:
        raise DatasetError(f"{name}: bad IDX magic number 0x{data[:4].hex()} (not an IDX file)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{name}: truncated IDX header ({len(data)} bytes, {ndim} dimensions declared)")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_TYPES[type_code]
    count = int(np.prod(dims, dtype=np.int64))
    expected = header + count * dtype.itemsize
    if len(data) < expected:
        raise DatasetError(f"{name}: truncated: dimensions {dims} need {expected} bytes, the file has {len(data)}")
    if len(data) > expected:
        raise DatasetError(f"{name}: {len(data) - expected} unexpected trailing bytes after dimensions {dims}")
    array = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) into a native-endian numpy array."""
    path = Path(path)
    return parse_idx(_read_bytes(path), str(path))
