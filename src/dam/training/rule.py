"""The authors' training algorithm for DAM_n (NIPS 2016, Appendix A; docs/training.md).

Per minibatch: loss C = sum_examples sum_alpha (Y_alpha - t_alpha)^(2m), then

    V  <- p V - dC/dxi                           momentum on the negative gradient
    xi <- xi + eps * V_mu / max_J |V_mu,J|      every memory moves by exactly eps at its largest entry
    xi <- clip(xi, -1, 1)

with eps = eps0 * f^epoch and T constant or ramped linearly from T_i to T_f over the first epochs.
:func:`dam.training.train` runs it through the package's one training loop (:func:`dam.training.loop.fit`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dam.errors import CheckpointError, ConfigError, is_finite_number, is_whole, plain_fields, violated
from dam.model import CONFIG_FILE, DenseAssociativeMemory, FusedKernel
from dam.runs import read_run_config, resume_flags
from dam.training.loop import (
    Run,
    RunPlan,
    TrainData,
    as_unit_float,
    check_train_subset,
    epoch_permutation,
    restore_trainer,
    resumed_settings,
    run_record,
    settings_from,
)


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run of the authors' algorithm (docs/training.md); :func:`dam.training.preset`
    fills them in by name.  NumPy scalars are taken as Python numbers.

    - ``n``: power of the rectified polynomial F_n (the model's interaction order); ``m``: power of the loss
      sum (Y - t)^(2m) (eq. 3); ``num_memories``: K, the number of memories.
    - ``temperature_start``, ``temperature_end``: T_i and T_f, in units of the energy gap (the argument of F_n is
      h / T, with h up to 794 in size); T goes linearly from T_i to T_f over ``ramp_epochs`` epochs, then holds.
    - ``epochs``, ``batch_size``: passes over the training images, and images per update.
    - ``lr``: eps0, the exact distance the largest entry of each memory's update moves per minibatch (the rule
      normalises each memory's update by its largest entry; not an optimiser's step size); ``lr_decay``: f, with
      eps = eps0 * f^epoch; ``momentum``: p in V <- p V - dC/dxi.
    - ``init_mean``, ``init_std``: the memories start N(init_mean, init_std) (clipped to [-1, 1] by training).
    - ``seed``: initialisation, minibatch order and any subset; ``dataset``: "mnist" or "fashion-mnist";
      ``train_subset``: train on the first N of a seeded permutation (None: all); ``validation``: hold out 10k
      of the 60k training images and report error on them; ``eval_every``: test every this many epochs;
      ``dtype``: "float32" or "float64".
    """

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
        # types first: an integer setting given as 1.5, or a NaN, would train (or fail after the folder is written)
        whole = ("n", "m", "num_memories", "ramp_epochs", "epochs", "batch_size", "seed", "eval_every")
        real = ("temperature_start", "temperature_end", "lr", "lr_decay", "momentum", "init_mean", "init_std")
        plain_fields(self, (*whole, *real, "train_subset"))
        types = {
            **{f"{k} is an integer": is_whole(getattr(self, k)) for k in whole},
            "train_subset is an integer or None": self.train_subset is None or is_whole(self.train_subset),
            **{f"{k} is a finite number": is_finite_number(getattr(self, k)) for k in real},
            "validation is True or False": isinstance(self.validation, bool),
            "dataset is a name": isinstance(self.dataset, str),
        }
        bad = [k for k, ok in types.items() if not ok]
        if bad:
            raise ConfigError(violated("training settings", bad, self))
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
            "0 <= seed < 2**63": 0 <= self.seed < 2**63,
            "dtype is float32 or float64": self.dtype in ("float32", "float64"),
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(violated("training settings", bad, self))
        check_train_subset(self.dataset, self.train_subset, self.validation)

    def temperature_at(self, epoch: int) -> float:
        """T for a 0-based epoch: linear from T_i to T_f over ``ramp_epochs``, then T_f."""
        if self.ramp_epochs == 0 or epoch >= self.ramp_epochs:
            return self.temperature_end
        frac = epoch / self.ramp_epochs
        return self.temperature_start + (self.temperature_end - self.temperature_start) * frac

    def lr_at(self, epoch: int) -> float:
        """eps for a 0-based epoch: eps0 * f^epoch."""
        return self.lr * self.lr_decay**epoch

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """The settings a run folder's config.json records; ConfigError for unknown or invalid ones."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown training settings {sorted(unknown)}")
        return cls(**data)


def dam_loss(outputs: Tensor, labels: Tensor, m: int) -> Tensor:
    """Eq. (3): sum over examples and classes of (Y - t)^(2m), t = +1 for the true class, -1 else."""
    return dam_loss_terms(outputs, labels, m).sum()


def target_outputs(outputs: Tensor, labels: Tensor) -> Tensor:
    """The target t of each example, shaped like ``outputs`` (..., B, 10): +1 at its label, -1 elsewhere."""
    return torch.full_like(outputs, -1.0).scatter_(-1, labels[..., None], 1.0)


def dam_loss_terms(outputs: Tensor, labels: Tensor, m: int) -> Tensor:
    """The terms (Y - t)^(2m) of eq. (3), one per example and class: outputs (..., B, 10), labels (..., B).
    Stacked training sums them per model."""
    return (outputs - target_outputs(outputs, labels)).pow(2 * m)


def _update_step(
    memories: Tensor, grad: Tensor, velocity: Tensor, lr: Tensor, momentum: Tensor
) -> tuple[Tensor, Tensor]:
    new_velocity = velocity * momentum - grad
    # A memory with no gradient at all (never active) has max |V| = 0: leave it where it is.
    scale = new_velocity.abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(velocity.dtype).tiny)
    return (memories + new_velocity / scale * lr).clamp(-1.0, 1.0), new_velocity


_UPDATE = FusedKernel(_update_step)


@torch.no_grad()
def update_memories(
    memories: Tensor, grad: Tensor, velocity: Tensor, lr: float | Tensor, momentum: float | Tensor
) -> None:
    """One step of the authors' rule, in place: momentum, per-memory max-normalisation, clip.

    Memories are (K, 794), or (G, K, 794) for G models trained together, with ``lr`` and ``momentum``
    then shaped (G, 1, 1), one per model.  Fused into one kernel like the model's; lr and momentum travel as
    tensors so that the decaying learning rate does not trigger recompiles.
    """
    new_memories, new_velocity = _UPDATE(
        memories, grad, velocity, torch.as_tensor(lr, dtype=memories.dtype, device=memories.device),
        torch.as_tensor(momentum, dtype=memories.dtype, device=memories.device),
    )  # fmt: skip
    # (inductor of torch 2.13 fails on in-place updates of inputs here, hence the copies)
    velocity.copy_(new_velocity)
    memories.copy_(new_memories)


def minibatch_step(
    model: DenseAssociativeMemory, velocity: Tensor, x: Tensor, y: Tensor, m: int, lr: float, momentum: float
) -> tuple[Tensor, Tensor]:
    """One step of the authors' rule on one minibatch (images ``x`` in [0, 1]); returns the loss and the
    outputs from before the step, detached."""
    model.memories.grad = None
    out = model(x)
    loss = dam_loss(out, y, m)
    loss.backward()
    update_memories(model.memories.data, model.memories.grad, velocity, lr, momentum)
    model.memories.grad = None
    return loss.detach(), out.detach()


class DAMTrainer:
    """The authors' rule as a :class:`~dam.training.loop.Trainer`: the weights and the momentum V."""

    def __init__(self, model: DenseAssociativeMemory, config: TrainConfig) -> None:
        self.model = model
        self.config = config
        self.velocity = torch.zeros_like(model.memories.data)

    def train_epoch(self, epoch: int, data: TrainData) -> dict[str, Any]:
        """One pass over the data in seeded minibatches; returns loss and running train error."""
        config, model = self.config, self.model
        images, labels = data.train_images, data.train_labels
        model.temperature = config.temperature_at(epoch)
        lr = config.lr_at(epoch)
        order = epoch_permutation(len(images), config.seed, epoch).to(images.device)
        # accumulated on the device: no host sync per minibatch on a GPU
        total_loss = torch.zeros((), dtype=torch.float64, device=images.device)
        wrong = torch.zeros((), dtype=torch.long, device=images.device)
        for start in range(0, len(images), config.batch_size):
            idx = order[start : start + config.batch_size]
            y = labels[idx]
            x = as_unit_float(images[idx], model.memories.dtype)
            loss, out = minibatch_step(model, self.velocity, x, y, config.m, lr, config.momentum)
            total_loss += loss
            wrong += (out.argmax(dim=1) != y).sum()
        return {
            "loss": float(total_loss) / len(images),
            "train_error": int(wrong) / len(images),
            "lr": lr,
            "temperature": model.temperature,
        }

    def state(self) -> tuple[dict[str, Tensor], dict[str, str]]:
        return {"memories": self.model.memories, "velocity": self.velocity}, {
            "temperature": repr(self.model.temperature)
        }

    def load_state(self, tensors: dict[str, Tensor], meta: dict[str, str], where: Path) -> None:
        memories, velocity = tensors.get("memories"), tensors.get("velocity")
        if memories is None or velocity is None or memories.shape != self.model.memories.shape:
            found = None if memories is None else tuple(memories.shape)
            raise CheckpointError(f"{where}: training state holds weights of shape {found}, the settings "
                                  f"{tuple(self.model.memories.shape)}")  # fmt: skip
        with torch.no_grad():
            self.model.memories.copy_(memories.to(self.model.memories.device, self.model.memories.dtype))
            self.velocity.copy_(velocity.to(self.velocity.device, self.velocity.dtype))

    def save_model(self, folder: Path, run_info: dict[str, Any]) -> None:
        self.model.save(folder, run_info, overwrite=True)  # the run's own folder, locked by the loop


