"""Robust accuracy against budget on a fixed, seeded subset of the test set."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from dam.data import seeded_subset
from dam.errors import InputError
from dam.model import as_logits
from dam.progress import progress_lines
from dam.robustness.attacks.standard import AttackResult, unbroken_share

logger = logging.getLogger(__name__)
PROGRESS = progress_lines(logger)  # the default log of this module's jobs


class Attacker(Protocol):
    name: str
    norm: str
    epsilons: list[float]
    uses_gradients: bool

    def __call__(self, images: Tensor, labels: Tensor) -> AttackResult: ...

    def describe(self) -> dict[str, Any]: ...


def evaluation_subset(images: Tensor, labels: Tensor, size: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """The fixed test subset attacks are measured on: :func:`dam.data.seeded_subset` (the package's one
    rule, so the same images for every model, run and stage)."""
    return seeded_subset(images, labels, size, seed)


@dataclass
class RobustnessTable:
    """Robust accuracy (fraction of images still classified correctly) per attack and budget, one norm.

    ``worst_case``: an image counts as robust only if every attack failed on it at that budget.
    """

    model: str
    norm: str
    epsilons: list[float]
    images: int
    clean_accuracy: float
    attacks: dict[str, list[float]] = field(default_factory=dict)
    gradient_free: dict[str, bool] = field(default_factory=dict)
    # the model evaluations an attack made over all its budgets, divided by all the images (not per budget, nor per
    # image it attacked): a cost, comparable between attacks of one table
    queries_per_image: dict[str, float] = field(default_factory=dict)
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    worst_case: list[float] = field(default_factory=list)
    # Per attack that saw only the survivors of the attacks before it: the share of all images it broke
    # that none of them had (what it added to the worst case), per budget.
    extra_broken: dict[str, list[float]] = field(default_factory=dict)
    # The worst case over the gradient attacks alone (per image, like ``worst_case``): the curve that a gap
    # to the full worst case would show masking on (empty in results of dam 0.3 and older).
    gradient_worst_case: list[float] = field(default_factory=list)
    # Per kind of gradient-free attack (:func:`gradient_free_kind`): the share of all images that attacks of that
    # kind broke and no gradient attack did, per budget.  The masking check compares attacks image by image
    # with it, not robust accuracy against robust accuracy (empty in results of dam 0.7 and older).
    beyond_gradients: dict[str, list[float]] = field(default_factory=dict)
    # Per attack that runs every budget on its own (FGSM, PGD): the images it broke within a
    # smaller budget and not within this one, counted as broken here (``AttackResult.carried``; empty in results
    # of dam 0.12 and older).
    carried_up: dict[str, list[int]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RobustnessTable:
        return cls(**data)


def robust_accuracy(
    model: nn.Module,
    name: str,
    images: Tensor,
    labels: Tensor,
    attacks: Sequence[Attacker],
    protocols: Sequence[Any] = (),
    log: Callable[[str], None] = PROGRESS,
) -> tuple[RobustnessTable, dict[str, AttackResult]]:
    """Run every attack (all of one norm, same budgets) on the same images; tabulate robust accuracy.  The
    results are keyed by attack; ``"worst case"`` holds the per-image worst case (success: broken by any),
    ``"worst case of the gradient attacks"`` the same over the attacks that use gradients, and ``"clean
    errors"`` the images the model gets wrong unattacked.

    ``protocols``: attack protocols such as :class:`~dam.robustness.attacks.autoattack.AutoAttack`, whose
    attacks run in a cascade; each of their attacks gets a column (a cascade attack that saw only the
    survivors of the ones before is named "... (on survivors)").  The worst case per image is over every
    attack and protocol.  ``log`` gets a line per finished attack."""
    if not attacks and not protocols:
        raise InputError("no attacks given")
    if len(images) == 0:  # (a robust accuracy of no images is no number)
        raise InputError("no images to attack")
    norms = {(a.norm, tuple(a.epsilons)) for a in [*attacks, *protocols]}
    if len(norms) != 1:
        raise InputError(f"attacks in one table must share norm and budgets, got {sorted(norms)}")
    norm, epsilons = norms.pop()
    device = next(model.parameters()).device
    with torch.no_grad():
        wrong = as_logits(model).eval()(images.to(device)).argmax(dim=1).cpu() != labels.cpu()
    table = RobustnessTable(name, norm, list(epsilons), len(images), unbroken_share(wrong))
    results: dict[str, AttackResult] = {}
    # the clean errors and the per-image worst cases, for checks that continue from them
    # (dam.robustness.attacks.autoattack.effort_check, added by add_to_worst_case)
    for key in (CLEAN_ERRORS, WORST, GRADIENT_WORST):
        results[key] = AttackResult(key, norm, list(epsilons), images.new_empty(0),
                                    wrong.unsqueeze(0).repeat(len(epsilons), 1), torch.empty(0), 0.0)  # fmt: skip
    for attack in attacks:
        _add_column(table, results, attack.name, attack(images, labels), attack.describe(), wrong, False, log)
    for protocol in protocols:
        outcome = protocol(images, labels, log=log)  # a line per attack of the protocol, to the job's log
        for key, result in outcome.results.items():
            settings = {**outcome.settings[key], "protocol": protocol.describe()["protocol"]}
            _add_column(table, results, key, result, settings, wrong, outcome.on_survivors[key], log)
    return table, results


CLEAN_ERRORS, WORST, GRADIENT_WORST = "clean errors", "worst case", "worst case of the gradient attacks"


def gradient_free_kind(column: str) -> str:
    """How a gradient-free attack (by its column's name) sees the model: "decision-based" (HopSkipJump, labels
    only), "transfer" (adversarials of another model) or "score-based" (Square, the logits' values)."""
    if column.startswith("hopskipjump"):
        return "decision-based"
    if column.startswith("transfer:"):
        return "transfer"
    return "score-based"


def add_to_worst_case(
    table: RobustnessTable, results: dict[str, AttackResult], column: str, result: AttackResult,
    settings: dict[str, Any], log: Callable[[str], None] = PROGRESS,
) -> None:  # fmt: skip
    """Add an attack run after :func:`robust_accuracy` on the survivors of its worst case (the convergence
    check, say) as a column "... (on survivors)", and what it broke to the worst case."""
    _add_column(table, results, column, result, settings, results[CLEAN_ERRORS].success[0], True, log)


def _add_column(
    table: RobustnessTable, results: dict[str, AttackResult], key: str, result: AttackResult,
    settings: dict[str, Any], wrong: Tensor, on_survivors: bool, log: Callable[[str], None],
) -> None:  # fmt: skip
    """One attack's column, and its successes added to the worst cases.  An attack that saw only the
    survivors of those before it records what it added.  An image the model already gets wrong (``wrong``)
    is never robust, whatever the attack made of it (a transferred adversarial, say, may happen to be
    classified correctly)."""
    result.success = result.success | wrong
    column = f"{key} (on survivors)" if on_survivors else key
    results[column] = result
    table.attacks[column] = result.robust_accuracy()
    table.gradient_free[column] = not settings["gradients"]
    table.queries_per_image[column] = result.queries_per_image
    if result.carried is not None:
        table.carried_up[column] = list(result.carried)
    table.settings[column] = {**settings, "seconds": round(result.seconds, 2)}
    worst = results[WORST]
    if on_survivors:
        table.extra_broken[column] = [float((s & ~b).double().mean())
                                      for s, b in zip(result.success, worst.success, strict=True)]  # fmt: skip
    for kept in (worst, results[GRADIENT_WORST]) if settings["gradients"] else (worst,):
        kept.success = kept.success | result.success
    table.worst_case = [unbroken_share(b) for b in worst.success]
    table.gradient_worst_case = [unbroken_share(b) for b in results[GRADIENT_WORST].success]
    # (redone after every column: a gradient attack run later, AutoAttack's after HopSkipJump and the transfers,
    # may break the same images)
    gradient = results[GRADIENT_WORST].success
    by_kind: dict[str, Tensor] = {}
    for name, free in table.gradient_free.items():
        if free:
            kind = gradient_free_kind(name)
            by_kind[kind] = by_kind.get(kind, torch.zeros_like(gradient)) | results[name].success
    table.beyond_gradients = {kind: [float(s.double().mean()) for s in broken & ~gradient]
                              for kind, broken in sorted(by_kind.items())}  # fmt: skip
    _log_attack(table, column, result, log)


def _log_attack(table: RobustnessTable, column: str, result: AttackResult, log: Callable[[str], None]) -> None:
    """One line per finished attack: an attack stage runs for hours at full size, this is its progress.  An
    attack on the survivors says what it broke and the worst case after it (its own robust accuracy would
    count the images it never saw as robust)."""

    def per_budget(values: list[float], unit: str) -> str:
        return ", ".join(f"{e:g}: {100 * v:.1f}{unit}" for e, v in zip(result.epsilons, values, strict=True))

    if column in table.extra_broken:
        what = (f"broke {per_budget(table.extra_broken[column], ' points')} more; "
                f"worst case {per_budget(table.worst_case, '%')}")  # fmt: skip
    else:
        what = f"robust accuracy {per_budget(result.robust_accuracy(), '%')}"
    log(f"  {table.model}, {result.norm} {column}: {result.seconds:.0f} s, {what}")
