"""Gradient-masking diagnostics: is a model robust, or are its gradients merely useless to an attacker?

Two symptoms (Athalye, Carlini & Wagner 2018; Carlini et al. 2019, "On evaluating adversarial
robustness"): input gradients that vanish or overflow, and gradient attacks that do worse than attacks
which never look at a gradient (decision-based or transferred from another model) at the same budget.
A model whose white-box robust accuracy exceeds its black-box robust accuracy is not robust; the
black-box number is the honest one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dam.errors import InputError
from dam.model import as_logits
from dam.robustness.attacks.accuracy import RobustnessTable, gradient_free_kind


@dataclass
class GradientHealth:
    """Fractions of images whose cross-entropy input gradient is exactly zero or not finite."""

    dtype: str
    images: int
    zero_fraction: float
    nonfinite_fraction: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def gradient_health(
    model: nn.Module, images: Tensor, labels: Tensor, dtype: torch.dtype = torch.float32, batch_size: int = 500
) -> GradientHealth:
    """Per-image input gradient of cross-entropy on the attack logits, computed in ``dtype``."""
    import copy

    device = next(model.parameters()).device
    probe = copy.deepcopy(model).to(dtype).eval() if next(model.parameters()).dtype != dtype else model.eval()
    logits = as_logits(probe)
    zero = nonfinite = 0
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(device=device, dtype=dtype).reshape(-1, 784).requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(logits(x), labels[i : i + batch_size].to(device), reduction="sum")
            (grad,) = torch.autograd.grad(loss, x)
        finite = torch.isfinite(grad).all(dim=1)
        nonfinite += int((~finite).sum())
        zero += int((finite & (grad == 0).all(dim=1)).sum())
    n = max(len(images), 1)
    return GradientHealth(str(dtype).removeprefix("torch."), len(images), zero / n, nonfinite / n)


# The smallest gap in robust accuracy the diagnostics call a gap, whatever the noise of many images says.
MASKING_FLOOR = 0.03


def noise_level(accuracy: float, images: int, floor: float = MASKING_FLOOR) -> float:
    """Two binomial standard errors, at least ``floor``: smaller gaps are noise on this many images."""
    return max(floor, 2.0 * math.sqrt(max(accuracy * (1 - accuracy), 1e-12) / max(images, 1)))


def _combined(table: RobustnessTable, gradient_free: bool, prefix: str | None = None) -> list[float] | None:
    """Best attack of a kind per budget (the lowest robust accuracy); None if the table has none."""
    names = [a for a, free in table.gradient_free.items()
             if free == gradient_free and (prefix is None or a.startswith(prefix))]  # fmt: skip
    if not names:
        return None
    return [min(table.attacks[a][i] for a in names) for i in range(len(table.epsilons))]


def _gaps(table: RobustnessTable, floor: float) -> list[dict[str, Any]]:
    """Budgets at which gradient-free attacks beat the gradient attacks by more than the noise: image by image,
    they broke more images that no gradient attack broke than two standard errors (at least ``floor``).  A
    kind of attack can fall short of the gradient attacks' robust accuracy and still break images they all
    left; that is the sign of masking, so robust accuracies alone are compared only in results older than
    the per-image record (``beyond_gradients``)."""
    if table.beyond_gradients:
        gaps = []
        for kind, shares in table.beyond_gradients.items():
            names = [a for a, free in table.gradient_free.items() if free and gradient_free_kind(a) == kind]
            for eps, white, added in zip(table.epsilons, table.gradient_worst_case, shares, strict=True):
                if added > noise_level(white, table.images, floor):
                    gaps.append({"norm": table.norm, "eps": eps, "kind": kind, "white_box": white,
                                 "black_box": white - added, "attack": ", ".join(names)})  # fmt: skip
        return gaps
    white = _combined(table, gradient_free=False)
    if white is None:
        return []
    gaps = []
    for kind, prefix in (("decision-based", "hopskipjump"), ("transfer", "transfer:")):
        accs = _combined(table, gradient_free=True, prefix=prefix)
        for eps, w, b in zip(table.epsilons, white, accs or [], strict=False):
            if w - b > noise_level(w, table.images, floor):
                gaps.append({"norm": table.norm, "eps": eps, "kind": kind, "white_box": w, "black_box": b})
    # A score-based attack run on the survivors of the gradient attacks (AutoAttack's Square): every image
    # it breaks is one that no gradient attack broke.
    for name, extra in table.extra_broken.items():
        if not table.gradient_free.get(name):
            continue
        for i, (eps, added) in enumerate(zip(table.epsilons, extra, strict=True)):
            if added > noise_level(white[i], table.images, floor):
                gaps.append({"norm": table.norm, "eps": eps, "kind": "score-based", "white_box": white[i],
                             "black_box": white[i] - added, "attack": name})  # fmt: skip
    return gaps


def describe_gap(g: dict[str, Any]) -> str:
    """One gap of :func:`_gaps` in words: by what the gradient-free attacks broke beyond the gradient attacks,
    image by image (a score-based attack ran on the gradient attacks' survivors, so it has no robust accuracy of
    its own either); older results' gaps, by robust accuracy."""
    where = f"at {g['norm']} eps {g['eps']:g}"
    if "attack" in g:
        added = 100 * (g["white_box"] - g["black_box"])
        several = "," in g["attack"]
        return (f"{where} the {g['kind']} attack{'s' if several else ''} {g['attack']} broke {added:.1f} points of "
                f"images that no gradient attack had broken (gradient attacks leave {g['white_box']:.1%})")  # fmt: skip
    return (f"{where} a {g['kind']} attack leaves {g['black_box']:.1%} robust accuracy, gradient attacks "
            f"{g['white_box']:.1%}")  # fmt: skip


