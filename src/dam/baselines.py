"""Baselines for the robustness comparison: one-hidden-layer networks trained the usual way.

The paper's discussion compares DAM_n with feed-forward networks whose hidden units are rectified
polynomials of degree n - 1 (the dual network of DAM_n has this activation) and with ReLU networks
(degree 1).  Both take images in [0, 1] shaped (B, 784) or (B, 1, 28, 28) and return logits, like
:class:`dam.model.DenseAssociativeMemory`, and live in the same kind of run folder (safetensors weights,
config.json with ``"kind": "mlp"``, metrics.jsonl, a resumable training state).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dam.model import CONFIG_FILE, FORMAT_VERSION, WEIGHTS_FILE, CheckpointError, InputError, flatten_images

KIND = "mlp"


@dataclass(frozen=True)
class MLPConfig:
    """Architecture: 784 -> hidden units max(x, 0)^degree -> 10 logits."""

    degree: int = 1  # 1: ReLU; n - 1: the rectified polynomial of DAM_n's dual network
    hidden: int = 2000
    num_pixels: int = 784
    num_classes: int = 10

    def __post_init__(self) -> None:
        if self.degree < 1 or self.hidden < 1 or self.num_pixels < 1 or self.num_classes < 2:
            raise ValueError(f"invalid MLPConfig {self}: need degree >= 1, hidden >= 1, num_classes >= 2")

    @property
    def name(self) -> str:
        return "mlp-relu" if self.degree == 1 else f"mlp-repu{self.degree}"


class MLPClassifier(nn.Module):
    """One hidden layer of rectified-polynomial units; ``forward`` gives logits for cross-entropy and attacks."""

    def __init__(self, config: MLPConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = config
        self.hidden = nn.Linear(config.num_pixels, config.hidden)
        self.out = nn.Linear(config.hidden, config.num_classes)
        if generator is not None:  # seeded, reproducible initialisation (PyTorch's default scheme)
            for layer in (self.hidden, self.out):
                bound = 1 / layer.in_features**0.5
                with torch.no_grad():
                    layer.weight.uniform_(-bound, bound, generator=generator)
                    layer.bias.uniform_(-bound, bound, generator=generator)

    def forward(self, images: Tensor) -> Tensor:
        x = flatten_images(images, self.config.num_pixels, self.hidden.weight.dtype)
        h = F.relu(self.hidden(x))
        return self.out(h if self.config.degree == 1 else h.pow(self.config.degree))

    @torch.no_grad()
    def predict(self, images: Tensor, batch_size: int = 2000) -> Tensor:
        parts = [self(images[i : i + batch_size]).argmax(dim=1) for i in range(0, len(images), batch_size)]
        return torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)

    def check_images(self, images: Tensor) -> None:
        flat = flatten_images(images, self.config.num_pixels, self.hidden.weight.dtype)
        if not torch.isfinite(flat).all():
            raise InputError("images contain NaN or infinite pixels")
        if float(flat.min()) < -1e-6 or float(flat.max()) > 1 + 1e-6:
            raise InputError(
                f"pixels must lie in [0, 1]; got values in [{float(flat.min()):.4g}, {float(flat.max()):.4g}]"
            )

    def save(self, folder: str | os.PathLike[str], run_info: dict[str, Any] | None = None) -> Path:
        """``model.safetensors`` and ``config.json`` (with ``run_info``), both written atomically; no pickle."""
        from safetensors.torch import save as st_save

        from dam.io import atomic_write_bytes, atomic_write_json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        atomic_write_bytes(folder / WEIGHTS_FILE, st_save(tensors, metadata={"format": KIND}))
        config = {**(run_info or {}), "format_version": FORMAT_VERSION, "kind": KIND, "model": asdict(self.config)}
        atomic_write_json(folder / CONFIG_FILE, config)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike[str], *, device: torch.device | str | None = None) -> MLPClassifier:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(folder)
        config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        try:
            raw = json.loads(config_path.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"{config_path}: missing; {folder} is not a run folder") from None
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{config_path}: not valid JSON ({exc})") from None
        if raw.get("kind") != KIND:
            raise CheckpointError(f"{config_path}: holds a {raw.get('kind', 'dam')!r} model, not an MLP baseline")
        if raw.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(
                f"{config_path}: checkpoint format version {raw.get('format_version')!r}, "
                f"this dam reads version {FORMAT_VERSION}"
            )
        try:
            config = MLPConfig(**raw["model"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{config_path}: invalid model settings ({exc})") from None
        try:
            tensors = load_file(str(weights_path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{weights_path}: missing, corrupt or not a safetensors file ({exc})") from None
        model = cls(config)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in tensors.items()}
        if found != expected:
            raise CheckpointError(f"{weights_path}: tensors {found} do not match config.json, which expects {expected}")
        if not all(torch.isfinite(v).all() for v in tensors.values()):
            raise CheckpointError(f"{weights_path}: weights contain NaN or infinite values")
        model.load_state_dict(tensors)
        return model.to(device) if device is not None else model

    def extra_repr(self) -> str:
        return f"degree={self.config.degree}, hidden={self.config.hidden}"


# -- training ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MLPTrainConfig:
    """Conventional training: cross-entropy, Adam, seeded minibatches."""

    epochs: int = 20
    batch_size: int = 100
    lr: float = 1e-3
    seed: int = 0
    dataset: str = "mnist"
    train_subset: int | None = None
    validation: bool = False
    eval_every: int = 1

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.eval_every < 1:
            raise ValueError(f"invalid MLPTrainConfig {self}")


def _save_state(folder: Path, model: MLPClassifier, optimizer: torch.optim.Optimizer, epoch: int) -> None:
    from safetensors.torch import save as st_save

    from dam.io import atomic_write_bytes

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    state = optimizer.state_dict()
    for index, entry in state["state"].items():
        for key, value in entry.items():
            tensors[f"adam.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    meta = {"epochs_done": str(epoch), "param_groups": json.dumps(state["param_groups"])}
    atomic_write_bytes(folder / "train_state.safetensors", st_save(tensors, metadata=meta))


def _load_state(folder: Path, model: MLPClassifier, optimizer: torch.optim.Optimizer) -> int:
    from safetensors import SafetensorError, safe_open

    path = folder / "train_state.safetensors"
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
        state: dict[int, dict[str, Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("adam."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
        return int(meta["epochs_done"])
    except (SafetensorError, OSError, KeyError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: unreadable training state ({exc}); cannot resume") from None


def train_mlp(
    model_config: MLPConfig,
    train_config: MLPTrainConfig,
    out: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    resume: bool = False,
    progress: bool | None = None,
    stop_after: int | None = None,
) -> MLPClassifier:
    """Train a baseline into run folder ``out`` (resumable after a kill, like :func:`dam.training.train`)."""
    from dam.io import append_jsonl
    from dam.runinfo import environment_info
    from dam.training import (
        as_unit_float,
        epoch_permutation,
        keep_metrics_until,
        prepare_data,
        progress_bar,
        read_run_config,
        run_state_exists,
        training_device,
    )

    device = training_device(device)
    folder = Path(out)
    state_exists = run_state_exists(folder, resume)
    if resume and state_exists:
        saved = read_run_config(folder)
        if saved.get("kind") != KIND:
            raise CheckpointError(f"{folder}: holds a {saved.get('kind', 'dam')!r} run, not an MLP baseline")
        saved_model, saved_train = MLPConfig(**saved["model"]), MLPTrainConfig(**saved["train"])
        if saved_model != model_config or {**asdict(saved_train), "epochs": 0} != {**asdict(train_config), "epochs": 0}:
            raise CheckpointError(f"{folder}: resume with settings that differ from the saved run")
        if data_dir is None and saved.get("data_dir"):
            data_dir = saved["data_dir"]
    model = MLPClassifier(model_config, torch.Generator().manual_seed(train_config.seed)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=train_config.lr)
    start = _load_state(folder, model, optimizer) if resume and state_exists else 0
    data_dir = str(Path(data_dir).resolve()) if data_dir is not None else None
    run_info = {"train": asdict(train_config), "seed": train_config.seed, "device": str(device), "data_dir": data_dir,
                "environment": environment_info()}  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    keep_metrics_until(folder, start)
    model.save(folder, run_info)
    data = prepare_data(train_config, data_dir, device)  # type: ignore[arg-type]  (same data fields)
    end = train_config.epochs if stop_after is None else min(train_config.epochs, stop_after)
    bar = progress_bar(train_config.epochs, start, f"train {model_config.name}", progress)
    try:
        for epoch in range(start, end):
            t0 = time.perf_counter()
            order = epoch_permutation(len(data.train_images), train_config.seed, epoch).to(device)
            total, wrong = torch.zeros((), dtype=torch.float64, device=device), torch.zeros((), device=device)
            for i in range(0, len(order), train_config.batch_size):
                idx = order[i : i + train_config.batch_size]
                x = as_unit_float(data.train_images[idx])
                logits = model(x)
                loss = F.cross_entropy(logits, data.train_labels[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.detach() * len(idx)
                wrong += (logits.detach().argmax(dim=1) != data.train_labels[idx]).sum()
            n = len(order)
            record: dict[str, Any] = {"epoch": epoch + 1, "loss": float(total) / n, "train_error": float(wrong) / n}
            if not math.isfinite(record["loss"]):
                raise FloatingPointError(f"epoch {epoch + 1}: non-finite loss; lower --lr or the degree")
            if (epoch + 1) % train_config.eval_every == 0 or epoch + 1 == train_config.epochs:
                wrong_eval = (model.predict(as_unit_float(data.eval_images)) != data.eval_labels).sum()
                record[f"{data.eval_name}_error"] = float(wrong_eval) / len(data.eval_labels)
            record["seconds"] = time.perf_counter() - t0
            append_jsonl(folder / "metrics.jsonl", record)
            _save_state(folder, model, optimizer, epoch + 1)
            model.save(folder, run_info)
            bar.update(1)
    finally:
        bar.close()
    return model
