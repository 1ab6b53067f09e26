"""Rubbish images (Fig. 3, eq. 4-5): from Gaussian noise, descend C^alpha by fixed-length unit steps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dam.errors import InputError, check_positive, check_whole, is_finite_number, plain_number
from dam.model import check_class_indices
from dam.probes.gradient import (
    NoProgress,
    as_probe_model,
    check_search_dtype,
    objective_and_gradient,
    objective_power,
    output_distance,
    search_settings,
    unit_step,
)
from dam.progress import progress_bar


@dataclass
class RubbishResult:
    """Per image: the result, its target class, and how the search went.

    ``images`` are in the model's input space [0, 1] (outside it only with ``clip=False``).
    ``objective[i, k]`` is C^target after k steps (NaN once image i stopped).
    """

    images: Tensor
    start: Tensor  # the noise each search started from, in the same space as ``images``
    targets: Tensor
    objective: Tensor
    steps: Tensor
    converged: Tensor  # every output came within ``output_tol`` of its target: the minimum of C^target
    stalled: Tensor  # stopped on a zero or non-finite gradient: a failure of the search, not robustness
    stuck: Tensor  # stopped because C^target made no progress for ``patience`` steps (a local minimum)
    predictions: Tensor

    @property
    def success(self) -> Tensor:
        return self.converged & (self.predictions == self.targets)


class RubbishSearch:
    """Eq. (5): v <- v - eps * u(dC^alpha/dv), from v ~ N(0, noise_std) in the [-1, 1] pixel space.

    Called like an attack: ``RubbishSearch(model, eps=0.1)(targets, generator)``.

    Args:
        model: the classifier whose rubbish images are searched (outputs Y in [-1, 1]).
        eps: step length in [-1, 1] pixel units (every step has exactly this length unless clipped).
        max_steps: step budget per image.
        output_tol: an image has converged when every output is within this distance of its target,
            max_gamma |Y_gamma - t_gamma| <= output_tol: the search has reached the minimum C^alpha = 0 up
            to that distance.  A tolerance on C^alpha itself would mean something different for every m:
            C^alpha < 1e-3 holds for m = 2 once each |Y - t| < 0.18 but for m = 30 already at 0.89, where
            Y_target can be 0.11 and the image is not a minimum at all (measured: DAM_30's "converged"
            rubbish then had a mean Y_target of 0.14 and 22% confidence at beta_sm = 3.2).  The default
            0.01 follows the paper's own number: DAM_2's rubbish got 98.5% confidence at beta_sm = 3.2,
            which is the confidence of outputs equal to their targets (0.01 off in every output: 98.4%).
        m: power of the objective; None (default) takes the model's training m (``model.loss_power``).
        noise_std: standard deviation of the starting noise (the paper: 0.1).
        clip: keep pixels in [-1, 1] after each step.  Default True: only then are the results images
            that the models (and a person) can be shown; unclipped searches drift outside the pixel range.
        dtype: run the search in this dtype.  Default float64: from noise, a trained DAM_20's scores are
            ~1e-31 and every float32 input gradient underflows to exactly 0 (measured on the K = 2000 cpu
            model), while float64 gradients (~1e-27) still give a direction.  None: the model's dtype.
        batch_size: images searched at once; each stops on its own.
        patience: stop an image whose objective has not improved by a relative 1e-4 for this many steps.
            DAM_30's searches cross long plateaus (measured on a K = 400 model: 20% stopped "stuck" with
            patience 200, none with 1000).
    """

    def __init__(
        self,
        model: nn.Module,
        eps: float = 0.1,
        max_steps: int = 5000,
        output_tol: float = 0.01,
        m: int | None = None,
        noise_std: float = 0.1,
        clip: bool = True,
        dtype: torch.dtype | None = torch.float64,
        batch_size: int = 1000,
        patience: int = 1000,
        progress: bool | None = None,
    ) -> None:
        m = objective_power(model, m)
        eps, batch_size, patience = (
            check_positive("eps", eps),
            check_whole("batch_size", batch_size),
            check_whole("patience", patience),
        )
        max_steps = check_whole("max_steps", max_steps, 0)
        if not check_positive("output_tol", output_tol) < 1:
            raise InputError(f"output_tol must lie in (0, 1), got {output_tol!r}")
        noise_std = plain_number(noise_std)
        if not (is_finite_number(noise_std) and noise_std >= 0):
            raise InputError(f"noise_std must be a finite number >= 0, got {noise_std!r}")
        self.model = model
        self.eps, self.max_steps, self.output_tol, self.m = eps, max_steps, output_tol, m
        self.noise_std, self.clip, self.batch_size = noise_std, clip, batch_size
        self.dtype = check_search_dtype(dtype)
        self.patience, self.progress = patience, progress

    def settings(self) -> dict[str, Any]:
        """The hyperparameters, JSON-ready (what a saved result's reuse key records)."""
        return search_settings(self)

    def __call__(self, targets: Tensor, generator: torch.Generator | None = None) -> RubbishResult:
        """Search one rubbish image per entry of ``targets`` (class indices 0-9, a tensor or a list), each from
        Gaussian noise drawn from ``generator`` (None: torch's global generator, which the draw advances; pass
        one for reproducible images)."""
        if generator is not None and not isinstance(generator, torch.Generator):
            raise InputError(f"generator must be a torch.Generator (torch.Generator().manual_seed(0)) or None, got "
                             f"{generator!r}")  # fmt: skip
        probe = as_probe_model(self.model, self.dtype)
        param = next(probe.parameters())
        try:
            targets = torch.as_tensor(targets)
        except (TypeError, ValueError, RuntimeError):
            raise InputError(f"targets must be class indices, one per image, got {targets!r}") from None
        if targets.dim() != 1 or targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
            raise InputError(f"targets must be class indices, one per image (a 1-d integer tensor), got {targets!r}")
        check_class_indices("targets", targets)
        targets = targets.to(param.device, torch.long)
        start = torch.randn(len(targets), 784, generator=generator, dtype=torch.float64) * self.noise_std
        v0 = start.to(param.device, param.dtype)
        if self.clip:
            v0 = v0.clamp(-1.0, 1.0)
        parts = [self._search(probe, v0[i : i + self.batch_size], targets[i : i + self.batch_size])
                 for i in range(0, len(targets), self.batch_size)]  # fmt: skip
        fields = zip(*parts, strict=True)
        v, objective, steps, converged, stalled, stuck, preds = (torch.cat(list(f)) for f in fields)
        to_image = lambda t: ((t + 1) / 2).to(torch.float32)  # noqa: E731
        return RubbishResult(to_image(v), to_image(v0), targets, objective, steps, converged, stalled, stuck, preds)

    def _search(self, model: nn.Module, v: Tensor, targets: Tensor) -> tuple[Tensor, ...]:
        n = len(targets)
        v = v.clone()
        trace = torch.full((n, self.max_steps + 1), float("nan"), dtype=torch.float64, device=v.device)
        steps = torch.zeros(n, dtype=torch.long, device=v.device)
        converged = torch.zeros(n, dtype=torch.bool, device=v.device)
        stalled = torch.zeros_like(converged)
        progress = NoProgress(n, self.patience, v.device)
        active = torch.arange(n, device=v.device)
        with progress_bar(self.max_steps, desc="rubbish", enabled=self.progress, unit="step", leave=False) as bar:
            for k in range(self.max_steps + 1):
                y, c, grad = objective_and_gradient(model, v[active], targets[active], self.m)
                trace[active, k] = c.double()
                steps[active] = k
                done = output_distance(y, targets[active]) <= self.output_tol
                converged[active[done]] = True
                done = done | progress.update(active, c, k)
                if k == self.max_steps:
                    break
                new, usable = unit_step(v[active], grad, self.eps, self.clip)
                stalled[active[~usable & ~done]] = True
                move = usable & ~done
                v[active[move]] = new[move]
                active = active[move]
                bar.update(1)
                if len(active) == 0:
                    break
        with torch.no_grad():
            preds = model((v + 1) / 2).argmax(dim=1)
        return v, trace, steps, converged, stalled, progress.stuck, preds
