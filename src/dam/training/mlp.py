"""Conventional training of the MLP baselines (cross-entropy, Adam, seeded minibatches) through the
package's one training loop, into the same kind of resumable run folder as a DAM."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dam.baselines import KIND, MLPClassifier, MLPConfig
from dam.environment import resolve_device
from dam.errors import CheckpointError, ConfigError, is_finite_number, is_whole, plain_fields
from dam.model import CONFIG_FILE
from dam.runs import OutputFolder, read_run_config
from dam.training.loop import (
    RunPlan,
    TrainData,
    as_unit_float,
    check_new_run,
    check_settings_type,
    check_train_subset,
    epoch_permutation,
    fit,
    prepare_data,
    resolved_data_dir,
    restore_trainer,
    resumed_settings,
    run_record,
    settings_from,
)


@dataclass(frozen=True)
class MLPTrainConfig:
    """Conventional training of the MLP baselines: cross-entropy, Adam at learning rate ``lr``, seeded minibatches
    of ``batch_size``; ``train_subset``, ``validation``, ``eval_every``, ``seed`` and ``dataset`` as in
    :class:`dam.training.TrainConfig`.  NumPy scalars are taken as Python numbers."""

    epochs: int = 20
    batch_size: int = 100
    lr: float = 1e-3
    seed: int = 0
    dataset: str = "mnist"
    train_subset: int | None = None
    validation: bool = False
    eval_every: int = 1

    def __post_init__(self) -> None:
        plain_fields(self, ("epochs", "batch_size", "seed", "eval_every", "train_subset", "lr"))
        whole = [k for k in ("epochs", "batch_size", "seed", "eval_every") if not is_whole(getattr(self, k))]
        if whole or not (self.train_subset is None or is_whole(self.train_subset)):
            raise ConfigError(f"MLP training settings {', '.join(whole) or 'train_subset'} must be integers")
        if not is_finite_number(self.lr) or not isinstance(self.validation, bool) or not 0 <= self.seed < 2**63:
            raise ConfigError(f"invalid MLP training settings {self}: need a finite lr, validation True or False and "
                              "0 <= seed < 2**63")  # fmt: skip
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0 or self.eval_every < 1:
            raise ConfigError(f"invalid MLP training settings {self}: need epochs, batch_size, eval_every >= 1, lr > 0")
        if self.train_subset is not None and self.train_subset < 1:
            raise ConfigError(f"train_subset must be >= 1, got {self.train_subset}")
        check_train_subset(self.dataset, self.train_subset, self.validation)


class MLPTrainer:
    """Cross-entropy and Adam as a :class:`~dam.training.loop.Trainer`: the weights and Adam's moments."""

    def __init__(self, model: MLPClassifier, config: MLPTrainConfig) -> None:
        self.model = model
        self.config = config
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)

    def train_epoch(self, epoch: int, data: TrainData) -> dict[str, Any]:
        model, optimizer, config = self.model, self.optimizer, self.config
        device = data.train_images.device
        order = epoch_permutation(len(data.train_images), config.seed, epoch).to(device)
        total, wrong = torch.zeros((), dtype=torch.float64, device=device), torch.zeros((), device=device)
        for i in range(0, len(order), config.batch_size):
            idx = order[i : i + config.batch_size]
            logits = model(as_unit_float(data.train_images[idx]))
            loss = F.cross_entropy(logits, data.train_labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(idx)
            wrong += (logits.detach().argmax(dim=1) != data.train_labels[idx]).sum()
        return {"loss": float(total) / len(order), "train_error": float(wrong) / len(order)}

    def state(self) -> tuple[dict[str, Tensor], dict[str, str]]:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        state = self.optimizer.state_dict()
        for index, entry in state["state"].items():
            for key, value in entry.items():
                tensors[f"adam.{index}.{key}"] = torch.as_tensor(value)
        return tensors, {"param_groups": json.dumps(state["param_groups"])}

    def load_state(self, tensors: dict[str, Tensor], meta: dict[str, str], where: Path) -> None:
        try:
            self.model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
            state: dict[int, dict[str, Tensor]] = {}
            for key, value in tensors.items():
                if key.startswith("adam."):
                    _, index, name = key.split(".", 2)
                    state.setdefault(int(index), {})[name] = value
            self.optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
        except (KeyError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{where}: unreadable training state ({exc}); cannot resume") from None

    def save_model(self, folder: Path, run_info: dict[str, Any]) -> None:
        self.model.save(folder, run_info, overwrite=True)  # the run's own folder, locked by the loop


def train_mlp(
    model_config: MLPConfig,
    train_config: MLPTrainConfig | None,
    out: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    resume: bool = False,
    force: bool = False,
    progress: bool | None = None,
    stop_after: int | None = None,
    log: Callable[[str], None] | None = None,
) -> MLPClassifier:
    """Train a baseline into run folder ``out``; resuming and overwrite rules as :func:`dam.training.train`.

    On resume the saved settings rule: ``model_config`` must equal the saved one and ``train_config`` may
    differ only in ``epochs`` (or be None)."""
    check_settings_type(model_config, MLPConfig, "model_config", optional=False)
    check_settings_type(train_config, MLPTrainConfig, "training settings")
    device = resolve_device(device)
    folder = Path(out)
    if train_config is None and resume and OutputFolder(folder).unstarted_run():  # started again, as recorded
        saved = read_run_config(folder)
        if saved.get("kind") == KIND:
            train_config = settings_from(MLPTrainConfig, saved.get("train"), str(folder / CONFIG_FILE))
    check_new_run(train_config, folder, resume=resume, force=force)
    with OutputFolder(folder, "run folder").writing(resume=resume, force=force) as resuming:
        if resuming:
            saved = read_run_config(folder)
            if saved.get("kind") != KIND:
                raise CheckpointError(f"{folder}: holds a {saved.get('kind', 'dam')!r} run, not an MLP baseline")
            where = str(folder / CONFIG_FILE)
            saved_model = settings_from(MLPConfig, saved.get("model"), where)
            if saved_model != model_config:
                differ = {k: (v, getattr(model_config, k)) for k, v in asdict(saved_model).items()
                          if v != getattr(model_config, k)}  # fmt: skip
                raise CheckpointError(f"{folder}: resume with a model that differs from the saved run (saved, given): "
                                      f"{differ}")  # fmt: skip
            train_config = resumed_settings(settings_from(MLPTrainConfig, saved.get("train"), where), train_config,
                                            folder)  # fmt: skip
        if train_config is None:
            raise ConfigError(f"no training settings given and no run to resume in {folder}")
        data_dir = resolved_data_dir(data_dir, folder, resuming)
        data = prepare_data(train_config.dataset, train_config.seed, train_config.train_subset,
                            train_config.validation, data_dir, device)  # fmt: skip
        model = MLPClassifier(model_config, torch.Generator().manual_seed(train_config.seed)).to(device)
        trainer = MLPTrainer(model, train_config)
        start = restore_trainer(trainer, folder) if resuming else 0
        run_info = run_record(KIND, asdict(model_config), train_config, device, data_dir, data)
        plan = RunPlan(folder, train_config.epochs, train_config.eval_every, f"train {model_config.name}")
        fit(trainer, plan, run_info, data, start_epoch=start, stop_after=stop_after, progress=progress, log=log)
    return model
