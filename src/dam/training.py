"""The authors' training algorithm (NIPS 2016, Appendix A) with resumable run folders.

Per minibatch: loss C = sum_examples sum_alpha (Y_alpha - t_alpha)^(2m), then

    V  <- p V - dC/dxi                           momentum on the negative gradient
    xi <- xi + eps * V_mu / max_J |V_mu,J|      every memory moves by exactly eps at its largest entry
    xi <- clip(xi, -1, 1)

with eps = eps0 * f^epoch and T constant or ramped linearly from T_i to T_f over the first epochs.

A run folder holds ``config.json`` (model and training settings, seed, versions), ``model.safetensors``,
``metrics.jsonl`` (one line per finished epoch) and ``train_state.safetensors`` (weights, momentum and
epoch in one atomic file).  ``train(..., resume=True)`` continues from the last finished epoch and ends
with the same weights as an uninterrupted run: shuffling is derived from (seed, epoch), not from a
generator whose state would have to be saved.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dam.data import load_dataset, train_val_split
from dam.io import append_jsonl, atomic_write_bytes, atomic_write_json, read_jsonl
from dam.model import CONFIG_FILE, FORMAT_VERSION, CheckpointError, DenseAssociativeMemory, FusedKernel
from dam.runinfo import environment_info

STATE_FILE = "train_state.safetensors"
METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run.  Presets in :mod:`dam.presets` fill these in."""

    n: int = 3
    m: int = 3
    num_memories: int = 2000
    temperature_start: float = 400.0  # T_i
    temperature_end: float = 70.0  # T_f; equal to T_i for a constant temperature
    ramp_epochs: int = 200  # T goes linearly from T_i to T_f over these epochs, then holds
    epochs: int = 300
    batch_size: int = 1000
    lr: float = 0.04  # eps0
    lr_decay: float = 0.998  # f: eps = eps0 * f^epoch
    momentum: float = 0.6  # p
    init_mean: float = -0.3
    init_std: float = 0.3
    seed: int = 0
    dataset: str = "mnist"
    train_subset: int | None = None  # first N examples of a seeded permutation of the training set
    validation: bool = False  # hold out 10k of the 60k training images and report error on them
    eval_every: int = 1
    dtype: str = "float32"

    def __post_init__(self) -> None:
        checks = {
            "n >= 2": self.n >= 2,
            "m >= 1": self.m >= 1,
            "num_memories >= 1": self.num_memories >= 1,
            "temperatures > 0": self.temperature_start > 0 and self.temperature_end > 0,
            "ramp_epochs >= 0": self.ramp_epochs >= 0,
            "epochs >= 1": self.epochs >= 1,
            "batch_size >= 1": self.batch_size >= 1,
            "lr > 0": self.lr > 0,
            "0 < lr_decay <= 1": 0 < self.lr_decay <= 1,
            "0 <= momentum < 1": 0 <= self.momentum < 1,
            "init_std >= 0": self.init_std >= 0,
            "train_subset >= 1": self.train_subset is None or self.train_subset >= 1,
            "eval_every >= 1": self.eval_every >= 1,
            "dtype is float32 or float64": self.dtype in ("float32", "float64"),
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid training settings: {', '.join(bad)} violated ({self})")

    def temperature_at(self, epoch: int) -> float:
        """T for a 0-based epoch: linear from T_i to T_f over ``ramp_epochs``, then T_f."""
        if self.ramp_epochs == 0 or epoch >= self.ramp_epochs:
            return self.temperature_end
        frac = epoch / self.ramp_epochs
        return self.temperature_start + (self.temperature_end - self.temperature_start) * frac

    def lr_at(self, epoch: int) -> float:
        return self.lr * self.lr_decay**epoch

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown training settings {sorted(unknown)}")
        return cls(**data)


def dam_loss(outputs: Tensor, labels: Tensor, m: int) -> Tensor:
    """Eq. (3): sum over examples and classes of (Y - t)^(2m), t = +1 for the true class, -1 else."""
    target = torch.full_like(outputs, -1.0)
    target.scatter_(1, labels[:, None], 1.0)
    return (outputs - target).pow(2 * m).sum()


def _update_step(
    memories: Tensor, grad: Tensor, velocity: Tensor, lr: Tensor, momentum: Tensor
) -> tuple[Tensor, Tensor]:
    new_velocity = velocity * momentum - grad
    # A memory with no gradient at all (never active) has max |V| = 0: leave it where it is.
    scale = new_velocity.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(velocity.dtype).tiny)
    return (memories + new_velocity / scale * lr).clamp(-1.0, 1.0), new_velocity