CE_ATTACKS = ("fgsm", "pgd", "apgd-ce")  # attacks on the cross-entropy loss
ITERATIVE_CE = ("pgd", "apgd-ce")  # the iterative ones among them


def one_step_gap(table: RobustnessTable) -> list[float] | None:
    """Per budget: the best iterative cross-entropy attack's robust accuracy minus one step's (FGSM) on the same
    loss.  Positive: one step did better, which iterations on the same loss should never let happen (Carlini et
    al.), unless its gradient misleads them; None when either is missing."""
    return _best_gap(table, ITERATIVE_CE, ("fgsm",))


DLR_ATTACKS = ("apgd-t",)  # attacks on the scale-invariant (targeted) DLR loss


def ce_dlr_gap(table: RobustnessTable) -> list[float] | None:
    """Per budget: the best cross-entropy attack's robust accuracy minus the DLR attack's.  A large gap
    means cross-entropy attacks are starved (the loss is flat where the scores are all near zero, or the
    softmax saturates), the failure that overstates large-n robustness; None when either kind is missing."""
    return _best_gap(table, CE_ATTACKS, DLR_ATTACKS)


def _best_gap(table: RobustnessTable, first: tuple[str, ...], second: tuple[str, ...]) -> list[float] | None:
    """Per budget: the lowest robust accuracy of the ``first`` attacks minus that of the ``second`` ones; None
    when the table has none of either."""
    a = [table.attacks[name] for name in first if name in table.attacks]
    b = [table.attacks[name] for name in second if name in table.attacks]
    if not a or not b:
        return None
    return [min(x[i] for x in a) - min(y[i] for y in b) for i in range(len(table.epsilons))]


@torch.no_grad()
def starvation(model: nn.Module, result: Any, threshold: float = 1e-3) -> list[float] | None:
    """Per budget: the share of a cross-entropy attack's end points at which every logit is within
    ``threshold`` of zero, where the softmax is uniform and the loss sits at ln 10 with no usable gradient
    (the dead end of CE attacks on large-n DAMs).  None without a result."""
    if result is None:
        return None
    logits = as_logits(model).eval()
    device = next(model.parameters()).device
    shares = []
    for adversarials in result.adversarials:
        out = torch.cat([logits(adversarials[i : i + 1000].to(device)) for i in range(0, len(adversarials), 1000)])
        shares.append(float((out.abs().amax(dim=1) < threshold).float().mean()) if len(out) else 0.0)
    return shares


