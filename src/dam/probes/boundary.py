"""Images exactly on the decision boundary (Fig. 4), and one step past it (the adversarial sets of Fig. 5).

Per image: sort the model's outputs; descend the objective of the second choice by fixed-length unit
steps; log C of the top and second choices at every step.  The two objectives are equal exactly where
the two outputs are equal, so the step on which Y_second overtakes Y_top brackets the boundary; bisection
on that segment finds the boundary image, and the end of the segment is the image one step past it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dam.errors import InputError, check_positive, check_whole
from dam.probes.gradient import (
    NoProgress,
    as_probe_model,
    check_search_dtype,
    check_search_images,
    class_objective,
    objective_and_gradient,
    objective_power,
    output_distance,
    search_settings,
    unit_step,
)
from dam.progress import progress_bar


@dataclass
class BoundaryResult:
    """All images in the model's input space [0, 1], shape (N, 784); distances in the same units.

    ``boundary``: on the decision boundary, |Y_top - Y_second| <= ``boundary_tol`` (see ``boundary_gap``).
    ``past``: one step past the boundary; ``past_label`` is its own model's label for it.
    ``final``: where the second-choice objective converged (or the step budget ran out).
    ``log_c_top`` / ``log_c_second``: (N, max_steps + 1) traces of log C, NaN after the image stopped.
    ``success``: crossed, the boundary gap is within tolerance, and the past image is labelled second.
    ``stalled``: stopped on a zero or non-finite gradient (a failure of the search, never robustness).
    ``stuck``: stopped in a local minimum of C^second: no progress for ``patience`` steps.
    """

    clean: Tensor
    boundary: Tensor
    past: Tensor
    final: Tensor
    top: Tensor
    second: Tensor
    log_c_top: Tensor
    log_c_second: Tensor
    crossing_step: Tensor
    steps: Tensor
    boundary_gap: Tensor
    past_label: Tensor
    converged: Tensor
    stalled: Tensor
    stuck: Tensor
    success: Tensor

    def distances(self, which: str = "boundary") -> dict[str, Tensor]:
        """L2 and L-infinity distances from the clean images, in [0, 1] pixel units (NaN where not crossed)."""
        diff = getattr(self, which) - self.clean
        crossed = self.crossing_step >= 0
        nan = torch.full_like(diff[:, 0], float("nan"))
        return {
            "l2": torch.where(crossed, diff.norm(dim=1), nan),
            "linf": torch.where(crossed, diff.abs().amax(dim=1), nan),
        }


class BoundarySearch:
    """Follow -u(dC^second/dv) from each clean image until it crosses, then (optionally) converges.

    The model and the hyperparameters in the constructor, the images per call:
    ``BoundarySearch(model, eps=0.05)(images)``.  A probe, not an attack: it takes no labels (it moves each
    image from the model's own top class to its second) and bounds no budget; the robustness measure is
    :mod:`dam.robustness.attacks`.

    Args:
        model: the classifier (any module of this package's input contract whose outputs are Y in [-1, 1]).
        eps: step length in [-1, 1] pixel units.
        max_steps: step budget per image.
        m: power of the objective; None (default) takes the model's training m (``model.loss_power``).
        until: "crossing" stops each image one step past the boundary (enough for the transfer sets);
            "converged" goes on until every output is within ``output_tol`` of the second choice's target,
            the minimum of C^second: the paper's third image of Fig. 4.
        output_tol: max_gamma |Y_gamma - t^second_gamma| at which an image has converged.  (Not a bound on
            C^second itself: with m = 30, C^second < 1e-3 already holds while Y_second is near 0.1.)
        boundary_tol: bisection goes on until |Y_top - Y_second| <= boundary_tol.
        clip: keep pixels in [-1, 1] after each step (default True: results are valid images).
        dtype: search dtype; float64 keeps gradients alive where float32 underflows (n = m = 30).
        batch_size: images searched at once; each stops on its own.
        bisection_steps: at most this many halvings of the crossing step to find the boundary image.
        patience: stop an image whose C^second has not improved by a relative 1e-4 for this many steps.
        progress: a progress bar (None: on a terminal or in Jupyter).
    """

    def __init__(
        self,
        model: nn.Module,
        eps: float = 0.05,
        max_steps: int = 1000,
        m: int | None = None,
        until: str = "crossing",
        output_tol: float = 0.01,
        boundary_tol: float = 1e-4,
        clip: bool = True,
        dtype: torch.dtype | None = None,
        batch_size: int = 1000,
        bisection_steps: int = 60,
        patience: int = 200,
        progress: bool | None = None,
    ) -> None:
        if until not in ("crossing", "converged"):
            raise InputError(f"until must be 'crossing' or 'converged', got {until!r}")
        m = objective_power(model, m)
        eps, boundary_tol = check_positive("eps", eps), check_positive("boundary_tol", boundary_tol)
        max_steps, batch_size = check_whole("max_steps", max_steps), check_whole("batch_size", batch_size)
        bisection_steps, patience = check_whole("bisection_steps", bisection_steps), check_whole("patience", patience)
        if not check_positive("output_tol", output_tol) < 1:
            raise InputError(f"output_tol must lie in (0, 1), got {output_tol!r}")
        self.model = model
        self.eps, self.max_steps, self.m, self.until, self.output_tol = eps, max_steps, m, until, output_tol
        self.boundary_tol, self.clip, self.batch_size = boundary_tol, clip, batch_size
        self.dtype = check_search_dtype(dtype)
        self.bisection_steps, self.patience, self.progress = bisection_steps, patience, progress

    def settings(self) -> dict[str, Any]:
        """The hyperparameters, JSON-ready (what a saved result's reuse key records)."""
        return search_settings(self)

    def __call__(self, images: Tensor) -> BoundaryResult:
        """Search the boundary for every image (in [0, 1], (N, 784) or (N, 1, 28, 28))."""
        flat = check_search_images(images, self.model)
        probe = as_probe_model(self.model, self.dtype)
        param = next(probe.parameters())
        x = flat.to(param.device, param.dtype)
        parts = [self._search(probe, 2 * x[i : i + self.batch_size] - 1) for i in range(0, len(x), self.batch_size)]
        merged = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        for k in ("clean", "boundary", "past", "final"):
            merged[k] = ((merged[k] + 1) / 2).to(torch.float32)
        return BoundaryResult(**merged)

    def _gap(self, model: nn.Module, v: Tensor, top: Tensor, second: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            y = model((v + 1) / 2)
        rows = torch.arange(len(v), device=v.device)
        return y[rows, top] - y[rows, second], y.argmax(dim=1)

    def _search(self, model: nn.Module, v: Tensor) -> dict[str, Tensor]:
        n, dev = len(v), v.device
        clean = v.clone()
        with torch.no_grad():
            order = model((v + 1) / 2).argsort(dim=1, descending=True)
        top, second = order[:, 0].contiguous(), order[:, 1].contiguous()
        log_top = torch.full((n, self.max_steps + 1), float("nan"), dtype=torch.float32, device=dev)
        log_second = torch.full_like(log_top, float("nan"))
        before = v.clone()  # last image on the top side
        after = v.clone()  # first image on the second side
        crossing = torch.full((n,), -1, dtype=torch.long, device=dev)
        steps = torch.zeros(n, dtype=torch.long, device=dev)
        converged = torch.zeros(n, dtype=torch.bool, device=dev)
        stalled = torch.zeros_like(converged)
        no_progress = NoProgress(n, self.patience, dev)
        active = torch.arange(n, device=dev)
        with progress_bar(self.max_steps, desc="boundary", enabled=self.progress, unit="step", leave=False) as bar:
            for k in range(self.max_steps + 1):
                y, c_second, grad = objective_and_gradient(model, v[active], second[active], self.m)
                c_top = class_objective(y, top[active], self.m)
                log_top[active, k] = c_top.float().log()
                log_second[active, k] = c_second.float().log()
                steps[active] = k
                rows = torch.arange(len(active), device=dev)
                flipped = y[rows, second[active]] >= y[rows, top[active]]
                newly = flipped & (crossing[active] < 0)
                if k > 0:
                    crossing[active[newly]] = k
                    after[active[newly]] = v[active[newly]]
                else:  # already on the second side at the start (a tie): the clean image is the boundary
                    crossing[active[newly]] = 0
                    after[active[newly]] = v[active[newly]]
                done = output_distance(y, second[active]) <= self.output_tol
                converged[active[done]] = True
                if self.until == "crossing":
                    done = done | flipped
                done = done | no_progress.update(active, c_second, k)
                if k == self.max_steps:
                    break
                new, usable = unit_step(v[active], grad, self.eps, self.clip)
                # A zero gradient is reported even where the image stops anyway: a crossing found at
                # step 0 on saturated, tied outputs is gradient masking, not a boundary.
                stalled[active[~usable & ~converged[active]]] = True
                move = usable & ~done
                still_top = move & (crossing[active] < 0)
                before[active[still_top]] = v[active[still_top]]
                v[active[move]] = new[move]
                active = active[move]
                bar.update(1)
                if len(active) == 0:
                    break
        boundary, gap = self._bisect(model, before, after, top, second, crossing)
        _, past_label = self._gap(model, after, top, second)
        crossed = crossing >= 0
        success = crossed & (gap.abs() <= self.boundary_tol) & (past_label == second)
        return {
            "clean": clean, "boundary": boundary, "past": torch.where(crossed[:, None], after, clean), "final": v,
            "top": top, "second": second, "log_c_top": log_top, "log_c_second": log_second,
            "crossing_step": crossing, "steps": steps, "boundary_gap": gap, "past_label": past_label,
            "converged": converged, "stalled": stalled, "stuck": no_progress.stuck, "success": success,
        }  # fmt: skip

    def _bisect(
        self, model: nn.Module, lo: Tensor, hi: Tensor, top: Tensor, second: Tensor, crossing: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Bisect each segment [lo (top side), hi (second side)] for Y_top = Y_second."""
        a = torch.zeros(len(lo), 1, dtype=lo.dtype, device=lo.device)
        b = torch.ones_like(a)
        best_t = torch.ones_like(a)
        best_gap, _ = self._gap(model, hi, top, second)
        for _ in range(self.bisection_steps):
            mid = (a + b) / 2
            gap, _ = self._gap(model, lo + mid * (hi - lo), top, second)
            closer = gap.abs() < best_gap.abs()
            best_t = torch.where(closer[:, None], mid, best_t)
            best_gap = torch.where(closer, gap, best_gap)
            a = torch.where(gap[:, None] > 0, mid, a)  # still on the top side: move the lower end up
            b = torch.where(gap[:, None] > 0, b, mid)
            if bool((best_gap.abs() <= self.boundary_tol).all()):
                break
        crossed = crossing >= 0
        boundary = torch.where(crossed[:, None], lo + best_t * (hi - lo), lo)
        nan = torch.full_like(best_gap, float("nan"))
        return boundary, torch.where(crossed, best_gap, nan)
