"""An adaptive attack on the junk detector: the attacker knows the guard, its threshold and its rule.

Every other detector number of this package is non-adaptive: the adversarials are made against the
classifier alone and the detector is then asked what it makes of them.  That measures the guard against
attackers who do not know it is there; Carlini & Wagner ("Adversarial examples are not easily detected",
2017) showed that detectors measured that way usually fall to one who does.  Their construction is used:

- :class:`DetectorSystem` is the whole detector as one differentiable 11-class model.  Logits 0..9 are the
  classifier's (:func:`dam.model.as_logits`); logit 10, "junk", is ``max_j l_j + c * m(x)``, where the
  rejection margin ``m`` is positive exactly where the detector rejects: ``m = threshold - Z`` with Z the
  guard's confidence, and in agreement mode, on inputs where the guard's label differs from the
  classifier's, ``m = max(threshold - Z, 0) + (max_j Y_j - Y_k)`` (Y the guard's outputs, k the
  classifier's label: the gap is positive when they disagree).  Its argmax is ``Detector.predict`` with
  junk as class 10 for every ``c > 0``, up to ties; ``c`` (``junk_scale``, logit units per unit of score)
  only weighs the guard's term against the classifier's in an attack's loss.
- Attack libraries count any label but the true one as a success, junk included, so on the 11-class model
  APGD stops at the first rejected point and APGD-T's target loop ends at junk, usually the runner-up
  class of a clean image.  :class:`SafeOutcomeView` folds the junk logit into the true class
  (``max(l_y, z_junk)``) for the images of one true class: its argmax differs from that class exactly when
  the detector's outcome is unsafe (a wrong label that is not rejected), so the libraries' own success
  test, early stopping and target choice serve the attacker's real goal.  (On the quick-preset DAM_2 guarded
  by DAM_30, L-inf 0.1, 200 images: APGD-T with 9 targets straight on the 11-class model left 32 images
  unsafe, 168 in junk; through the view, 138 unsafe.)
- :class:`AdaptiveDetectorAttack` runs the reference APGD-CE on the 11-class model (it finds the images an
  attacker can push off their label into junk at best) and APGD-CE and APGD-T on the view (the unsafe
  outcomes), and, for comparison, APGD-CE and APGD-T on the classifier alone: the non-adaptive attack.  The
  real detector (:meth:`Detector.predict`) judges every candidate, and each image gets its worst outcome:
  unsafe if any candidate is, else rejected if any is, else correct.
- Gradients alone are not enough against a large-n guard: far from every memory its outputs, and so the junk
  logit's gradient, vanish (the dead zone that starves cross-entropy attacks on DAM_30), and the APGD runs
  stall there.  On the cpu-preset DAM_2 guarded by DAM_30 (100 test images) their safe rate stopped at 11%
  (paper's rule) and 21% (agreement) from L-inf 0.2 to 0.5, where moving each image toward accepted digits of
  other classes, as far as the budget allows, left 3% and 1% at 0.5.  So the attack also tries that
  gradient-free move (:func:`blend_candidates`: toward every other attacked image of another class that the
  detector accepts with its right label), and each image keeps its worst outcome over both.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from dam.errors import InputError
from dam.model import NUM_CLASSES, as_logits
from dam.progress import progress_lines
from dam.robustness.attacks.autoattack import APGDCE, APGDT, check_targets
from dam.robustness.attacks.standard import check_attack_inputs, check_budgets, unbroken_share, within_budget
from dam.robustness.detector import JUNK, Detector, score_roc

logger = logging.getLogger(__name__)
PROGRESS = progress_lines(logger)  # a line per budget, in a notebook too

JUNK_CLASS = NUM_CLASSES  # the system model's extra class: the detector rejects
# What the attack is, beyond its settings, for reuse keys: results made otherwise (before dam 0.6, without the
# gradient-free move) are redone.
ADAPTIVE_RULE = (
    "apgd on the system and the view, and the move toward accepted images of other classes (dam 0.6); "
    "the ROC of each image's highest-scoring candidate that fools the classifier (dam 0.10)"
)
SYSTEM_NOTE = (
    "the detector as an 11-class model (Carlini & Wagner 2017): logits 0-9 the classifier's (as_logits), "
    "logit 10 = max_j l_j + junk_scale * margin, margin > 0 exactly where the detector rejects; attacked per "
    "true class through a view that folds the junk logit into the true class, so that the attack libraries' "
    "success (any other label) is exactly an unsafe outcome"
)


def _dtype_of(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


class DetectorSystem(nn.Module):
    """A :class:`Detector` as one differentiable 11-class model: the classifier's 10 logits and a junk logit.

    ``argmax(system(x)) == Detector.predict(x)`` with :data:`JUNK` as :data:`JUNK_CLASS`, for either rule and
    any ``junk_scale > 0``, up to ties (exact ties of logits, a guard whose top outputs tie in agreement mode,
    and a DAM classifier whose outputs tanh rounds to equal values: the detector labels by those outputs,
    the system by the unrounded scores).  Outputs are float64, so that a small margin is not rounded away.
    """

    def __init__(self, detector: Detector, junk_scale: float = 1.0) -> None:
        super().__init__()
        if not (junk_scale > 0 and math.isfinite(junk_scale)):
            raise InputError(f"junk_scale must be a positive finite number, got {junk_scale}")
        detector.check_fitted()  # the system's junk logit is measured against the threshold
        self.detector = detector
        self.classifier = as_logits(detector.classifier)
        self.guard = detector.guard
        self.junk_scale = float(junk_scale)

    @classmethod
    def fitted(cls, detector: Detector, images: Tensor) -> DetectorSystem:
        """The system with the junk scale :func:`junk_scale_for` chooses on ``images``."""
        return cls(detector, junk_scale_for(detector, images))

    def parts(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """The classifier's logits (B, 10) and the rejection margin (B,), both float64 and differentiable."""
        x = images.reshape(len(images), -1)
        logits = self.classifier(x.to(_dtype_of(self.detector.classifier))).double()
        outputs = self.guard(x.to(_dtype_of(self.guard))).double()
        detector = self.detector
        margin = detector.threshold - torch.softmax(detector.beta_sm * outputs, dim=1).amax(dim=1)
        # The detector scores a disagreement 0, which only a positive threshold rejects.
        if detector.agreement and detector.threshold > 0:
            label = logits.argmax(dim=1, keepdim=True)
            gap = outputs.amax(dim=1) - outputs.gather(1, label)[:, 0]
            disagree = outputs.argmax(dim=1) != label[:, 0]
            margin = torch.where(disagree, margin.clamp(min=0) + gap, margin)
        return logits, margin

    def forward(self, images: Tensor) -> Tensor:
        logits, margin = self.parts(images)
        junk = logits.amax(dim=1) + self.junk_scale * margin
        return torch.cat([logits, junk[:, None]], dim=1)


