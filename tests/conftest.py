from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# Small test models run faster in eager PyTorch than it takes to compile the fused kernel; the tests that
# exercise the compiled path switch it back on themselves.
os.environ.setdefault("DAM_COMPILE", "0")


def _mnist_dir() -> Path | None:
    root = os.environ.get("DAM_DATA_DIR")
    if root and (Path(root) / "mnist").is_dir():
        return Path(root) / "mnist"
    return None


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST folder from $DAM_DATA_DIR; CI must have it, so there a missing copy fails."""
    folder = _mnist_dir()
    if folder is None:
        message = "MNIST not found: set DAM_DATA_DIR to a folder holding mnist/ (CI sets it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return folder


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the user's cache, and no test downloads from the real mirrors."""
    monkeypatch.setenv("DAM_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("DAM_MIRRORS", "")
    from dataclasses import replace

    import dam.data.sources as sources

    unreachable = {k: replace(v, mirrors=("http://127.0.0.1:9/",), system_dirs=()) for k, v in sources.DATASETS.items()}
    monkeypatch.setattr(sources, "DATASETS", unreachable)


@pytest.fixture(scope="session")
def tiny_reproduction(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ``dam reproduce`` of tiny models on real MNIST, shared by the reproduction and report tests."""
    from dam.experiments.reproduce import reproduce
    from fakes import TINY_REPRODUCTION

    out = tmp_path_factory.mktemp("reproduction")
    # First as a user without the time for the stages past the paper: --paper-only, whose folder is kept as it
    # stood (PAPER_ONLY_COPY beside it); then the same command without it, in the same folder, adds them.  (The
    # stages are the same code either way, so one whole run from an empty folder is not repeated here.)
    reproduce(
        TINY_REPRODUCTION, out, data_dir=mnist_dir, progress=False, check=False, log=lambda line: None, paper_only=True
    )
    shutil.copytree(out, out.parent / PAPER_ONLY_COPY)
    reproduce(TINY_REPRODUCTION, out, data_dir=mnist_dir, progress=False, check=False, log=lambda line: None)
    return out


PAPER_ONLY_COPY = "paper-only-copy"


@pytest.fixture(scope="session")
def tiny_paper_only(tiny_reproduction: Path) -> Path:
    """The tiny reproduction's folder as ``reproduce(..., paper_only=True)`` left it (read only)."""
    return tiny_reproduction.parent / PAPER_ONLY_COPY