def masking_verdict(
    tables: RobustnessTable | list[RobustnessTable],
    health: list[GradientHealth],
    starved: dict[str, list[float] | None] | None = None,
    *,
    zero_limit: float = 0.05,
    dead_end_limit: float = 0.05,
    floor: float = MASKING_FLOOR,
) -> dict[str, Any]:
    """A plain verdict from the gradient health, the white-box / black-box / transfer comparison and the
    cross-entropy-versus-DLR gap.

    ``tables``: one model's robustness tables (one per norm); a gap in any of them counts.  ``starved``: per
    norm, :func:`starvation` of the PGD end points; where under ``dead_end_limit`` of them are at the dead end, the
    cross-entropy-versus-DLR gap is not called starvation.  The verdict weighs the strongest attack: it names, per
    norm, the attack that left the lowest robust accuracy and the weaker ones it beat.
    """
    tables = [tables] if isinstance(tables, RobustnessTable) else list(tables)
    if not tables or len({t.model for t in tables}) != 1:
        raise InputError("masking_verdict needs one or more tables of one model")
    model = tables[0].model
    sick = [f"{h.zero_fraction + h.nonfinite_fraction:.0%} of input gradients are zero or non-finite in {h.dtype}"
            for h in health if h.zero_fraction + h.nonfinite_fraction > zero_limit]  # fmt: skip
    gaps = [g for t in tables for g in _gaps(t, floor)]
    checked = [t.norm for t in tables if any(t.gradient_free.values())]
    unchecked = [t.norm for t in tables if not any(t.gradient_free.values())]
    gap_reasons = []
    for norm in dict.fromkeys(g["norm"] for g in gaps):
        g = max((g for g in gaps if g["norm"] == norm), key=lambda g: g["white_box"] - g["black_box"])
        gap_reasons.append(describe_gap(g))
    reasons = [*sick, *gap_reasons]
    ce_gaps = []
    for t in tables:
        gap = ce_dlr_gap(t)
        if gap is None:
            continue
        i = max(range(len(gap)), key=lambda j: gap[j])
        dlr = min(t.attacks[a][i] for a in DLR_ATTACKS if a in t.attacks)
        if gap[i] > noise_level(dlr, t.images, floor):
            share = (starved or {}).get(t.norm)
            ce_gaps.append({"norm": t.norm, "eps": t.epsilons[i], "ce": dlr + gap[i], "dlr": dlr,
                            "dead_end_share": share[i] if share else None})  # fmt: skip
    ce_reasons = []
    for g in ce_gaps:
        share = g["dead_end_share"]
        dead = "" if share is None else f"; {share:.0%} of PGD's end points have every score within 1e-3 of zero"
        ce_reasons.append(
            f"at {g['norm']} eps {g['eps']:g} targeted APGD on the DLR loss leaves {g['dlr']:.1%} robust accuracy, "
            f"the best cross-entropy attack {g['ce']:.1%}{dead}"
        )
    reasons += ce_reasons
    parts = []
    if ce_gaps:
        worst_gap = max(g["ce"] - g["dlr"] for g in ce_gaps)
        if all(g["dead_end_share"] is not None and g["dead_end_share"] < dead_end_limit for g in ce_gaps):
            # a small model (DAM_2, an MLP) can show the gap too, without the large-n dead end
            cause = ("cross-entropy attacks fall short of the DLR loss, though not at the dead end where every score "
                     "is near zero (the share of such end points is given)")  # fmt: skip
        else:
            cause = ("cross-entropy attacks are starved (they stall where the scores are all near zero, the share of "
                     "such end points is given, or where the softmax saturates)")  # fmt: skip
        parts.append(
            f"{cause}: {'; '.join(ce_reasons)}. "
            f"They overstate its robustness by up to {100 * worst_gap:.1f} points; the scale-invariant DLR loss is not "
            "fooled, and the worst case includes it"
        )
    if gaps:
        overstated = max(g["white_box"] - g["black_box"] for g in gaps)
        parts.append(
            f"gradient masking suspected: {'; '.join(gap_reasons)}. Gradient attacks overstate its "
            f"robustness by up to {100 * overstated:.1f} points of robust accuracy (masked gradients, or gradient "
            "attacks too weak at their step budget); trust the worst-case numbers, which include the "
            "gradient-free attacks"
        )
    if sick:
        parts.append(f"gradient masking suspected: {'; '.join(sick)}, so gradient attacks cannot be trusted here")
    legacy = [t.norm for t in tables if any(t.gradient_free.values()) and not t.beyond_gradients]
    if not gaps and checked:
        # what they broke beyond the gradient attacks is said, not called noise: those images are real misses of the
        # gradient attacks (counted in the worst case), only too few for this check to call them masking
        beyond = max((a for t in tables for shares in t.beyond_gradients.values() for a in shares), default=0.0)
        how = ("do no better at the same budgets" if legacy else
               f"broke, each kind on its own, at most {100 * beyond:.1f} points of robust accuracy among the images "
               f"every gradient attack left, under this check's threshold for masking (two standard errors, at "
               f"least {100 * floor:.0f} points); the worst case counts them")  # fmt: skip
        parts.append(
            f"no sign that the gradient attacks together overstate its robustness in {' and '.join(checked)}: "
            f"attacks that need no gradients (within their query budgets) {how}"
        )
    if legacy:
        parts.append(
            f"in {' and '.join(legacy)} the gradient-free attacks are compared by robust accuracy only: this result "
            "(dam 0.7 or older) keeps no per-image record, so images they broke that every gradient attack left go "
            "unseen unless they lower the accuracy; attack again (dam attack --force, or dam reproduce) to compare "
            "image by image"
        )
    if health and not sick:
        parts.append("its input gradients at the clean images are finite and non-zero")
    if unchecked:
        parts.append(
            f"masking not checked in {' and '.join(unchecked)}: no gradient-free attack was run there, so it "
            "cannot be ruled out"
        )
    strongest = {t.norm: _strongest(t) for t in tables}
    for norm, s in strongest.items():
        if s and s["weakest"] is None:
            parts.append(f"in {norm} every attack left the same robust accuracy at every budget "
                         f"({s['robust_accuracy']:.1%} at eps {s['eps']:g}): none is the strongest")  # fmt: skip
        elif s:
            parts.append(f"strongest in {norm}: {s['attack']} (robust accuracy {s['robust_accuracy']:.1%} at eps "
                         f"{s['eps']:g}, where {s['weakest']} left {s['weakest_accuracy']:.1%})")  # fmt: skip
    verdict = f"{model}: " + "; ".join(parts) + "."
    worst = {t.norm: dict(zip((f"{e:g}" for e in t.epsilons), t.worst_case, strict=True)) for t in tables}
    # Two answers, kept apart: whether the gradient attacks together may overstate robustness (bad gradients, or a
    # gradient-free attack doing better: the worst case is then owed to the gradient-free attacks), and whether the
    # cross-entropy attacks alone do (their loss's gradient vanishes on a large-n DAM; the DLR loss is not fooled and
    # the worst case includes it).  The second is masking of one loss, not of the model's gradients.
    return {"model": model, "masking_suspected": bool(sick or gaps), "ce_overstates": bool(ce_gaps),
            "compared_by_accuracy": legacy,
            "verdict": verdict, "reasons": reasons, "gaps": gaps, "bad_gradients": sick, "ce_dlr_gaps": ce_gaps,
            "strongest": strongest, "worst_case": worst, "unchecked": unchecked,
            "gradient_health": [h.to_json() for h in health]}  # fmt: skip


