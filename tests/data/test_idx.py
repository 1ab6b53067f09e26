from __future__ import annotations

import gzip

import numpy as np
import pytest

from dam.data import DatasetError, parse_idx, read_idx
from fakes import idx_bytes


def test_reads_raw_and_gzip(tmp_path) -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(idx_bytes(arr))
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(arr)))
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), arr)


def test_big_endian_int32() -> None:
    data = bytes([0, 0, 0x0C, 1, 0, 0, 0, 2]) + (7).to_bytes(4, "big") + (-3).to_bytes(4, "big", signed=True)
    np.testing.assert_array_equal(parse_idx(data), [7, -3])


@pytest.mark.parametrize(
    "mangle, message",
    [
        (lambda b: b[:-10], "truncated"),
        (lambda b: b[:10], "truncated"),
        (lambda b: b + b"xx", "trailing"),
        (lambda b: b"\x01\x02" + b[2:], "magic"),
        (lambda b: b[:2] + b"\x07" + b[3:], "magic"),
        (lambda b: b[:2], "too short"),
    ],
)
def test_bad_files_name_file_and_problem(tmp_path, mangle, message: str) -> None:
    good = idx_bytes(np.zeros((3, 28, 28), dtype=np.uint8))
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(mangle(good))
    with pytest.raises(DatasetError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_corrupt_gzip(tmp_path) -> None:
    data = gzip.compress(idx_bytes(np.zeros((50, 28, 28), dtype=np.uint8)))
    path = tmp_path / "x.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="gzip"):
        read_idx(path)


def test_missing_file(tmp_path) -> None:
    with pytest.raises(DatasetError, match="cannot read"):
        read_idx(tmp_path / "absent.gz")
