"""The AutoAttack protocol (Croce & Hein, ICML 2020), the field's standard robustness evaluation.

The attacks are the authors' reference implementation as published on PyPI (``pyautoattack``: the code of
github.com/fra31/auto-attack, which RobustBench uses), not a port: torchattacks' port changes the protocol's
defaults (its AutoAttack class runs APGD and FAB for 10 iterations, the reference for 100, and rescales
Square's schedule) and its wheel requires torchvision, which does not install beside the CPU build of torch
this project uses.  This module adds only this package's conventions:

- an attack is a class with the model and hyperparameters in the constructor, called on (images, labels),
  returning an :class:`~dam.robustness.attacks.standard.AttackResult` per budget and image;
- the model is attacked through :func:`dam.model.as_logits` (a DAM's pre-tanh scores);
- every returned adversarial is checked here, independently of the library: inside its budget, inside
  [0, 1] and misclassified when re-predicted; a candidate that fails is not counted as a success;
- budgets are attacked from the smallest up, and an image broken within a budget counts as broken (with
  that adversarial) within every larger one, without being attacked again;
- randomness is seeded without touching the caller's random state; queries are counted.

The standard protocol runs APGD-CE and APGD-T (DLR loss, 9 target classes) on every correctly classified
image, then FAB-T (9 targets) on the images both left unbroken and Square (5000 queries) on those FAB-T left,
as AutoAttack's own cascade does; robustness is the worst case per image.  Unlike AutoAttack's runner, APGD-CE
and APGD-T both see every image, so the cross-entropy-versus-DLR gap is measured per model (a large gap is the
signature of cross-entropy attacks starved of gradient, see :mod:`dam.robustness.masking`).  The "plus" protocol adds
restarts (APGD-CE 5, untargeted APGD-DLR 5, untargeted FAB 5) on the survivors of the standard one: if it
breaks nothing more, more effort no longer changes the result.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from dam.errors import InputError, MissingExtraError, check_whole
from dam.model import as_logits
from dam.progress import progress_lines
from dam.robustness.attacks.standard import (
    AttackResult,
    QueryCounter,
    carry_to_larger_budgets,
    check_attack_inputs,
    check_budgets,
    perturbation_norm,
    unbroken_share,
    verified_success,
)

logger = logging.getLogger(__name__)
PROGRESS = progress_lines(logger)

_REFERENCE_NORM = {"linf": "Linf", "l2": "L2"}


def require_autoattack() -> Any:
    """Import the reference AutoAttack code or say in one line how to get it."""
    try:
        import pyautoattack
    except ImportError:
        raise MissingExtraError('the AutoAttack suite needs its reference code: pip install "dam[attacks]"') from None
    return pyautoattack


class _Images4d(nn.Module):
    """The reference code works on (B, C, H, W) images; our models take them as they are."""

    def __init__(self, logits: nn.Module) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, images: Tensor) -> Tensor:
        return self.logits(images.reshape(images.shape[0], -1))


class ReferenceAttack:
    """Base: one attack of the reference AutoAttack code, run per budget on the images asked for."""

    name: ClassVar[str] = "autoattack"
    uses_gradients: ClassVar[bool] = True
    hands_on: ClassVar[bool] = False  # may be asked for hand_on (the APGD attacks: their runs are attack_single_run)

    def __init__(
        self,
        model: nn.Module,
        epsilons: Sequence[float],
        *,
        norm: str = "linf",
        restarts: int = 1,
        batch_size: int = 500,
        seed: int = 0,
        every_budget: bool = False,
        hand_on: bool = False,
    ) -> None:
        self.model, self.norm, self.epsilons = model, norm, check_budgets(norm, epsilons, positive=True)
        restarts, batch_size = check_whole("restarts", restarts), check_whole("batch_size", batch_size)
        seed = check_whole("seed", seed, -(2**63))
        if hand_on and not self.hands_on:
            raise InputError(f"{self.name} has no iterates to hand on (hand_on is for the APGD attacks)")
        self.restarts, self.batch_size, self.seed = restarts, batch_size, seed
        # every_budget: attack each budget in full, also the images a smaller budget already broke.  No
        # stronger for this model (what broke an image within a smaller budget is carried up either way), but
        # for a transfer source: a larger budget's own adversarial is the larger perturbation that transfers.
        self.every_budget = every_budget
        # hand_on: where the attack fails, return its highest-loss iterate instead of the clean image (still not a
        # success).  For a transfer source: the reference code returns the clean image there, so a source as
        # robust as its target would hand on mostly clean images and its transfer could hardly break anything.
        self.hand_on = hand_on

    def _build(self, net: nn.Module, eps: float, device: torch.device) -> Any:
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        return {"restarts": self.restarts, **({"every_budget": True} if self.every_budget else {}),
                **({"failures": "highest-loss iterate"} if self.hand_on else {})}  # fmt: skip

    def describe(self) -> dict[str, Any]:
        """Name and hyperparameters, for the records."""
        return {"attack": self.name, "norm": self.norm, "epsilons": self.epsilons, "gradients": self.uses_gradients,
                "implementation": "pyautoattack (reference code of Croce & Hein)", **self.settings()}  # fmt: skip

    def __call__(self, images: Tensor, labels: Tensor, *, attack_only: Tensor | None = None) -> AttackResult:
        """Attack every image the model classifies correctly (or, with ``attack_only`` of shape (E, B), those
        marked per budget: the cascade's survivors).  Images the model gets wrong count as broken."""
        require_autoattack()  # one line naming the extra, before any compute
        self.model.eval()
        device = next(self.model.parameters()).device
        x, y = check_attack_inputs(images, labels, device)
        logits = as_logits(self.model).eval()
        counter = QueryCounter(logits).eval()
        net = _Images4d(counter).eval()
        plain = _Images4d(logits).eval()  # the same model, uncounted (hand_on's own look at it)
        with torch.no_grad():
            correct = counter(x).argmax(dim=1) == y
        counter.rows = 0
        advs = x.unsqueeze(0).repeat(len(self.epsilons), 1, 1)
        success = (~correct).unsqueeze(0).repeat(len(self.epsilons), 1)
        started = time.perf_counter()
        order = sorted(range(len(self.epsilons)), key=lambda e: self.epsilons[e])
        # The reference code seeds torch's global generator itself: fork it so that the caller's state is
        # left alone and the result depends on ``seed`` only.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for k, e in enumerate(order):
                eps = self.epsilons[e]
                if k and not self.every_budget:  # what broke an image within a smaller budget breaks it
                    take = success[order[k - 1]] & ~success[e]  # within this one: carried, not redone
                    advs[e, take], success[e, take] = advs[order[k - 1], take], True
                todo = correct & ~success[e]
                if attack_only is not None:
                    todo &= attack_only[e].to(device)
                index = todo.nonzero()[:, 0]
                for start in range(0, len(index), self.batch_size):
                    part = index[start : start + self.batch_size]
                    torch.manual_seed(self.seed)
                    attack = self._build(net, eps, device)
                    highest = (
                        _HighestLoss(attack, plain, x[part].view(-1, 1, 28, 28), y[part]) if self.hand_on else None
                    )
                    candidate = attack.perturb(x[part].view(-1, 1, 28, 28), y[part]).detach().reshape(len(part), -1)
                    # checked as every attack's is, not counted as queries (the Foolbox attacks' rule)
                    ok = verified_success(logits, x[part], candidate, y[part], self.norm, eps)
                    advs[e, part[ok]] = candidate[ok]
                    success[e, part[ok]] = True
                    if highest is not None and highest.images is not None:
                        advs[e, part[~ok]] = highest.images.reshape(len(part), -1)[~ok].to(advs.dtype)
        distances = torch.stack([perturbation_norm(self.norm, a, x) for a in advs])
        # (with every_budget, a failure keeps the smaller budget's adversarial: carried here)
        result = carry_to_larger_budgets(AttackResult(self.name, self.norm, self.epsilons, advs.cpu(), success.cpu(),
                                                      distances.cpu(), counter.rows / len(x),
                                                      time.perf_counter() - started))  # fmt: skip
        if not self.every_budget:  # carried before each budget ran, so nothing was measured
            result.carried = None
        return result


class _HighestLoss:
    """Per image, the highest-loss iterate of every run an APGD attack makes (restarts, target classes): wraps
    the attack's ``attack_single_run``, whose images are those its ``perturb`` has not yet broken, in order.
    ``net`` is the model as ``perturb`` sees it, uncounted: its first prediction decides, as ``perturb``'s does,
    which images start unbroken.  Should the runs ever not match that bookkeeping, nothing more is recorded
    and ``images`` is None: the caller hands on the clean images, as without this."""

    def __init__(self, attack: Any, net: nn.Module, images: Tensor, labels: Tensor) -> None:
        self.images: Tensor | None = images.detach().clone()
        self.loss = torch.full((len(images),), -torch.inf, device=images.device)
        with torch.no_grad():
            self.unbroken = (net(images).argmax(dim=1) == labels).nonzero()[:, 0]
        run = attack.attack_single_run

        def recorded(x: Tensor, y: Tensor, *args: Any, **kwargs: Any) -> Any:
            x_best, unbroken, loss_best, x_adv = run(x, y, *args, **kwargs)
            index = self.unbroken
            if self.images is not None and len(index) != len(x):
                warnings.warn(f"APGD attacked {len(x)} images where {len(index)} were left unbroken: its failures "
                              "hand on the clean images", RuntimeWarning, stacklevel=2)  # fmt: skip
                self.images = None
            if self.images is not None:
                better = loss_best.detach() > self.loss[index]
                self.images[index[better]] = x_best.detach()[better]
                self.loss[index[better]] = loss_best.detach()[better]
                self.unbroken = index[unbroken != 0]
            return x_best, unbroken, loss_best, x_adv

        attack.attack_single_run = recorded


def check_targets(targets: Any) -> int:
    """The number of target classes of a targeted attack: the 1 to 9 runner-up classes."""
    targets = check_whole("targets", targets)
    if targets > 9:
        raise InputError(f"targets must be between 1 and 9 (the runner-up classes), got {targets}")
    return targets


class APGDCE(ReferenceAttack):
    """APGD on the cross-entropy loss: step-size-free PGD with momentum, 100 iterations."""

    name = "apgd-ce"
    hands_on = True

    def __init__(self, model: nn.Module, epsilons: Sequence[float], *, steps: int = 100, **kwargs: Any) -> None:
        super().__init__(model, epsilons, **kwargs)
        self.steps = check_whole("steps", steps)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "steps": self.steps, "loss": self.loss}

    loss: ClassVar[str] = "ce"

    def _build(self, net: nn.Module, eps: float, device: torch.device) -> Any:
        from pyautoattack.autopgd_base import APGDAttack

        return APGDAttack(net, n_iter=self.steps, norm=_REFERENCE_NORM[self.norm], n_restarts=self.restarts, eps=eps,
                          seed=self.seed, loss=self.loss, device=device)  # fmt: skip


