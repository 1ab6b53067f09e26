"""Baselines for the robustness comparison: one-hidden-layer networks trained the usual way.

The paper's discussion compares DAM_n with feed-forward networks whose hidden units are rectified
polynomials of degree n - 1 (the dual network of DAM_n has this activation) and with ReLU networks
(degree 1).  Both take images in [0, 1] shaped (B, 784) or (B, 1, 28, 28) and return logits, like
:class:`dam.model.DenseAssociativeMemory`, and live in the same kind of run folder (safetensors weights,
config.json with ``"kind": "mlp"``, metrics.jsonl, a resumable training state); they are trained by
:func:`dam.training.mlp.train_mlp` through the package's one training loop.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dam.errors import CheckpointError, InputError, check_whole, is_whole, plain_fields
from dam.io import atomic_write_bytes, atomic_write_json, read_json_object
from dam.model import (
    ACCEPTED_NOTE,
    ACCEPTED_PIXELS,
    CONFIG_FILE,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    check_pixel_range,
    check_pixels,
    check_save_folder,
    flatten_images,
)

KIND = "mlp"


@dataclass(frozen=True)
class MLPConfig:
    """Architecture: 784 -> hidden units max(x, 0)^degree -> 10 logits."""

    degree: int = 1  # 1: ReLU; n - 1: the rectified polynomial of DAM_n's dual network
    hidden: int = 2000
    num_pixels: int = 784
    num_classes: int = 10

    def __post_init__(self) -> None:
        names = ("degree", "hidden", "num_pixels", "num_classes")
        plain_fields(self, names)
        if not all(is_whole(getattr(self, k)) for k in names):
            raise InputError(f"invalid MLPConfig {self}: degree, hidden, num_pixels and num_classes are integers")
        if self.degree < 1 or self.hidden < 1 or self.num_pixels < 1 or self.num_classes < 2:
            raise InputError(f"invalid MLPConfig {self}: need degree >= 1, hidden >= 1, num_classes >= 2")

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
        """Logits (B, 10), with the input rule of :meth:`dam.model.DenseAssociativeMemory.scores`: NaN or
        infinite pixels, pixels outside ``ACCEPTED_PIXELS`` = [-10, 10], and logits that overflow to NaN or
        infinity raise InputError (one device sync, after the computation)."""
        flat = flatten_images(images, self.config.num_pixels, None)
        h = F.relu(self.hidden(flat.to(self.hidden.weight.dtype)))
        logits = self.out(h if self.config.degree == 1 else h.pow(self.config.degree))
        if flat.numel():
            lo, hi = torch.aminmax(flat.detach())
            finite = torch.isfinite(logits.detach()).all()
            lo, hi, ok = torch.stack([lo.double(), hi.double(), finite.double()]).tolist()
            check_pixel_range(lo, hi, *ACCEPTED_PIXELS, note=ACCEPTED_NOTE)
            if not ok:
                raise InputError(
                    f"logits overflow to NaN or infinity for pixels in [{lo:.4g}, {hi:.4g}] "
                    f"(degree {self.config.degree})"
                )
        return logits

    def logits(self, images: Tensor) -> Tensor:
        """The logits (the forward pass itself); see :func:`dam.model.as_logits`."""
        return self(images)

    @torch.no_grad()
    def predict(self, images: Tensor, batch_size: int = 2000) -> Tensor:
        batch_size = check_whole("batch_size", batch_size)
        parts = [self(images[i : i + batch_size]).argmax(dim=1) for i in range(0, len(images), batch_size)]
        return torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)

    def check_images(self, images: Tensor) -> None:
        """Raise InputError for NaN/inf pixels or pixels outside [0, 1] (the strict check of real images)."""
        check_pixels(flatten_images(images, self.config.num_pixels, None), 0.0, 1.0, tol=1e-6)

    def save(
        self, folder: str | os.PathLike[str], run_info: dict[str, Any] | None = None, *, overwrite: bool = False
    ) -> Path:
        """``model.safetensors`` and ``config.json`` (with ``run_info``), both written atomically; no pickle.  A
        folder holding a saved model is refused unless ``overwrite`` (as :meth:`DenseAssociativeMemory.save`)."""
        from safetensors.torch import save as st_save

        folder = check_save_folder(folder, overwrite)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        atomic_write_bytes(folder / WEIGHTS_FILE, st_save(tensors, metadata={"format": KIND}))
        config = {**(run_info or {}), "format_version": FORMAT_VERSION, "kind": KIND, "model": asdict(self.config)}
        atomic_write_json(folder / CONFIG_FILE, config)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike[str], *, device: torch.device | str | None = None) -> MLPClassifier:
        """Rebuild a baseline from its run folder, in eval mode on ``device`` (as
        :meth:`dam.model.DenseAssociativeMemory.load`)."""
        from safetensors import SafetensorError

        from dam.environment import resolve_device

        target = resolve_device(device, others=True) if device is not None else None
        from safetensors.torch import load_file

        folder = Path(folder)
        config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        raw = read_json_object(config_path, f"{folder} is not a run folder")
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
        model.eval()
        return model.to(target) if target is not None else model

    def extra_repr(self) -> str:
        return f"degree={self.config.degree}, hidden={self.config.hidden}"
