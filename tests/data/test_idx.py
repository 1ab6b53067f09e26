from __future__ import annotations

import gzip
import struct
import tracemalloc

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


@pytest.mark.parametrize(
    "dims",
    [(2**31, 28, 28), (2**32 - 1, 2**32 - 1, 2**32 - 1), (0xFFFFFFFF,), (10, 28, 28)],
)
@pytest.mark.parametrize("gz", [False, True])
def test_huge_dimensions_are_refused_by_size_naming_the_file(tmp_path, dims, gz: bool) -> None:
    """A header whose dimensions the file cannot hold fails fast, before the data are read or allocated."""
    header = struct.pack(">HBB", 0, 0x08, len(dims)) + struct.pack(f">{len(dims)}I", *dims)
    data = header + bytes(100)
    path = tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(data) if gz else data)
    tracemalloc.start()  # numpy reports its buffers to tracemalloc: nothing of the declared size is allocated
    try:
        with pytest.raises(DatasetError) as info:
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert str(dims) in message
    with pytest.raises(DatasetError, match="truncated"):
        parse_idx(data, "x")


def test_many_dimensions_and_short_headers(tmp_path) -> None:
    path = tmp_path / "a"
    path.write_bytes(struct.pack(">HBB", 0, 0x08, 255) + bytes(40))  # 255 dimensions declared, 10 present
    with pytest.raises(DatasetError, match="truncated IDX header") as info:
        read_idx(path)
    assert str(path) in str(info.value)
    path.write_bytes(struct.pack(">HBB", 0, 0x08, 255) + b"\xff" * (4 * 255))  # 255 dims of 2^32 - 1
    with pytest.raises(DatasetError, match="truncated") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def _gzip_bomb(path, header: bytes, zeros: int) -> None:
    """``header`` followed by ``zeros`` zero bytes, compressed as a stream (never all in memory)."""
    chunk = bytes(1 << 20)
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(header)
        for _ in range(zeros // len(chunk)):
            f.write(chunk)


def test_gzip_bomb_is_refused_without_inflating_it(tmp_path, monkeypatch) -> None:
    """A valid header claiming 10 images of 28 x 28, then 300 MB of zeros: small on disk, refused after
    inflating at most the declared length plus a little, naming the file."""
    path = tmp_path / "train-images-idx3-ubyte.gz"
    _gzip_bomb(path, struct.pack(">HBB3I", 0, 0x08, 3, 10, 28, 28), 300 << 20)
    assert path.stat().st_size < 1 << 20
    inflated = []
    real_read = gzip.GzipFile.read

    def counting_read(self, size=-1):
        data = real_read(self, size)
        inflated.append(len(data))
        return data

    monkeypatch.setattr(gzip.GzipFile, "read", counting_read)
    with pytest.raises(DatasetError, match="trailing") as info:
        read_idx(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert sum(inflated) <= 16 + 10 * 28 * 28 + 1
    assert all(size >= 0 for size in inflated)


def test_gzip_whose_header_claims_more_than_it_can_inflate_to(tmp_path) -> None:
    """The declared length is checked against the compressed size (deflate inflates at most ~1032x)."""
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(struct.pack(">HBB3I", 0, 0x08, 3, 60000, 28, 28) + bytes(1000)))
    with pytest.raises(DatasetError, match=r"more than a .*-byte gzip file can hold") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_gzip_shorter_than_its_dimensions(tmp_path) -> None:
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((50, 28, 28), dtype=np.uint8))[:-5]))
    with pytest.raises(
        DatasetError, match=r"truncated: dimensions \(50, 28, 28\) need 39216 bytes, the file has 39211"
    ):
        read_idx(path)


def test_highly_compressible_real_sized_file_reads(tmp_path) -> None:
    """All-zero images compress about 1000 : 1; the size check must still accept them."""
    arr = np.zeros((2000, 28, 28), dtype=np.uint8)
    path = tmp_path / "zeros.gz"
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(idx_bytes(arr))
    assert path.stat().st_size * 500 < arr.nbytes
    np.testing.assert_array_equal(read_idx(path), arr)