def new_model(config: TrainConfig, device: torch.device) -> DenseAssociativeMemory:
    """The seeded initial DAM of a run: xi ~ N(init_mean, init_std) clipped to [-1, 1]."""
    generator = torch.Generator().manual_seed(config.seed)
    model = DenseAssociativeMemory(config.n, config.num_memories, config.temperature_at(0),
                                   init_mean=config.init_mean, init_std=config.init_std, generator=generator,
                                   dtype=getattr(torch, config.dtype))  # fmt: skip
    model.loss_power = config.m
    return model.to(device)


def restart_settings(folder: Path, config: TrainConfig | None, resume: bool) -> TrainConfig | None:
    """``config``, or, to resume a run killed before its first epoch was saved (no state to resume: it starts
    again, :meth:`dam.runs.OutputFolder.unstarted_run`) with no settings given, the ones its record names."""
    from dam.runs import OutputFolder

    if not resume or not OutputFolder(folder).unstarted_run():
        return config
    saved = read_run_config(folder)
    if saved.get("kind", "dam") != "dam":  # never a baseline's record started again as a DAM
        raise CheckpointError(f"{folder}: holds a {saved.get('kind')!r} run; resume it with {resume_flags(saved)}")
    if config is not None or "adversarial" in saved:
        return config
    return settings_from(TrainConfig, saved.get("train"), str(folder / CONFIG_FILE))