class APGDDLR(APGDCE):
    """Untargeted APGD on the DLR loss (the "plus" protocol)."""

    name = "apgd-dlr"
    loss = "dlr"


class APGDT(ReferenceAttack):
    """Targeted APGD on the DLR loss, invariant to the scale of the logits: 100 iterations per target class,
    the 9 runner-up classes in turn."""

    name = "apgd-t"
    hands_on = True

    def __init__(self, model: nn.Module, epsilons: Sequence[float], *, steps: int = 100, targets: int = 9,
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__(model, epsilons, **kwargs)
        self.steps, self.targets = check_whole("steps", steps), check_targets(targets)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "steps": self.steps, "target_classes": self.targets, "loss": "dlr-targeted"}

    def _build(self, net: nn.Module, eps: float, device: torch.device) -> Any:
        from pyautoattack.autopgd_base import APGDAttack_targeted

        return APGDAttack_targeted(net, n_iter=self.steps, norm=_REFERENCE_NORM[self.norm], n_restarts=self.restarts,
                                   eps=eps, seed=self.seed, n_target_classes=self.targets, device=device)  # fmt: skip


class FABT(ReferenceAttack):
    """Targeted FAB: minimal-norm adversarials by linearising the decision boundary, 100 iterations per target."""

    name = "fab-t"
    targeted: ClassVar[bool] = True

    def __init__(self, model: nn.Module, epsilons: Sequence[float], *, steps: int = 100, targets: int = 9,
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__(model, epsilons, **kwargs)
        self.steps, self.targets = check_whole("steps", steps), check_targets(targets)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "steps": self.steps, "target_classes": self.targets if self.targeted else None}

    def _build(self, net: nn.Module, eps: float, device: torch.device) -> Any:
        from pyautoattack.fab_pt import FABAttack_PT

        return FABAttack_PT(net, norm=_REFERENCE_NORM[self.norm], n_restarts=self.restarts, n_iter=self.steps, eps=eps,
                            seed=self.seed, targeted=self.targeted, n_target_classes=self.targets,
                            device=device)  # fmt: skip