_UPDATE = FusedKernel(_update_step)


@torch.no_grad()
def update_memories(memories: Tensor, grad: Tensor, velocity: Tensor, lr: float, momentum: float) -> None:
    """One step of the authors' rule, in place: momentum, per-memory max-normalisation, clip.

    Fused into one kernel like the model's; lr and momentum travel as 0-dim tensors so that the
    decaying learning rate does not trigger recompiles.
    """
    new_memories, new_velocity = _UPDATE(
        memories, grad, velocity, torch.tensor(lr, dtype=memories.dtype, device=memories.device),
        torch.tensor(momentum, dtype=memories.dtype, device=memories.device),
    )  # fmt: skip
    # (inductor of torch 2.13 fails on in-place updates of inputs here, hence the copies)
    velocity.copy_(new_velocity)
    memories.copy_(new_memories)


@torch.no_grad()
def error_rate(model: DenseAssociativeMemory, images: Tensor, labels: Tensor, batch_size: int = 2000) -> float:
    """Fraction of misclassified examples; ``images`` uint8 (B, 28, 28) or float in [0, 1]."""
    wrong = 0
    for i in range(0, len(images), batch_size):
        x = as_unit_float(images[i : i + batch_size], model.memories.dtype)
        wrong += int((model.scores(x).argmax(dim=1) != labels[i : i + batch_size]).sum())
    return wrong / max(len(images), 1)


