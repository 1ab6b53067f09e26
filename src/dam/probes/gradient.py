"""The objective C^alpha of eq. (4) and the fixed-length unit-gradient step of eq. (5), in spin space.

Searches work on v in the paper's [-1, 1] pixel space and call the model on x = (v + 1) / 2, so any
classifier that takes images in [0, 1] and returns outputs Y in [-1, 1] can be probed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dam.errors import InputError, plain_number
from dam.model import flatten_images
from dam.training.rule import dam_loss_terms, target_outputs


def class_objective(outputs: Tensor, targets: Tensor, m: int) -> Tensor:
    """C^alpha = sum_gamma (Y_gamma - t^(alpha)_gamma)^(2m) per example, t = +1 at alpha, -1 elsewhere: the
    training loss (3) of one image labelled alpha."""
    return dam_loss_terms(outputs, targets, m).sum(dim=1)


def output_distance(outputs: Tensor, targets: Tensor) -> Tensor:
    """max_gamma |Y_gamma - t^(alpha)_gamma| per example: how far the outputs are from a perfect answer alpha."""
    return (outputs - target_outputs(outputs, targets)).abs().amax(dim=1)


def outputs_of_spins(model: nn.Module, v: Tensor) -> Tensor:
    return model((v + 1.0) / 2.0)


def objective_and_gradient(model: nn.Module, v: Tensor, targets: Tensor, m: int) -> tuple[Tensor, Tensor, Tensor]:
    """(outputs Y, C^target, dC^target/dv) for a batch of spin images v (B, 784)."""
    v = v.detach().requires_grad_(True)
    with torch.enable_grad():
        y = outputs_of_spins(model, v)
        c = class_objective(y, targets, m)
        (grad,) = torch.autograd.grad(c.sum(), v)
    return y.detach(), c.detach(), grad


def unit_step(v: Tensor, grad: Tensor, eps: float, clip: bool) -> tuple[Tensor, Tensor]:
    """v - eps * grad / ||grad|| per row; returns (new v, usable mask).

    Rows whose gradient is zero or not finite cannot move: they are returned unchanged and flagged, so
    that a stalled search is reported as such rather than mistaken for a robust image.
    """
    norm = grad.norm(dim=1, keepdim=True)
    usable = torch.isfinite(norm[:, 0]) & (norm[:, 0] > 0) & torch.isfinite(grad).all(dim=1)
    step = torch.where(usable[:, None], grad / norm.clamp_min(torch.finfo(grad.dtype).tiny), torch.zeros_like(grad))
    new = v - eps * step
    if clip:
        new = new.clamp(-1.0, 1.0)
    return new, usable


def objective_power(model: nn.Module, m: int | None) -> int:
    """The m of a search's objective C = sum (Y - t)^(2m): the one given, else the loss power the model was
    trained with (``model.loss_power``, set by training and by loading a run folder); never a default."""
    if m is None and not hasattr(model, "loss_power"):
        raise InputError(
            f"the searches need a DAM (outputs Y in [-1, 1] and a training m); got a {type(model).__name__}"
        )
    if m is None:
        m = model.loss_power
    m = plain_number(m)
    if m is None:
        raise InputError("this DAM does not record its training loss power m (neither trained nor loaded from a run "
                         "folder): give m=")  # fmt: skip
    if not isinstance(m, int) or m < 1:
        raise InputError(f"m must be an integer >= 1, got {m!r}")
    return m


def search_settings(search: object) -> dict[str, object]:
    """A search's hyperparameters as JSON-ready values (what a result's reuse key records)."""
    settings = {k: v for k, v in vars(search).items() if k not in ("model", "progress")}
    settings["dtype"] = str(settings.get("dtype"))
    return settings


def check_search_dtype(dtype: torch.dtype | None) -> torch.dtype | None:
    """A search's dtype: None (the model's own) or a floating torch dtype (a name like "float64" is refused in one
    line, not deep in ``.to()``)."""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise InputError(f"dtype must be a floating torch dtype (torch.float32, torch.float64) or None, got {dtype!r}")
    return dtype


def check_search_images(images: Tensor, model: nn.Module) -> Tensor:
    """Images to search from, flat (N, pixels of ``model``), at least one; InputError names what else was given."""
    config = getattr(model, "config", None)
    flat = flatten_images(images, getattr(config, "num_pixels", 784), None)
    if not len(flat):
        raise InputError("no images to search from")
    return flat


def as_probe_model(model: nn.Module, dtype: torch.dtype | None) -> nn.Module:
    """The model in the dtype the search should run in (float64 avoids float32 underflow at n = m = 30)."""
    if dtype is None or next(model.parameters()).dtype == dtype:
        return model
    import copy

    return copy.deepcopy(model).to(dtype)


class NoProgress:
    """Flags searches whose objective has not improved by a relative ``rel`` for ``patience`` steps."""

    def __init__(self, n: int, patience: int, device: torch.device, rel: float = 1e-4) -> None:
        self.patience, self.rel = patience, rel
        self.best = torch.full((n,), float("inf"), dtype=torch.float64, device=device)
        self.best_step = torch.zeros(n, dtype=torch.long, device=device)
        self.stuck = torch.zeros(n, dtype=torch.bool, device=device)

    def update(self, active: Tensor, objective: Tensor, step: int) -> Tensor:
        """Record this step's objectives of the ``active`` images; return which of them are stuck."""
        c = objective.double()
        better = c < self.best[active] * (1 - self.rel)
        self.best[active] = torch.where(better, c, self.best[active])
        self.best_step[active] = torch.where(better, torch.full_like(self.best_step[active], step),
                                             self.best_step[active])  # fmt: skip
        stuck = (step - self.best_step[active]) >= self.patience
        self.stuck[active[stuck]] = True
        return stuck