class FAB(FABT):
    """Untargeted FAB (the "plus" protocol)."""

    name = "fab"
    targeted = False


class Square(ReferenceAttack):
    """Square Attack: random search with square-shaped updates; sees only the logits' values, no gradient."""

    name = "square"
    uses_gradients = False

    def __init__(self, model: nn.Module, epsilons: Sequence[float], *, queries: int = 5000, **kwargs: Any) -> None:
        super().__init__(model, epsilons, **kwargs)
        self.queries = check_whole("queries", queries)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "queries": self.queries, "p_init": 0.8}

    def _build(self, net: nn.Module, eps: float, device: torch.device) -> Any:
        from pyautoattack.square import SquareAttack

        return SquareAttack(net, p_init=0.8, n_queries=self.queries, eps=eps, norm=_REFERENCE_NORM[self.norm],
                            n_restarts=self.restarts, seed=self.seed, device=device, resc_schedule=False)  # fmt: skip


@dataclass
class AutoAttackResult:
    """Every attack's result of one protocol run, and the worst case per budget and image."""

    norm: str
    epsilons: list[float]
    results: dict[str, AttackResult] = field(default_factory=dict)
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    on_survivors: dict[str, bool] = field(default_factory=dict)  # saw only what the attacks before left

    def add(self, key: str, attack: ReferenceAttack, result: AttackResult, on_survivors: bool) -> None:
        self.results[key] = result
        self.settings[key] = attack.describe()
        self.on_survivors[key] = on_survivors

    def broken(self) -> Tensor:
        """(E, B): broken by any attack (clean errors included)."""
        stacked = torch.stack([r.success for r in self.results.values()])
        return stacked.any(dim=0)

    def robust_accuracy(self) -> list[float]:
        """Worst case per image over every attack, per budget."""
        return [unbroken_share(b) for b in self.broken()]


