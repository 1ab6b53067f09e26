"""Reader for the IDX format of MNIST-like data sets, raw or gzip-compressed, with strict validation.

A file is read as a stream: first the header, whose dimensions are checked against the file's size
before anything else is read or allocated, then at most one byte more than the dimensions need.  So a
header that claims 2^31 images, or a small ``.gz`` that inflates to gigabytes, is refused with a message
naming the file instead of filling the memory.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from dam.errors import DatasetError

# IDX type codes -> big-endian numpy dtypes
_IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# Deflate cannot compress better than about 1032 : 1, so a gzip file of S bytes inflates to at most about
# 1032 S bytes; dimensions that need more are refused before anything is inflated beyond the header.
_MAX_GZIP_RATIO = 1100
_CHUNK = 1 << 20


class _Header:
    """Type and dimensions of an IDX file, and the byte counts they imply."""

    def __init__(self, magic: bytes, dim_bytes: bytes) -> None:
        self.dtype = _IDX_TYPES[magic[2]]
        self.dims = tuple(int.from_bytes(dim_bytes[4 * i : 4 * i + 4], "big") for i in range(magic[3]))
        self.size = 4 + len(dim_bytes)
        count = 1
        for d in self.dims:  # Python integers: no overflow however large the dimensions
            count *= d
        self.count = count
        self.expected = self.size + count * self.dtype.itemsize


def _check_magic(magic: bytes, name: str) -> None:
    if len(magic) < 4:
        raise DatasetError(f"{name}: {len(magic)} bytes is too short for an IDX header")
    if int.from_bytes(magic[:2], "big") != 0 or magic[2] not in _IDX_TYPES or magic[3] == 0:
        raise DatasetError(f"{name}: bad IDX magic number 0x{magic[:4].hex()} (not an IDX file)")


def _truncated_header(name: str, got: int, ndim: int) -> DatasetError:
    return DatasetError(f"{name}: truncated IDX header ({got} bytes, {ndim} dimensions declared)")


def _length_error(name: str, header: _Header, got: int, *, exact: bool = True) -> DatasetError:
    """``got`` bytes where the dimensions need ``header.expected``; ``exact=False``: at least ``got``."""
    if got < header.expected:
        return DatasetError(
            f"{name}: truncated: dimensions {header.dims} need {header.expected} bytes, the file has {got}"
        )
    extra = f"{got - header.expected} unexpected trailing bytes" if exact else "unexpected trailing bytes"
    return DatasetError(f"{name}: {extra} after dimensions {header.dims} (which need {header.expected} bytes)")


def _to_array(data: bytes | bytearray, header: _Header, offset: int) -> np.ndarray:
    array = np.frombuffer(data, dtype=header.dtype, count=header.count, offset=offset).reshape(header.dims)
    return array.astype(header.dtype.newbyteorder("="), copy=True)


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes; check magic number, dimensions and exact length."""
    _check_magic(data[:4], name)
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise _truncated_header(name, len(data), ndim)
    header = _Header(data[:4], data[4 : 4 + 4 * ndim])
    if len(data) != header.expected:
        raise _length_error(name, header, len(data))
    return _to_array(data, header, header.size)


def _read_up_to(stream: BinaryIO, limit: int) -> bytearray:
    """At most ``limit`` bytes, in chunks: memory grows with the bytes that really arrive, not with ``limit``."""
    out = bytearray()
    while len(out) < limit:
        chunk = stream.read(min(_CHUNK, limit - len(out)))
        if not chunk:
            break
        out += chunk
    return out


def _read_stream(stream: BinaryIO, name: str, file_size: int, compressed: bool) -> np.ndarray:
    magic = _read_up_to(stream, 4)
    _check_magic(bytes(magic), name)
    ndim = magic[3]
    dim_bytes = _read_up_to(stream, 4 * ndim)
    if len(dim_bytes) < 4 * ndim:
        raise _truncated_header(name, 4 + len(dim_bytes), ndim)
    header = _Header(bytes(magic), bytes(dim_bytes))
    # Checked against the size on disk before the data are read (or inflated) and before any allocation.
    if compressed and header.expected > _MAX_GZIP_RATIO * file_size + 1024:
        raise DatasetError(
            f"{name}: IDX dimensions {header.dims} need {header.expected} bytes, "
            f"more than a {file_size}-byte gzip file can hold (corrupt header?)"
        )
    if not compressed and header.expected != file_size:
        raise _length_error(name, header, file_size)
    body = _read_up_to(stream, header.expected - header.size + 1)  # one byte more: detects trailing data
    got = header.size + len(body)
    if got != header.expected:
        raise _length_error(name, header, got, exact=False)
    return _to_array(body, header, 0)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw, told apart by its first bytes) into a native-endian numpy array."""
    path = Path(path)
    name = str(path)
    try:
        with open(path, "rb") as f:
            file_size = os.fstat(f.fileno()).st_size
            compressed = f.read(2) == b"\x1f\x8b"  # gzip magic, whatever the file is called
            f.seek(0)
            if not compressed:
                return _read_stream(f, name, file_size, compressed=False)
            try:
                with gzip.GzipFile(fileobj=f, mode="rb") as stream:
                    return _read_stream(stream, name, file_size, compressed=True)
            except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
                raise DatasetError(f"{name}: corrupt or truncated gzip stream ({exc})") from None
    except DatasetError:
        raise
    except OSError as exc:
        raise DatasetError(f"{name}: cannot read ({exc.strerror or exc})") from None
