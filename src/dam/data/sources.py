"""Where data sets live: their files, checksums, mirrors, and a verified downloader."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from dam.data.idx import DatasetError

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    mirrors: tuple[str, ...]
    md5: dict[str, str]  # canonical gzip checksums of the public files
    sizes: dict[str, int]  # examples per split
    system_dirs: tuple[str, ...] = field(default=())  # read-only copies installed by the OS
    title: str = ""  # how reports name it

    def __post_init__(self) -> None:
        if not self.title:
            object.__setattr__(self, "title", self.name)


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        md5={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        sizes={"train": 60000, "test": 10000},
        title="MNIST",
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        md5={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        sizes={"train": 60000, "test": 10000},
        system_dirs=("/usr/share/datasets/fashion-mnist",),  # Debian package dataset-fashion-mnist
        title="Fashion-MNIST",
    ),
}


def get_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}") from None


def cache_dir() -> Path:
    """The user cache: ``$DAM_CACHE_DIR``, else ``$XDG_CACHE_HOME/dam``, else ``~/.cache/dam``."""
    if os.environ.get("DAM_CACHE_DIR"):
        return Path(os.environ["DAM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dam"


def find_file(folder: Path, stem: str) -> Path | None:
    """``stem.gz`` or raw ``stem`` inside ``folder``."""
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def md5sum(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _mirrors(spec: DatasetSpec) -> tuple[str, ...]:
    env = os.environ.get("DAM_MIRRORS")  # comma-separated base URLs, tried before the built-in ones
    extra = tuple(u.strip() for u in env.split(",") if u.strip()) if env else ()
    return extra + spec.mirrors


def download_file(filename: str, md5: str, dest_dir: Path, mirrors: tuple[str, ...], timeout: float = 30.0) -> Path:
    """Fetch ``filename`` from the first mirror that serves it with the right MD5.

    The bytes go to a temporary file in ``dest_dir`` and are renamed into place only after the checksum
    matches, so an interrupted or corrupt download never leaves a file that looks complete.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / filename
    failures = []
    for base in mirrors:
        url = base.rstrip("/") + "/" + filename
        fd, tmp_name = tempfile.mkstemp(dir=dest_dir, prefix=f".{filename}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                req = urllib.request.Request(url, headers={"User-Agent": "dam-downloader"})
                with urllib.request.urlopen(req, timeout=timeout) as response:
                    for chunk in iter(lambda: response.read(1 << 20), b""):
                        out.write(chunk)
            got = md5sum(tmp)
            if got != md5:
                failures.append(f"{url}: MD5 {got} does not match the expected {md5}")
                continue
            os.replace(tmp, target)
            return target
        except urllib.error.HTTPError as exc:
            failures.append(f"{url}: HTTP {exc.code} {exc.reason}")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            failures.append(f"{url}: {reason}")
        finally:
            tmp.unlink(missing_ok=True)
    raise DatasetError(
        f"could not download {filename} (tried {'; '.join(failures)}). Without network access, put the four IDX "
        "files (.gz or raw) in a folder and pass it as "
        "--data-dir / data_dir=, or set DAM_DATA_DIR to a folder holding a '<dataset>/' subfolder."
    )


def download_dataset(spec: DatasetSpec, dest_dir: Path, mirrors: tuple[str, ...] | None = None) -> Path:
    """Download every missing file of ``spec`` into ``dest_dir`` (verified by MD5)."""
    mirrors = _mirrors(spec) if mirrors is None else mirrors
    for stems in SPLIT_FILES.values():
        for stem in stems:
            if find_file(dest_dir, stem) is None:
                download_file(f"{stem}.gz", spec.md5[f"{stem}.gz"], dest_dir, mirrors)
    return dest_dir