def run_settings(folder: Path, config: TrainConfig | None, resuming: bool) -> TrainConfig:
    """The settings a DAM run folder trains with: ``config`` for a new run; for a resumed one the saved
    settings, which ``config`` (or None) may change only in ``epochs``."""
    if resuming:
        saved_run = read_run_config(folder)
        if "adversarial" in saved_run:  # plain training would drop the fine-tuning's settings and state
            raise CheckpointError(
                f"{folder}: holds an adversarial fine-tuning; continue it with dam adversarial-train "
                f"{saved_run.get('base_run', 'BASE_RUN')} --out {folder} --resume"
            )
        if saved_run.get("kind", "dam") != "dam":
            raise CheckpointError(
                f"{folder}: holds a {saved_run.get('kind')!r} run; resume it with {resume_flags(saved_run)}"
            )
        saved = settings_from(TrainConfig, saved_run.get("train"), str(folder / CONFIG_FILE))
        config = resumed_settings(saved, config, folder)
    if config is None:
        raise ConfigError(f"no training settings given and no run to resume in {folder}")
    return config  # (a new run's minibatch was checked before the folder was touched: loop.check_new_run)


def start_trainer(config: TrainConfig, folder: Path, resuming: bool, device: torch.device) -> tuple[DAMTrainer, int]:
    """The trainer of a run and the epoch it starts from: the seeded initial model at epoch 0, or, resuming,
    the weights and momentum of the folder's last finished epoch."""
    trainer = DAMTrainer(new_model(config, device), config)
    if not resuming:
        return trainer, 0
    start_epoch = restore_trainer(trainer, folder)
    trainer.model.temperature = config.temperature_at(max(start_epoch - 1, 0))
    return trainer, start_epoch


def dam_run(
    config: TrainConfig, folder: Path, trainer: DAMTrainer, start_epoch: int, data: TrainData,
    device: torch.device, data_dir: str | None,
) -> Run:  # fmt: skip
    """A DAM run folder as the training loop takes it (:class:`dam.training.loop.Run`)."""
    run_info = run_record("dam", asdict(trainer.model.config), config, device, data_dir, data)
    plan = RunPlan(folder, config.epochs, config.eval_every, f"train n={config.n}")
    return Run(trainer, plan, run_info, data, start_epoch)