class SafeOutcomeView(nn.Module):
    """The system for images of one true class, with junk folded into it: 10 logits whose argmax differs from
    ``true_class`` exactly when the detector's outcome is unsafe (up to the system's ties).

    A rejection is as safe as the right label, so for the attacker both are "the true class"; an untargeted
    attack library on this view then succeeds only by an unsafe outcome, and APGD-T's targets are the nine
    wrong classes, ranked by the system's logits."""

    def __init__(self, system: DetectorSystem, true_class: int) -> None:
        super().__init__()
        if not 0 <= true_class < NUM_CLASSES:
            raise InputError(f"true_class must be a class index in [0, {NUM_CLASSES}), got {true_class}")
        self.system, self.true_class = system, int(true_class)

    def forward(self, images: Tensor) -> Tensor:
        out = self.system(images)
        k = self.true_class
        folded = torch.maximum(out[:, k], out[:, JUNK_CLASS])
        return torch.cat([out[:, :k], folded[:, None], out[:, k + 1 : JUNK_CLASS]], dim=1)


@torch.no_grad()
def junk_scale_for(detector: Detector, images: Tensor) -> float:
    """The median gap between the classifier's two highest logits over the median |threshold - Z| on images.

    Any positive scale gives the same system decisions; this one puts the guard's term and the classifier's on
    one footing in the attack's loss, so that neither's gradient drowns the other's.  1.0 when either median
    is 0 (e.g. a single image exactly at the threshold).
    """
    detector.check_fitted()
    if len(images) == 0:
        raise InputError("no images to choose the junk scale on")
    x = images.reshape(len(images), -1)
    logits = as_logits(detector.classifier)(x.to(_dtype_of(detector.classifier))).double().cpu()
    top = logits.topk(2, dim=1).values
    margin = (detector.guard_scores(x) - detector.threshold).abs()
    gap, spread = float((top[:, 0] - top[:, 1]).median()), float(margin.median())
    return gap / spread if gap > 0 and spread > 0 and math.isfinite(gap / spread) else 1.0