def _strongest(table: RobustnessTable) -> dict[str, Any] | None:
    """The attack with the lowest robust accuracy (over the budgets where attacks disagree most), and the
    weakest attack there: what the stronger one found that the weaker one missed."""
    alone = {a: accs for a, accs in table.attacks.items() if not a.endswith("(on survivors)")}
    if len(alone) < 2:
        return None
    i = max(
        range(len(table.epsilons)), key=lambda j: max(a[j] for a in alone.values()) - min(a[j] for a in alone.values())
    )
    # Ties go to the attack stronger (weaker) over all budgets, then to the first name: never to the order the
    # attacks were run or saved in, so that a verdict re-derived from a saved result is the one first given.
    best = min(sorted(alone), key=lambda a: (alone[a][i], sum(alone[a])))
    weakest = max(sorted(alone), key=lambda a: (alone[a][i], sum(alone[a])))
    if alone[best] == alone[weakest]:  # every attack the same at every budget: no attack beat another
        return {"attack": best, "eps": table.epsilons[i], "robust_accuracy": alone[best][i], "weakest": None,
                "weakest_accuracy": None}  # fmt: skip
    return {"attack": best, "eps": table.epsilons[i], "robust_accuracy": alone[best][i], "weakest": weakest,
            "weakest_accuracy": alone[weakest][i]}  # fmt: skip