def as_unit_float(images: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 images -> floats in [0, 1]; floating images pass through."""
    if images.dtype == torch.uint8:
        return images.to(dtype) / 255.0
    return images.to(dtype)


@dataclass
class TrainData:
    train_images: Tensor
    train_labels: Tensor
    eval_images: Tensor
    eval_labels: Tensor
    eval_name: str  # "test" or "validation"


def prepare_data(config: TrainConfig, data_dir: str | os.PathLike[str] | None, device: torch.device) -> TrainData:
    images, labels = load_dataset(config.dataset, "train", data_dir=data_dir)
    if config.validation:
        train_idx, val_idx = train_val_split(len(images), seed=config.seed)
        eval_images, eval_labels, eval_name = images[val_idx], labels[val_idx], "validation"
        images, labels = images[train_idx], labels[train_idx]
    else:
        eval_images, eval_labels = load_dataset(config.dataset, "test", data_dir=data_dir)
        eval_name = "test"
    if config.train_subset is not None and config.train_subset < len(images):
        g = torch.Generator().manual_seed(config.seed)
        keep = torch.randperm(len(images), generator=g)[: config.train_subset]
        images, labels = images[keep], labels[keep]
    return TrainData(
        images.reshape(len(images), -1).to(device),
        labels.to(device),
        eval_images.reshape(len(eval_images), -1).to(device),
        eval_labels.to(device),
        eval_name,
    )


def epoch_permutation(num: int, seed: int, epoch: int) -> Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 1)
    return torch.randperm(num, generator=g)


def minibatch_step(
    model: DenseAssociativeMemory, velocity: Tensor, x: Tensor, y: Tensor, m: int, lr: float, momentum: float
) -> tuple[Tensor, Tensor]:
    """One step of the authors' rule on one minibatch (images ``x`` in [0, 1]); returns the loss and the
    outputs from before the step, detached.  Shared with adversarial fine-tuning."""
    model.memories.grad = None
    out = model(x)
    loss = dam_loss(out, y, m)
    loss.backward()
    update_memories(model.memories.data, model.memories.grad, velocity, lr, momentum)
    model.memories.grad = None
    return loss.detach(), out.detach()


def train_one_epoch(
    model: DenseAssociativeMemory,
    velocity: Tensor,
    images: Tensor,
    labels: Tensor,
    config: TrainConfig,
    epoch: int,
) -> dict[str, float]:
    """One pass over the data in seeded minibatches; returns loss and running train error."""
    model.temperature = config.temperature_at(epoch)
    lr = config.lr_at(epoch)
    order = epoch_permutation(len(images), config.seed, epoch).to(images.device)
    # accumulated on the device: no host sync per minibatch on a GPU
    total_loss = torch.zeros((), dtype=torch.float64, device=images.device)
    wrong = torch.zeros((), dtype=torch.long, device=images.device)
    for start in range(0, len(images), config.batch_size):
        idx = order[start : start + config.batch_size]
        y = labels[idx]
        loss, out = minibatch_step(model, velocity, as_unit_float(images[idx], model.memories.dtype), y,
                                   config.m, lr, config.momentum)  # fmt: skip
        total_loss += loss
        wrong += (out.argmax(dim=1) != y).sum()
    return {
        "loss": float(total_loss) / len(images),
        "train_error": int(wrong) / len(images),
        "lr": lr,
        "temperature": model.temperature,
    }


# -- run folders ---------------------------------------------------------------------------------


def save_train_state(folder: Path, model: DenseAssociativeMemory, velocity: Tensor, epoch: int) -> None:
    from safetensors.torch import save as st_save

    tensors = {"memories": model.memories.detach().cpu().contiguous(), "velocity": velocity.cpu().contiguous()}
    meta = {"epochs_done": str(epoch), "temperature": repr(model.temperature), "format_version": str(FORMAT_VERSION)}
    atomic_write_bytes(folder / STATE_FILE, st_save(tensors, metadata=meta))


def load_train_state(folder: Path) -> tuple[Tensor, Tensor, int]:
    from safetensors import SafetensorError, safe_open

    path = folder / STATE_FILE
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            memories, velocity = f.get_tensor("memories"), f.get_tensor("velocity")
        return memories, velocity, int(meta["epochs_done"])
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable training state ({exc}); cannot resume") from None


def run_config_record(
    config: TrainConfig, model: DenseAssociativeMemory, device: torch.device, data_dir: str | None
) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "kind": "dam",
        "model": asdict(model.config),
        "train": asdict(config),
        "seed": config.seed,
        "device": str(device),
        "data_dir": data_dir,
        "environment": environment_info(),
    }


def read_run_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(folder) / CONFIG_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; {folder} is not a dam run folder") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None


def finished_epochs(folder: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(epochs done, epochs planned) of a run folder, or None when it holds no resumable training run."""
    folder = Path(folder)
    if not (folder / STATE_FILE).exists() or not (folder / CONFIG_FILE).exists():
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(folder / STATE_FILE), framework="pt") as f:
            done = int((f.metadata() or {})["epochs_done"])
        planned = int(read_run_config(folder)["train"]["epochs"])
    except (SafetensorError, OSError, KeyError, ValueError, TypeError, CheckpointError):
        return None
    return done, planned


def training_device(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} requested but torch.cuda.is_available() is False on this machine")
    return device


def run_state_exists(folder: Path, resume: bool) -> bool:
    """Whether ``folder`` holds a resumable run; one that does is only touched with ``resume``."""
    exists = (folder / STATE_FILE).exists()
    if exists and not resume:
        raise FileExistsError(f"{folder} already holds a training run; pass resume=True (--resume) or a new --out")
    return exists


def keep_metrics_until(folder: Path, epoch: int) -> None:
    """Drop metric lines past ``epoch`` (an epoch a kill interrupted after logging it is replayed)."""
    records = [r for r in read_jsonl(folder / METRICS_FILE) if r.get("epoch", 0) <= epoch]
    atomic_write_bytes(folder / METRICS_FILE, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode())


def progress_bar(total: int, initial: int, desc: str, enabled: bool | None) -> Any:
    from tqdm.auto import tqdm

    disable = not sys.stderr.isatty() if enabled is None else not enabled
    return tqdm(total=total, initial=initial, desc=desc, unit="epoch", disable=disable, dynamic_ncols=True)