@dataclass
class DetectorOutcome:
    """What the real detector makes of one attack's adversarials, per budget (first axis, E) and image (B).

    Each image has several candidates (one per attack run, the clean image where a run failed, and the kept
    candidate of each smaller budget of the norm, which is inside this one too); it keeps the worst for the
    detector: an unsafe one if any, else a rejected one on which the classifier alone is wrong, else a rejected
    one, else the first.  Outcomes are therefore monotone in the budget.
    """

    attack: str
    norm: str
    epsilons: list[float]
    adversarials: Tensor  # (E, B, 784): the kept candidate, inside its budget and [0, 1]
    labels: Tensor  # (E, B): Detector.predict of the kept candidate (JUNK where rejected)
    scores: Tensor  # (E, B): the detector's score of it (the guard's confidence; 0 on disagreement in agreement mode)
    unsafe: Tensor  # (E, B): some candidate got a wrong label that the detector accepted: the attack succeeded
    rejected: Tensor  # (E, B): no candidate unsafe and some rejected as junk
    classifier_fooled: Tensor  # (E, B): the classifier alone gets the kept candidate wrong
    seconds: list[float] = field(default_factory=list)
    queries_per_image: list[float] = field(default_factory=list)  # system (or classifier) evaluations
    # per kind of candidate (an attack run, "blend", "smaller budget"), per budget: images it made unsafe alone
    unsafe_by: dict[str, list[int]] = field(default_factory=dict)
    # (E, B): per image the guard's highest score among the candidates that fool the classifier alone (the
    # attacker's best try at passing the guard), and whether any does: what the ROC is of
    attacker_scores: Tensor | None = None
    attacker_fooled: Tensor | None = None

    def safe_rate(self) -> list[float]:
        """Per budget: the fraction of images whose outcome is safe (the right label, or junk)."""
        return [unbroken_share(u) for u in self.unsafe]

    def rejection_rate(self) -> list[float]:
        """Per budget: the fraction of images the attack could push off their label only into junk."""
        return [float(r.double().mean()) for r in self.rejected]

    def record(self, e: int, clean_scores: Tensor, threshold: float) -> dict[str, Any]:
        """Budget ``e`` as JSON: rates, cost, and the ROC of the guard score on the kept candidates the classifier
        alone gets wrong vs ``clean_scores`` (None when there are none), with the detector's operating point."""
        if self.attacker_scores is not None and self.attacker_fooled is not None:
            fooled = self.attacker_scores[e][self.attacker_fooled[e]]
        else:  # (an outcome built without them: the kept candidates, the detector's worst)
            fooled = self.scores[e][self.classifier_fooled[e]]
        roc = None
        if len(fooled) and len(clean_scores):
            roc = score_roc(clean_scores, fooled)
            roc["operating_point"] = {"fpr": float((clean_scores < threshold).double().mean()),
                                      "tpr": float((fooled < threshold).double().mean())}  # fmt: skip
        return {"attack": self.attack, "safe_rate": self.safe_rate()[e], "rejection_rate": self.rejection_rate()[e],
                "unsafe_count": int(self.unsafe[e].sum()), "classifier_fooled_count": len(fooled),
                "seconds": round(self.seconds[e], 2), "queries_per_image": round(self.queries_per_image[e], 1),
                "unsafe_by": {k: v[e] for k, v in self.unsafe_by.items()}, "roc": roc}  # fmt: skip