class AutoAttack:
    """The AutoAttack protocol at several budgets of one norm: ``AutoAttack(model, [0.1, 0.3])(images, labels)``.

    ``version="standard"``: APGD-CE and APGD-T on every image, FAB-T and Square on the survivors.
    ``version="plus"``: the standard attacks, then APGD-CE, APGD-DLR and FAB with 5 restarts and Square on
    the survivors.  A reduced run for small presets: ``steps`` below 100 (the iterations of every APGD and FAB
    attack), ``fab=False`` (FAB-T broke nothing that APGD-T left, in every measurement of this project) or
    fewer ``square_queries`` (0: no Square); the result records what ran.
    """

    def __init__(
        self,
        model: nn.Module,
        epsilons: Sequence[float],
        *,
        norm: str = "linf",
        version: str = "standard",
        steps: int = 100,
        targets: int = 9,
        square_queries: int = 5000,
        fab: bool = True,
        batch_size: int = 500,
        seed: int = 0,
    ) -> None:
        if version not in ("standard", "plus"):
            raise InputError(f"version must be 'standard' or 'plus', got {version!r}")
        common = {"norm": norm, "batch_size": batch_size, "seed": seed}
        self.first = [APGDCE(model, epsilons, steps=steps, **common),
                      APGDT(model, epsilons, steps=steps, targets=targets, **common)]  # fmt: skip
        epsilons = self.first[0].epsilons  # checked: floats, one budget as a list of one
        self.model, self.norm, self.epsilons, self.version = model, norm, epsilons, version
        self.cascade: list[ReferenceAttack] = []
        if fab:
            self.cascade.append(FABT(model, epsilons, steps=steps, targets=targets, **common))
        if square_queries:
            self.cascade.append(Square(model, epsilons, queries=square_queries, **common))
        if version == "plus":
            self.cascade += [APGDCE(model, epsilons, steps=steps, restarts=5, **common),
                             APGDDLR(model, epsilons, steps=steps, restarts=5, **common),
                             FAB(model, epsilons, steps=steps, restarts=5, **common)]  # fmt: skip

    def attacks(self) -> list[ReferenceAttack]:
        return self.first + self.cascade

    def describe(self) -> dict[str, Any]:
        return {"protocol": f"autoattack-{self.version}", "norm": self.norm, "epsilons": self.epsilons,
                "attacks": [a.describe() for a in self.first + self.cascade]}  # fmt: skip

    def __call__(self, images: Tensor, labels: Tensor, *, log: Callable[[str], None] | None = None) -> AutoAttackResult:
        """Run the protocol; ``log`` gets a line as each attack ends (None: :func:`dam.progress.progress_lines`)."""
        log = log or PROGRESS
        out = AutoAttackResult(self.norm, self.epsilons)
        attacks = [*self.first, *self.cascade]
        for i, attack in enumerate(attacks):
            # the cascade runs even when nothing survives (then at no cost): every attack of the protocol is in it
            cascade = attack in self.cascade
            result = attack(images, labels, attack_only=~out.broken()) if cascade else attack(images, labels)
            out.add(_unique(out, attack.name, attack.restarts), attack, result, cascade)
            # each attack can take minutes: a line as each ends (in a notebook too, dam.progress.progress_lines)
            left = ", ".join(f"{100 * a:.1f}%" for a in out.robust_accuracy())
            log(f"  autoattack {self.norm} {i + 1}/{len(attacks)} {attack.name}: {result.seconds:.0f} s; "
                f"robust accuracy so far {left} at eps {', '.join(f'{e:g}' for e in self.epsilons)}")  # fmt: skip
        return out


