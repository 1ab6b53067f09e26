"""The downloader against a real HTTP server on 127.0.0.1 serving good, corrupt and missing files."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import dam.data.sources as sources
from dam.data import DatasetError, download_file, load_dataset
from fakes import fake_mnist


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    handler = lambda *a, **kw: _Quiet(*a, directory=str(root), **kw)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()
        httpd.server_close()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_good_file_is_verified_and_renamed(server, tmp_path) -> None:
    url, root = server
    (root / "good").mkdir()
    payload = gzip.compress(b"hello")
    (root / "good" / "f.gz").write_bytes(payload)
    dest = tmp_path / "dest"
    path = download_file("f.gz", _md5(payload), dest, (f"{url}/good/",))
    assert path == dest / "f.gz" and path.read_bytes() == payload
    assert [p.name for p in dest.iterdir()] == ["f.gz"]  # no temporary file left behind


def test_corrupt_then_missing_then_good_mirror(server, tmp_path) -> None:
    url, root = server
    payload = gzip.compress(b"the real bytes")
    (root / "bad").mkdir()
    (root / "bad" / "f.gz").write_bytes(payload[:-3] + b"xyz")
    (root / "good").mkdir()
    (root / "good" / "f.gz").write_bytes(payload)
    dest = tmp_path / "dest"
    mirrors = (f"{url}/bad/", f"{url}/missing/", f"{url}/good/")
    assert download_file("f.gz", _md5(payload), dest, mirrors).read_bytes() == payload


def test_all_mirrors_fail_lists_urls_and_advice(server, tmp_path) -> None:
    url, root = server
    (root / "bad").mkdir()
    (root / "bad" / "f.gz").write_bytes(b"garbage")
    dest = tmp_path / "dest"
    with pytest.raises(DatasetError) as info:
        download_file("f.gz", "0" * 32, dest, (f"{url}/bad/", f"{url}/missing/", "http://127.0.0.1:9/"))
    text = str(info.value)
    assert f"{url}/bad/f.gz: MD5" in text
    assert f"{url}/missing/f.gz: HTTP 404" in text
    assert "http://127.0.0.1:9/f.gz" in text
    assert "--data-dir" in text and "DAM_DATA_DIR" in text
    assert not dest.exists() or not any(dest.iterdir()), "a failed download must leave no file behind"


def test_load_dataset_downloads_into_cache(server, tmp_path, monkeypatch) -> None:
    url, root = server
    fake_mnist(root / "mnist", train=60000, test=10000)
    md5 = {p.name: _md5(p.read_bytes()) for p in (root / "mnist").iterdir()}
    spec = sources.DatasetSpec("mnist", (f"{url}/nothing-here/", f"{url}/mnist/"), md5, {"train": 60000, "test": 10000})
    monkeypatch.setattr(sources, "DATASETS", {"mnist": spec})
    monkeypatch.delenv("DAM_DATA_DIR", raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv("DAM_CACHE_DIR", str(cache))
    x, _y = load_dataset("mnist", "test")
    assert x.shape == (10000, 1, 28, 28)
    assert sorted(p.name for p in (cache / "mnist").iterdir()) == sorted(md5)
    # Second call: served from the cache even with the server gone.
    monkeypatch.setattr(
        sources, "DATASETS", {"mnist": sources.DatasetSpec("mnist", ("http://127.0.0.1:9/",), md5, spec.sizes)}
    )
    x2, _ = load_dataset("mnist", "test")
    np.testing.assert_array_equal(x.numpy(), x2.numpy())


def test_offline_error_is_clear(monkeypatch) -> None:
    monkeypatch.delenv("DAM_DATA_DIR", raising=False)
    with pytest.raises(DatasetError, match="could not download"):
        load_dataset("mnist", "test")