@dataclass
class DetectorAttackResult:
    """The adaptive attack, the non-adaptive one (the same attacks on the classifier alone) and the classifier's
    robust accuracy under them, per budget."""

    adaptive: DetectorOutcome
    non_adaptive: DetectorOutcome
    classifier_robust_accuracy: list[float]
    junk_scale: float
    settings: dict[str, Any]

    def worst_case_safe_rate(self) -> list[float]:
        """Per budget: the fraction of images safe under both attacks (neither dominates the other per image)."""
        either = self.adaptive.unsafe | self.non_adaptive.unsafe
        return [unbroken_share(u) for u in either]

    def report(self, clean_scores: Tensor, threshold: float) -> dict[str, Any]:
        """JSON per budget, keyed ``"<norm> <eps>"``: the adaptive attack's rates at the top, the non-adaptive
        attack's under ``non_adaptive``; ``clean_scores`` are the detector's scores of held-out clean images."""
        budgets = {}
        for e, eps in enumerate(self.adaptive.epsilons):
            entry = {"norm": self.adaptive.norm, "eps": eps, "count": self.adaptive.unsafe.shape[1],
                     **self.adaptive.record(e, clean_scores, threshold),
                     "classifier_robust_accuracy": self.classifier_robust_accuracy[e],
                     "worst_case_safe_rate": self.worst_case_safe_rate()[e],
                     "non_adaptive": self.non_adaptive.record(e, clean_scores, threshold)}  # fmt: skip
            budgets[f"{self.adaptive.norm} {eps:g}"] = entry
        return budgets