def train(
    config: TrainConfig | None,
    out: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    resume: bool = False,
    progress: bool | None = None,
    stop_after: int | None = None,
    log: Callable[[str], None] | None = None,
) -> DenseAssociativeMemory:
    """Train DAM_n per ``config`` into run folder ``out`` and return the model.

    ``resume=True`` continues a run folder from its last finished epoch with its saved settings;
    ``config`` may then be None, or equal to the saved one but for ``epochs`` (to extend a run).
    ``stop_after`` ends after that many epochs in total, as a kill would, leaving a resumable folder.
    ``progress=None`` shows a bar only on a terminal.
    """
    device = training_device(device)
    folder = Path(out)
    state_exists = run_state_exists(folder, resume)
    if resume and state_exists:
        saved_run = read_run_config(folder)
        if "adversarial" in saved_run:  # plain training would drop the fine-tuning's settings and state
            raise CheckpointError(
                f"{folder}: holds an adversarial fine-tuning; continue it with dam adversarial-train "
                f"{saved_run.get('base_run', 'BASE_RUN')} --out {folder} --resume"
            )
        if data_dir is None and saved_run.get("data_dir") and Path(saved_run["data_dir"]).is_dir():
            data_dir = saved_run["data_dir"]  # resume reads the data the run started with
        try:
            saved = TrainConfig.from_dict(saved_run["train"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{folder / CONFIG_FILE}: no valid training settings ({exc})") from None
        if config is not None and replace(config, epochs=saved.epochs) != saved:
            diff = {k: (v, getattr(config, k)) for k, v in asdict(saved).items() if getattr(config, k) != v}
            raise CheckpointError(
                f"{folder}: resume with settings that differ from the saved run (saved, given): {diff}"
            )
        config = saved if config is None else replace(saved, epochs=config.epochs)
    if config is None:
        raise ValueError(f"no training settings given and no run to resume in {folder}")
    dtype = getattr(torch, config.dtype)
    generator = torch.Generator().manual_seed(config.seed)
    model = DenseAssociativeMemory(
        config.n,
        config.num_memories,
        config.temperature_at(0),
        init_mean=config.init_mean,
        init_std=config.init_std,
        generator=generator,
        dtype=dtype,
    ).to(device)
    velocity = torch.zeros_like(model.memories.data)
    start_epoch = 0
    if resume and state_exists:
        memories, saved_velocity, start_epoch = load_train_state(folder)
        if memories.shape != model.memories.shape:
            raise CheckpointError(
                f"{folder / STATE_FILE}: weights of shape {tuple(memories.shape)} do not match config"
            )
        with torch.no_grad():
            model.memories.copy_(memories.to(device, dtype))
            velocity.copy_(saved_velocity.to(device, dtype))
        model.temperature = config.temperature_at(max(start_epoch - 1, 0))
    folder.mkdir(parents=True, exist_ok=True)
    keep_metrics_until(folder, start_epoch)
    data_dir = str(Path(data_dir).resolve()) if data_dir is not None else None
    atomic_write_json(folder / CONFIG_FILE, run_config_record(config, model, device, data_dir))

    data = prepare_data(config, data_dir, device)
    end_epoch = config.epochs if stop_after is None else min(config.epochs, stop_after)
    bar = progress_bar(config.epochs, start_epoch, f"train n={config.n}", progress)
    try:
        for epoch in range(start_epoch, end_epoch):
            t0 = time.perf_counter()
            stats = train_one_epoch(model, velocity, data.train_images, data.train_labels, config, epoch)
            record: dict[str, Any] = {"epoch": epoch + 1, **stats, "train_seconds": time.perf_counter() - t0}
            if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
                record[f"{data.eval_name}_error"] = error_rate(model, data.eval_images, data.eval_labels)
            record["seconds"] = time.perf_counter() - t0
            if not all(math.isfinite(v) for v in stats.values()):
                raise FloatingPointError(f"epoch {epoch + 1}: non-finite training statistics {stats}")
            # Metrics first, then the state: a kill in between replays the epoch, whose line is then
            # dropped and rewritten, rather than losing it.
            append_jsonl(folder / METRICS_FILE, record)
            save_train_state(folder, model, velocity, epoch + 1)
            model.save(folder, run_config_record(config, model, device, data_dir))
            bar.update(1)
            shown = {k: record[k] for k in ("loss", "train_error", f"{data.eval_name}_error") if k in record}
            bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()})
            if log is not None:
                log(json.dumps(record))
    finally:
        bar.close()
    if start_epoch >= end_epoch:  # nothing left to do: make sure the model files match the state
        model.save(folder, run_config_record(config, model, device, data_dir))
    return model
