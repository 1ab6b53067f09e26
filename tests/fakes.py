"""Small IDX files and fake MNIST folders for tests, written independently of dam's reader."""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def need(module: str, extra: str) -> None:
    """Tests of an extra's code need the extra; CI installs every extra, so there a missing one fails, elsewhere
    the test skips."""
    try:
        __import__(module)
    except ImportError:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f'{module} missing: pip install -e ".[{extra}]" (scripts/test.sh installs it)')
        pytest.skip(f"{module} not installed (extra `{extra}`)")


def need_foolbox() -> None:
    """The attack tests' extra (Foolbox and the AutoAttack reference code)."""
    need("foolbox", "attacks")
    need("pyautoattack", "attacks")


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


def moved_copy(run: Path, dest: Path) -> Path:
    """A copy of the DAM run folder ``run`` at ``dest`` whose weights are other (halved), with the same record: a
    base model that looks like ``run`` by its settings but is not it."""
    import json
    import shutil

    import torch

    from dam.model import DenseAssociativeMemory

    shutil.copytree(run, dest)
    with torch.no_grad():
        moved = DenseAssociativeMemory.load(dest)
        moved.memories.mul_(0.5)
    moved.save(dest, json.loads((dest / "config.json").read_text()), overwrite=True)
    return dest


def prototype_model(n: int = 3, temperature: float | None = None, per_class: int = 3, seed: int = 0):
    """A hand-built DAM: memories are random +-1 patterns, each voting +1 for its class and -1 for the rest.

    With ``temperature=None`` T is chosen so that the largest score on noisy copies of the memories is
    about 2: the outputs then use tanh's curved range rather than saturating.
    """
    import math

    import torch

    from dam.model import DenseAssociativeMemory

    g = torch.Generator().manual_seed(seed)
    k = 10 * per_class
    model = DenseAssociativeMemory(n, k, 100.0 if temperature is None else temperature)
    with torch.no_grad():
        # Memories share a common background and differ in 40% of their pixels, as digits do: every
        # class's memories stay active near every image, so gradients lead from one class to another.
        base = torch.where(torch.rand(784, generator=g) < 0.5, 1.0, -1.0)
        own = torch.where(torch.rand(k, 784, generator=g) < 0.5, 1.0, -1.0)
        visible = torch.where(torch.rand(k, 784, generator=g) < 0.4, own, base)
        label = -torch.ones(k, 10)
        label[torch.arange(k), torch.arange(k) % 10] = 1.0
        model.memories.copy_(torch.cat([visible, label], dim=1))
        if temperature is None:
            x, _ = prototype_images(model, 3 * k)
            best = min(
                (abs(math.log(float(model.scores(x).abs().max()) / 2.0)), t)
                for t in torch.logspace(math.log10(20), math.log10(2000), 80).tolist()
                if not setattr(model, "temperature", t)
            )
            model.temperature = best[1]
    return model


def prototype_images(model, count: int = 20, noise: float = 0.15, seed: int = 1):
    """Noisy copies of the model's memories in [0, 1], with the memories' classes as labels."""
    import torch

    g = torch.Generator().manual_seed(seed)
    idx = torch.arange(count) % model.num_memories
    x = (model.visible_memories.detach()[idx] + 1) / 2
    x = (x + noise * torch.randn(x.shape, generator=g)).clamp(0, 1)
    return x, idx % 10


def _tiny_reproduction():
    from dam.experiments.reproduce import ReproducePreset

    return ReproducePreset(
        "tiny",
        "quick",
        images=60,
        per_class=2,
        description="tiny models for tests",
        train_overrides={"num_memories": 40, "epochs": 3, "train_subset": 5000},
        search_options={"max_steps": 25},
        baselines={"mlp-relu": {"degree": 1, "hidden": 16, "epochs": 1, "train_subset": 2000}},
        substitutes=("n30",),
        limits={"clean_error": "40 memories trained for 3 epochs on 5,000 images <tiny>"},
        attacks={
            "images": 16,
            "linf": [0.1, 0.3],
            "l2": [1.0, 3.0],
            "pgd_steps": 3,
            "hsj_steps": 2,
            "hsj_max_evals": 20,
            "aa_steps": 5,
            "aa_fab": False,
            "square_queries": 20,
        },
        attack_workers=2,  # the stage through worker processes, as the quick preset runs it
        detector={
            "images": 200,
            "noise": 50,
            "attack_images": 20,
            "adaptive_eps": [0.3],
            "adaptive_images": 10,
            "adaptive_steps": 3,
            "adaptive_targets": 2,
        },
        adversarial={"models": ["n2"], "epochs": 1, "train_subset": 300, "max_steps": 25, "eval_images": 20},
    )


TINY_REPRODUCTION = _tiny_reproduction()


# -- the command line, as a user runs it -------------------------------------------------------------


def dam(
    *args: str, timeout: float = 120, cwd: str | os.PathLike[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m dam ARGS`` in a subprocess (eager kernels: compiling would cost each test process seconds)."""
    env = {**os.environ, "DAM_COMPILE": "0"}
    return subprocess.run([sys.executable, "-m", "dam", *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=cwd)  # fmt: skip


def succeeded(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stderr
    return result


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The error a user sees: exit status 2, no traceback, one line."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("usage:")]
    assert len(lines) == 1 or (len(lines) >= 1 and lines[-1].startswith("dam")), result.stderr
    return lines[-1]