class AdaptiveDetectorAttack:
    """The detector-aware attack: ``AdaptiveDetectorAttack(detector, [0.1, 0.3])(images, labels)``.

    Per budget: APGD-CE on :class:`DetectorSystem`, then per true class APGD-CE and APGD-T (``targets`` runner-up
    classes) on :class:`SafeOutcomeView`, APGD-T on the images APGD-CE left safe; and the non-adaptive baseline,
    APGD-CE then APGD-T on the classifier alone.  All are the reference implementation through the adapters
    of :mod:`dam.robustness.attacks.autoattack` (seeded, query-counted, each success re-checked inside the
    budget and [0, 1]); every candidate is checked again here and judged by :meth:`Detector.predict`.

    Args:
        steps: APGD iterations per run (per target class for APGD-T).
        targets: APGD-T's target classes, the runner-ups of the view (9: every wrong class).
        junk_scale: c of the system's junk logit; None chooses it on the attacked clean images
            (:func:`junk_scale_for`).
    """

    name = "adaptive-detector"

    def __init__(
        self,
        detector: Detector,
        epsilons: Sequence[float],
        *,
        norm: str = "linf",
        steps: int = 100,
        targets: int = 9,
        junk_scale: float | None = None,
        batch_size: int = 500,
        seed: int = 0,
    ) -> None:
        detector.check_fitted()
        self.detector, self.norm, self.epsilons = detector, norm, check_budgets(norm, epsilons, positive=True)
        if steps < 1 or batch_size < 1:
            raise InputError(f"steps and batch_size must be at least 1, got {steps} and {batch_size}")
        targets = check_targets(targets)
        if junk_scale is not None and not (junk_scale > 0 and math.isfinite(junk_scale)):
            raise InputError(f"junk_scale must be a positive finite number, got {junk_scale}")
        self.steps, self.targets, self.junk_scale = steps, targets, junk_scale
        self.batch_size, self.seed = batch_size, seed

    def describe(self) -> dict[str, Any]:
        """Name and hyperparameters, for the records."""
        return {"attack": self.name, "norm": self.norm, "epsilons": self.epsilons, "steps": self.steps,
                "target_classes": self.targets, "junk_scale": self.junk_scale, "seed": self.seed,
                "system": SYSTEM_NOTE, "detector": self.detector.settings(),
                "adaptive": "apgd-ce on the 11-class system; apgd-ce, then apgd-t on what it left, on the view; "
                            "and each image moved toward the other classes' attacked images that the detector "
                            "accepts with their right label, as far as the budget allows (blend)",
                "non_adaptive": "apgd-ce, then apgd-t on what it left, on the classifier alone",
                "budgets": "each budget also keeps the adversarials found at the smaller budgets of its norm",
                "implementation": "pyautoattack (reference code of Croce & Hein)"}  # fmt: skip

    def __call__(self, images: Tensor, labels: Tensor) -> DetectorAttackResult:
        detector = self.detector
        device = next(detector.classifier.parameters()).device
        if len(images) == 0:
            raise InputError("no images to attack")
        x, y = check_attack_inputs(images, labels, device)
        scale = self.junk_scale if self.junk_scale is not None else junk_scale_for(detector, x)
        system = DetectorSystem(detector, scale).eval()
        adaptive: list[dict[str, Any]] = []
        baseline: list[dict[str, Any]] = []
        robust = []
        broken_before = torch.zeros(len(x), dtype=torch.bool)
        pool = accepted_pool(detector, x, y)  # what the gradient-free move aims at; the same for every budget
        # Budgets in increasing order, so that each inherits the adversarials of the smaller ones.
        for eps in sorted(self.epsilons):
            started = time.perf_counter()
            done = adaptive[-1]["unsafe"] if adaptive else torch.zeros(len(x), dtype=torch.bool)
            candidates, rows = self._adaptive(system, x, y, eps, done)
            blend, blend_rows = blend_candidates(detector, x, y, eps, norm=self.norm, pool=pool)
            candidates["blend"], rows = blend, rows + blend_rows * len(x)
            if adaptive:
                candidates["smaller budget"] = adaptive[-1]["adversarials"]
            adaptive.append(self._judge(x, y, candidates, eps, time.perf_counter() - started, rows))
            started = time.perf_counter()
            candidates, rows, broken = self._non_adaptive(x, y, eps)
            if baseline:
                candidates["smaller budget"] = baseline[-1]["adversarials"]
            baseline.append(self._judge(x, y, candidates, eps, time.perf_counter() - started, rows))
            broken_before |= broken.cpu()
            robust.append(unbroken_share(broken_before))
            safe, plain = 100 * adaptive[-1]["safe"], 100 * baseline[-1]["safe"]
            PROGRESS(f"adaptive attack {self.norm} eps {eps:g}: safe {safe:.1f}% (non-adaptive {plain:.1f}%), "
                     f"classifier robust accuracy {100 * robust[-1]:.1f}%")  # fmt: skip
        order = sorted(range(len(self.epsilons)), key=lambda e: self.epsilons[e])
        back = [order.index(e) for e in range(len(self.epsilons))]  # results in the order the budgets were given
        adaptive, baseline, robust = [adaptive[i] for i in back], [baseline[i] for i in back], [robust[i] for i in back]
        settings = {**self.describe(), "junk_scale": scale}
        return DetectorAttackResult(self._stack("adaptive", adaptive), self._stack("non-adaptive", baseline), robust,
                                    scale, settings)  # fmt: skip

    def _common(self) -> dict[str, Any]:
        return {"norm": self.norm, "steps": self.steps, "batch_size": self.batch_size, "seed": self.seed}

    def _adaptive(self, system: DetectorSystem, x: Tensor, y: Tensor, eps: float,
                  done: Tensor) -> tuple[dict[str, Tensor], float]:  # fmt: skip
        """Candidates (the clean image where a run failed or was not needed) and the system evaluations spent, in
        all; images ``done`` (unsafe at a smaller budget) are not attacked again."""
        first = APGDCE(system, [eps], **self._common())(x, y, attack_only=~done[None])
        rows = first.queries_per_image * len(x)
        unsafe = done | self._unsafe(first.adversarials[0], y)
        by_ce, by_t = first.adversarials[0].clone(), first.adversarials[0].clone()
        for k in y.unique().tolist():
            part = (y == k).nonzero()[:, 0].cpu()
            view = SafeOutcomeView(system, k).eval()
            todo = ~unsafe[part][None]
            ce = APGDCE(view, [eps], **self._common())(x[part], y[part], attack_only=todo)
            left = todo & ~ce.success
            by_ce[part] = ce.adversarials[0]
            rows += ce.queries_per_image * len(part)
            if left.any():
                apgd_t = APGDT(view, [eps], targets=self.targets, **self._common())(x[part], y[part], attack_only=left)
                by_t[part] = apgd_t.adversarials[0]
                rows += apgd_t.queries_per_image * len(part)
        return {"apgd-ce (system)": first.adversarials[0], "apgd-ce (view)": by_ce, "apgd-t (view)": by_t}, rows

    def _non_adaptive(self, x: Tensor, y: Tensor, eps: float) -> tuple[dict[str, Tensor], float, Tensor]:
        classifier = self.detector.classifier
        ce = APGDCE(classifier, [eps], **self._common())(x, y)
        candidates, rows, broken = {"apgd-ce": ce.adversarials[0]}, ce.queries_per_image * len(x), ce.success[0]
        if (~broken).any():
            apgd_t = APGDT(classifier, [eps], targets=self.targets, **self._common())(x, y, attack_only=~ce.success)
            candidates["apgd-t"] = apgd_t.adversarials[0]
            rows += apgd_t.queries_per_image * len(x)
            broken = broken | apgd_t.success[0]
        return candidates, rows, broken

    def _unsafe(self, adversarials: Tensor, y: Tensor) -> Tensor:
        predicted = self.detector.predict(adversarials)
        return (predicted != JUNK) & (predicted != y.cpu())

    def _judge(self, x: Tensor, y: Tensor, candidates: dict[str, Tensor], eps: float, seconds: float,
               rows: float) -> dict[str, Any]:  # fmt: skip
        """Every candidate through the real detector; per image the worst outcome and the candidate kept."""
        clean = x.cpu()
        cand = torch.stack([c.cpu() for c in candidates.values()])  # (C, B, 784)
        valid = torch.stack([self._valid(c, clean, eps) for c in cand])
        if not bool(valid.all()):  # never expected: the adapters already verify every success
            logger.warning("%d adversarial candidates outside the budget or [0, 1] discarded", int((~valid).sum()))
            cand = torch.where(valid[..., None], cand, clean[None])
        count, num = cand.shape[:2]
        scores, predicted, own = self.detector.decide(cand.reshape(count * num, -1))
        scores, predicted, own = (t.reshape(count, num) for t in (scores, predicted, own.cpu()))
        truth = y.cpu()[None]
        unsafe_c, rejected_c, fooled_c = (predicted != JUNK) & (predicted != truth), predicted == JUNK, own != truth
        pick = (4 * unsafe_c.long() + 2 * rejected_c.long() + fooled_c.long()).argmax(dim=0)
        index = torch.arange(num)
        unsafe = unsafe_c.any(dim=0)
        alone = {name: int((unsafe_c[c] & (unsafe_c.sum(dim=0) == 1)).sum()) for c, name in enumerate(candidates)}
        # for the ROC, the attacker's best: the highest guard score among the candidates that fool the classifier
        attacker = torch.where(fooled_c, scores.double(), -torch.inf).amax(dim=0)
        return {"adversarials": cand[pick, index], "unsafe_by": alone, "attacker_scores": attacker,
                "attacker_fooled": fooled_c.any(dim=0),
                "labels": predicted[pick, index], "scores": scores[pick, index],
                "unsafe": unsafe, "rejected": ~unsafe & rejected_c.any(dim=0), "fooled": fooled_c[pick, index],
                "seconds": seconds, "queries": rows / num, "safe": unbroken_share(unsafe)}  # fmt: skip

    def _valid(self, adversarials: Tensor, images: Tensor, eps: float) -> Tensor:
        in_box = (adversarials >= 0).all(dim=1) & (adversarials <= 1).all(dim=1)
        finite = torch.isfinite(adversarials).all(dim=1)
        return in_box & finite & within_budget(self.norm, adversarials, images, eps)

    def _stack(self, attack: str, per_budget: list[dict[str, Any]]) -> DetectorOutcome:
        stack = lambda key: torch.stack([b[key] for b in per_budget])  # noqa: E731
        return DetectorOutcome(attack, self.norm, self.epsilons, stack("adversarials"), stack("labels"),
                               stack("scores"), stack("unsafe"), stack("rejected"), stack("fooled"),
                               [b["seconds"] for b in per_budget], [b["queries"] for b in per_budget],
                               {k: [b["unsafe_by"].get(k, 0) for b in per_budget]
                                for k in dict.fromkeys(k for b in per_budget for k in b["unsafe_by"])},
                               stack("attacker_scores"), stack("attacker_fooled"))  # fmt: skip


