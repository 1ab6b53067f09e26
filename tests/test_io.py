"""Atomic writes: permissions from the umask, and write failures as one-line RunFolderErrors; config reads
as one-line CheckpointErrors."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

import dam.io
from dam.errors import CheckpointError, RunFolderError
from dam.io import (
    append_jsonl,
    atomic_write_bytes,
    atomic_write_json,
    current_umask,
    read_json_object,
    read_jsonl,
)


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_get_the_umask_permissions(tmp_path: Path, umask, mask: int, expected: int) -> None:
    umask(mask)
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    atomic_write_json(tmp_path / "b.json", {"k": 1})
    append_jsonl(tmp_path / "c.jsonl", {"k": 1})
    for name in ("a.bin", "b.json", "c.jsonl"):
        assert mode(tmp_path / name) == expected, name
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")  # what a normal open() gives under the same umask
    assert mode(plain) == expected


def test_umask_fallback_without_proc_restores_the_umask(umask, monkeypatch) -> None:
    umask(0o027)
    real_open = open

    def no_proc(file, *args, **kwargs):
        if str(file).startswith("/proc/"):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", no_proc)
    dam.io.umask_by_setting.cache_clear()
    try:
        assert current_umask() == 0o027
        assert os.umask(0o027) == 0o027  # left as it was
    finally:
        dam.io.umask_by_setting.cache_clear()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def read_only_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


def test_read_only_folder_gives_run_folder_error(tmp_path: Path) -> None:
    folder = read_only_dir(tmp_path)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as root: chmod does not make a folder read-only (see the ENOSPC tests)")
        for write in (lambda p: atomic_write_bytes(p, b"x"), lambda p: append_jsonl(p, {"k": 1})):
            with pytest.raises(RunFolderError, match="Permission denied") as info:
                write(folder / "out.json")
            assert str(folder / "out.json") in str(info.value) and "\n" not in str(info.value)
            assert isinstance(info.value.__cause__, PermissionError)
        assert leftovers(folder) == []
    finally:
        folder.chmod(0o755)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
@pytest.mark.parametrize("where", ["write", "replace"])
def test_failed_atomic_write_names_the_file_and_removes_the_temp_file(tmp_path: Path, monkeypatch, code, where) -> None:
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old")

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    if where == "replace":
        monkeypatch.setattr(dam.io.os, "replace", fail)
    else:
        monkeypatch.setattr(dam.io.os, "fsync", fail)  # a full disk surfaces on write, flush or fsync
    with pytest.raises(RunFolderError) as info:
        atomic_write_bytes(target, b"new" * 1000)
    message = str(info.value)
    assert message == f"{target}: cannot write ({os.strerror(code)})"
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == code
    assert leftovers(tmp_path) == []
    assert target.read_bytes() == b"old"  # the old file is untouched


def test_temp_file_cannot_be_created(tmp_path: Path, monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(dam.io.tempfile, "mkstemp", fail)
    with pytest.raises(RunFolderError, match="Read-only file system"):
        atomic_write_json(tmp_path / "config.json", {})


def test_append_jsonl_full_disk_cuts_the_torn_line_off(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, {"epoch": 1})
    before = path.read_bytes()
    real_write = os.write

    def half_then_full(fd, data):  # the disk fills in the middle of the line
        if len(data) > 4:
            return real_write(fd, bytes(data[:4]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(dam.io.os, "write", half_then_full)
    with pytest.raises(RunFolderError, match="No space left on device") as info:
        append_jsonl(path, {"epoch": 2, "loss": 0.5})
    assert str(path) in str(info.value)
    assert info.value.__cause__.errno == errno.ENOSPC
    monkeypatch.undo()
    assert path.read_bytes() == before
    append_jsonl(path, {"epoch": 2})
    assert read_jsonl(path) == [{"epoch": 1}, {"epoch": 2}]


def test_append_jsonl_to_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(RunFolderError, match="No such file or directory"):
        append_jsonl(tmp_path / "absent" / "metrics.jsonl", {"k": 1})


def test_read_json_object_names_each_problem(tmp_path: Path):
    path = tmp_path / "config.json"
    with pytest.raises(CheckpointError, match="missing; not a run folder"):
        read_json_object(path, "not a run folder")
    for text, problem in (("{", "not valid JSON"), ("[1, 2]", "not a JSON object"), (b"\xff", "not valid JSON")):
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(CheckpointError, match=problem):
            read_json_object(path, "not a run folder")
    atomic_write_json(path, {"kind": "dam"})
    assert read_json_object(path, "") == {"kind": "dam"}


def _strict(text: str):
    import json

    def refuse(token: str):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def test_json_files_hold_null_where_a_number_does_not_exist(tmp_path: Path) -> None:
    """A NaN or an infinity (the mean of no values) is written as null: strict readers accept the file."""
    nan, inf = float("nan"), float("inf")
    atomic_write_json(tmp_path / "a.json", {"mean": nan, "bins": [0.5, nan, -inf], "nested": {"x": (inf, 1.0)}})
    assert _strict((tmp_path / "a.json").read_text()) == {"bins": [0.5, None, None], "mean": None,
                                                           "nested": {"x": [None, 1.0]}}  # fmt: skip
    append_jsonl(tmp_path / "m.jsonl", {"epoch": 1, "loss": nan})
    assert _strict((tmp_path / "m.jsonl").read_text()) == {"epoch": 1, "loss": None}