def effort_check(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    broken: Tensor,
    epsilons: Sequence[float],
    *,
    norm: str = "linf",
    steps: int = 100,
    targets: int = 9,
    seed: int = 0,
) -> tuple[dict[str, Any], AttackResult]:
    """Carlini et al.'s check that an evaluation has converged: on the images every attack left (``broken``:
    (E, B), the worst case so far), run the gradient attacks again with twice the iterations, five random
    restarts and another seed, and report how many more they break, per budget.  Under one point of robust
    accuracy everywhere means more effort no longer changes the result.

    Returns the summary and the check's own result (its checked adversarials on the survivors; the success
    mask marks only the images it broke), which belongs in the worst case."""
    survivors = ~broken
    common = {"norm": norm, "seed": seed + 1}
    more = [APGDCE(model, epsilons, steps=2 * steps, restarts=5, **common),
            APGDDLR(model, epsilons, steps=2 * steps, restarts=5, **common),
            APGDT(model, epsilons, steps=2 * steps, targets=targets, **common)]  # fmt: skip
    extra = torch.zeros_like(broken)
    clean = images.reshape(len(images), -1).float().cpu()
    adversarials = clean.unsqueeze(0).repeat(len(epsilons), 1, 1)
    seconds, queries, ran = 0.0, 0.0, []
    for attack in more:
        todo = survivors & ~extra
        if not todo.any():  # nothing left to attack: the record names only the attacks that ran
            break
        ran.append(attack)
        result = attack(images, labels, attack_only=todo)
        new = result.success & todo
        adversarials[new] = result.adversarials[new].cpu()
        extra |= new
        seconds += result.seconds
        queries += result.queries_per_image
    # from the count, exactly: one image of 100 is 1 point, not float32's 0.99999998 (which passed "under 1")
    points = [100.0 * int(e.sum()) / e.numel() for e in extra]
    summary = {
        "attacks": [a.describe() for a in ran],
        "not_run": [f"{a.name}: no image left to attack" for a in more[len(ran) :]],
        "extra_broken_points": points,  # robust accuracy lost per budget, in points
        "converged": all(p < 1.0 for p in points),
        "seconds": round(seconds, 2),
    }
    distances = torch.stack([perturbation_norm(norm, a, clean) for a in adversarials])
    return summary, AttackResult("effort check", norm, [float(e) for e in epsilons], adversarials, extra, distances,
                                 queries, seconds)  # fmt: skip


def _unique(out: AutoAttackResult, name: str, restarts: int) -> str:
    return name if name not in out.results else f"{name}-x{restarts}"