def unsafe_only_through(unsafe_by: dict[str, int] | None) -> str:
    """A record's ``unsafe_by`` as text: which kinds of candidate alone made images unsafe, and how many ("-" for
    results without it, made by dam 0.5 and older)."""
    if unsafe_by is None:
        return "-"
    return ", ".join(f"{k} {v}" for k, v in unsafe_by.items() if v) or "none alone"


@torch.no_grad()
def accepted_pool(detector: Detector, images: Tensor, labels: Tensor) -> Tensor:
    """Indices of the ``images`` that the detector accepts with their right label (``labels``)."""
    x, y = images.reshape(len(images), -1), labels.to(images.device)
    return (detector.predict(x).to(y.device) == y).nonzero()[:, 0]


@torch.no_grad()
def blend_candidates(detector: Detector, images: Tensor, labels: Tensor, eps: float, *,
                     norm: str = "linf", pool: Tensor | None = None) -> tuple[Tensor, float]:  # fmt: skip
    """A gradient-free attack that knows the detector: each image moved toward every other image of ``images``
    that has another label and that the detector accepts with its right label, as far as the budget allows
    (L-inf: each pixel by at most ``eps``; L2: along the straight line, to distance ``eps``).  Both moves stay
    between the two images, so inside [0, 1].  Returns per image the first move the detector gets unsafe
    (accepted with a wrong label), else the image itself, and the detector evaluations per image.

    It needs no gradient, so the guard's dead zone (outputs and gradients near zero far from every memory)
    does not stop it; at small budgets the gradient attacks are stronger, at large ones this is.  ``pool``: the
    indices :func:`accepted_pool` returns for these images, where the caller has them already."""
    x, y = images.reshape(len(images), -1), labels.to(images.device)
    targets = accepted_pool(detector, x, y) if pool is None else pool.to(y.device)
    out, evaluations = x.clone(), 0
    for i in range(len(x)):
        other = x[targets[y[targets] != y[i]]]
        if not len(other):
            continue
        step = other - x[i]
        if norm == "linf":
            step = step.clamp(-eps, eps)
        else:  # shortened a hair under eps, so that rounding cannot push the norm past it
            length = step.norm(dim=1, keepdim=True)
            step = step * (eps * (1 - 1e-6) / length.clamp(min=eps)).clamp(max=1.0)
        moved = x[i] + step
        predicted = detector.predict(moved).to(y.device)
        evaluations += len(moved)
        hit = ((predicted != JUNK) & (predicted != y[i])).nonzero()
        if len(hit):
            out[i] = moved[hit[0, 0]]
    return out.reshape(images.shape), evaluations / max(len(x), 1)
