"""A deployable junk detector (end of section 5 of the paper).

An accurate but vulnerable classifier is paired with a large-n DAM, the "guard": adversarial and rubbish
images that fool small-n models leave a large-n model unconfident, so an input the guard is unsure about is
rejected as junk, and every other input gets the classifier's label.  The guard's score is the paper's
confidence Z = max_alpha softmax(beta_sm * Y)_alpha, and the threshold on it is chosen on held-out clean
images for a target false-rejection rate.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from dam.errors import DetectorError, InputError, check_positive, is_finite_number, plain_number
from dam.io import atomic_write_json, read_json_object
from dam.probes.confidence import PAPER_BETA_SM, confidence, model_outputs

JUNK = -1  # the label predict() gives a rejected input: no class index is negative
DEFAULT_FALSE_REJECTION = 0.05  # the share of clean images fit() may reject when not told
ROC_POINTS = 200  # enough to draw a smooth curve, small enough for a readable JSON file
HISTOGRAM_BINS = 40
# What a rejection means for each kind of set: a false alarm on clean images, a catch on junk, and on attacks
# one of the two safe outcomes (the other is the right label).
REJECTION_KEYS = {"clean": "false_rejection_rate", "junk": "junk_detection_rate", "attack": "rejection_rate"}


class Detector:
    """Classifier labels for the inputs the guard is confident about; :data:`JUNK` for the rest.

    Args:
        classifier: any module mapping images (B, 784) or (B, 1, 28, 28) in [0, 1] to (B, 10) class scores;
            only its argmax is used, so DAM outputs and MLP logits both work.
        guard: a model with outputs Y in [-1, 1] (a DAM; preferably large n, which the paper found robust).  Its
            outputs are not checked: another module (an MLP's logits) makes a detector on softmax(beta_sm *
            logits) instead, which the paper did not study.
        threshold: inputs whose guard score is below it are rejected (a finite number; above 1 rejects all).
            None (the default): not fitted yet; :meth:`fit` sets it, and until then the detector refuses to
            predict rather than accept every input.
        beta_sm: the softmax inverse temperature of the confidence; 3.2 is the paper's single value.
        false_rejection: the share of clean images :meth:`fit` may reject (kept in the record); None: fit uses
            :data:`DEFAULT_FALSE_REJECTION` (5%) unless given one.
        agreement: also reject inputs on which the guard's label differs from the classifier's.  The guard
            alone passes images one small step past the classifier's decision boundary (they still look
            like the true digit, so the guard is confident, and right) while the classifier gets them
            wrong; disagreement catches them.  In this mode an input the two disagree on has score 0,
            below every confidence (which is at least 1/10), so ROC curves and thresholds stay one scale.
    """

    def __init__(
        self,
        classifier: nn.Module,
        guard: nn.Module,
        threshold: float | None = None,
        beta_sm: float = PAPER_BETA_SM,
        *,
        false_rejection: float | None = None,
        agreement: bool = False,
    ) -> None:
        beta_sm = check_positive("beta_sm", beta_sm)
        if threshold is not None and not is_finite_number(plain_number(threshold)):
            raise InputError(f"threshold must be a finite number, got {threshold!r}")
        if false_rejection is not None:
            check_false_rejection(false_rejection)
        self.classifier = classifier
        self.guard = guard
        self.threshold = None if threshold is None else float(threshold)
        self.beta_sm = float(beta_sm)
        self.false_rejection = false_rejection
        self.agreement = agreement

    @classmethod
    def calibrate(
        cls,
        classifier: nn.Module,
        guard: nn.Module,
        clean_images: Tensor,
        false_rejection: float = 0.05,
        beta_sm: float = PAPER_BETA_SM,
        *,
        agreement: bool = False,
    ) -> Detector:
        """The detector with the highest threshold that rejects at most ``false_rejection`` of ``clean_images``
        (``cls(classifier, guard, false_rejection=...).fit(clean_images)``).

        Use images the classifier and guard were not trained on, and other images to evaluate it.
        """
        check_false_rejection(false_rejection)
        detector = cls(classifier, guard, None, beta_sm, false_rejection=false_rejection, agreement=agreement)
        return detector.fit(clean_images)

    def fit(self, clean_images: Tensor, false_rejection: float | None = None) -> Detector:
        """scikit-learn style: set the threshold to the highest that rejects at most ``false_rejection`` (default:
        the detector's own, else 5%) of ``clean_images``; returns the detector.  :meth:`predict` then labels inputs.
        No labels: the threshold is chosen on the guard's confidence alone."""
        rate = false_rejection if false_rejection is not None else self.false_rejection
        rate = DEFAULT_FALSE_REJECTION if rate is None else rate
        check_false_rejection(rate)
        if len(clean_images) == 0:
            raise InputError("no clean images to calibrate the detector's threshold on")
        scores = self.scores(clean_images)[0]
        if self.agreement and float((scores == 0).double().mean()) > rate:
            raise DetectorError(
                f"classifier and guard disagree on {float((scores == 0).double().mean()):.1%} of the clean images, "
                f"more than the false-rejection rate {rate:.1%}: no threshold can meet it"
            )
        self.threshold, self.false_rejection = threshold_for(scores, rate), float(rate)
        return self

    def guard_scores(self, images: Tensor) -> Tensor:
        """The guard's confidence Z per image, float64 on the CPU (batched, without gradients)."""
        return confidence(model_outputs(self.guard, images), self.beta_sm)

    def accept(self, images: Tensor) -> Tensor:
        """True where the guard is confident enough (and, in agreement mode, agrees) for the label to be used."""
        return self.decide(images)[1] != JUNK

    def predict(self, images: Tensor) -> Tensor:
        """The classifier's label of each image, or :data:`JUNK` (-1) where the guard rejects it."""
        return self.decide(images)[1]

    def decide(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Scores, detector labels (JUNK where rejected) and the classifier's own labels, in one pass.

        The score is the guard's confidence, or 0 where the two disagree in agreement mode.
        """
        self.check_fitted()
        scores, labels = self.scores(images)
        return scores, torch.where(scores >= self.threshold, labels, JUNK), labels

    def check_fitted(self) -> None:
        """InputError unless the detector has a threshold (fitted or given): before that it would accept anything."""
        if self.threshold is None:
            raise InputError("this detector has no threshold yet: fit(clean_images) first (or give threshold=)")

    def scores(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """The score each image is judged by (the guard's confidence; 0 where the two disagree in agreement mode)
        and the classifier's labels; no threshold needed."""
        outputs = model_outputs(self.guard, images)
        scores = confidence(outputs, self.beta_sm)
        labels = model_outputs(self.classifier, images).argmax(dim=1)
        if self.agreement:
            scores = torch.where(outputs.argmax(dim=1).to(labels.device) == labels, scores, 0.0)
        return scores, labels

    def settings(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "beta_sm": self.beta_sm, "false_rejection": self.false_rejection,
                "agreement": self.agreement}  # fmt: skip

    def save(
        self,
        path: str | os.PathLike[str],
        *,
        classifier_run: str | os.PathLike[str] | None = None,
        guard_run: str | os.PathLike[str] | None = None,
    ) -> Path:
        """The settings as JSON; with the run folders recorded, :meth:`load` can rebuild the detector."""
        self.check_fitted()  # a detector without a threshold could not be loaded again
        path = Path(path)
        atomic_write_json(path, {**self.settings(), **run_folders(classifier_run, guard_run)})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, device: torch.device | str | None = None) -> Detector:
        """A detector from a JSON file written by :meth:`save` or by ``dam detect`` (its detector.json)."""
        from dam.runs import load_model

        saved = read_json_object(path, "no detector was saved there")
        missing = [k for k in ("threshold", "classifier", "guard") if saved.get(k) is None]
        if missing:
            raise InputError(f"{path}: no {', '.join(missing)} recorded; it does not describe a whole detector")
        return cls(
            load_model(saved["classifier"], device=device),
            load_model(saved["guard"], device=device),
            saved["threshold"],
            saved.get("beta_sm", PAPER_BETA_SM),
            false_rejection=saved.get("false_rejection"),
            agreement=bool(saved.get("agreement", False)),
        )


def run_folders(
    classifier_run: str | os.PathLike[str] | None, guard_run: str | os.PathLike[str] | None
) -> dict[str, str | None]:
    """Absolute run folders, so that the saved detector can be loaded from any working directory."""
    runs = {"classifier": classifier_run, "guard": guard_run}
    return {k: None if v is None else str(Path(v).resolve()) for k, v in runs.items()}


def check_false_rejection(rate: float) -> None:
    value = plain_number(rate)
    if isinstance(value, bool) or not isinstance(value, (int, float)):  # labels given in its place: named, not printed
        shown = repr(rate) if isinstance(rate, str) else f"a {type(rate).__name__}"
        raise InputError(f"false rejection rate must be a number in [0, 1), got {shown}")
    if not (is_finite_number(value) and 0 <= value < 1):  # 1 would reject every clean image too
        raise InputError(f"false rejection rate must be in [0, 1), got {rate!r}")


def threshold_for(scores: Tensor, false_rejection: float) -> float:
    """The largest threshold t with #(scores < t) <= false_rejection * len(scores).

    Ties make the rate a step function: no threshold above the k-th smallest score (0-based, k the allowed
    number of rejections) rejects k or fewer, and at it only the scores strictly below are rejected, which
    are at most k however many scores tie with it.
    """
    check_false_rejection(false_rejection)
    if len(scores) == 0:
        raise InputError("no scores to choose a threshold from")
    n = len(scores)
    allowed = math.floor(false_rejection * n * (1 + 1e-12))  # 0.29 * 100 is 28.999...; 29/100 is still <= 0.29
    while allowed > 0 and allowed / n > false_rejection:
        allowed -= 1
    return float(scores.double().sort().values[allowed])


def noise_images(
    count: int, kind: Literal["gaussian", "uniform"] = "uniform", generator: torch.Generator | None = None
) -> Tensor:
    """Junk inputs (count, 784), float32 in [0, 1].

    ``uniform``: every pixel U[0, 1].  ``gaussian``: every pixel N(0.5, 0.25^2), clipped to [0, 1]: mid-grey
    on average, with +-2 standard deviations spanning the pixel range, so about 2.3% of pixels are clipped to
    each of black and white.  (The paper's rubbish searches start from the much fainter N(0.5, 0.05^2).)
    """
    if count < 0:
        raise InputError(f"noise image count must be >= 0, got {count}")
    if kind == "uniform":
        return torch.rand(count, 784, generator=generator)
    if kind == "gaussian":
        return (0.5 + 0.25 * torch.randn(count, 784, generator=generator)).clamp(0, 1)
    raise InputError(f"noise kind must be 'gaussian' or 'uniform', got {kind!r}")


def score_roc(clean_scores: Tensor, set_scores: Tensor) -> dict[str, Any]:
    """ROC of telling the set from clean images by the guard score; the set is the positive class.

    Its AUC and at most :data:`ROC_POINTS` (fpr, tpr) points, JSON-able: one format for every detector report.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    truth = torch.cat([torch.zeros(len(clean_scores)), torch.ones(len(set_scores))]).numpy()
    junkness = (-torch.cat([clean_scores, set_scores])).numpy()  # low confidence = likely junk
    fpr, tpr, _ = roc_curve(truth, junkness)
    keep = torch.linspace(0, len(fpr) - 1, min(len(fpr), ROC_POINTS)).round().long().unique()
    return {"auc": float(roc_auc_score(truth, junkness)), "fpr": fpr[keep.numpy()].tolist(),
            "tpr": tpr[keep.numpy()].tolist()}  # fmt: skip


# What an attack set's ROC is of, in the reproduction's reuse key: a result made otherwise is made again.
ROC_RULE = "an attack set's ROC is of its images that fool the classifier (dam 0.10)"


def _rate(mask: Tensor) -> float:
    return float(mask.double().mean())


def evaluate_detector(
    detector: Detector, sets: dict[str, tuple[Tensor, Tensor | None]], clean: str = "clean"
) -> dict[str, Any]:
    """How the detector treats each set of images, as a JSON-able dict.

    ``sets`` maps a name to (images, true labels), labels None for junk (noise, rubbish): junk should be
    rejected; labelled sets other than ``clean`` are attacks (adversarial images with their TRUE labels), for
    which both a rejection and a correct label are safe outcomes.  Every set gets its acceptance rate and a
    histogram of guard scores; every set but ``clean`` gets the ROC (and AUC) of telling it from ``clean`` by
    the guard score, with the detector's operating point on it; for an attack set, of its images that fool the
    classifier (``fooling`` of them; no ROC where none does): those are what the guard must catch.
    """
    if clean not in sets:
        raise InputError(f"no clean set named {clean!r} among {sorted(sets)}")
    empty = [name for name, (images, _) in sets.items() if len(images) == 0]
    if empty:
        raise InputError(f"no images in set(s) {', '.join(empty)}")
    scores, results, positives = {}, {}, {}
    for name, (images, labels) in sets.items():
        score, decided, own = detector.decide(images)
        accepted = decided != JUNK
        kind = "clean" if name == clean else "junk" if labels is None else "attack"
        r: dict[str, Any] = {"kind": kind, "count": len(images), "acceptance_rate": _rate(accepted),
                             "mean_score": float(score.mean())}  # fmt: skip
        r[REJECTION_KEYS[kind]] = _rate(~accepted)
        if labels is not None:
            correct = own == labels.to(own.device)
            r["classifier_accuracy"] = _rate(correct)  # without the detector, for comparison
            r["accuracy_on_accepted"] = _rate(correct[accepted]) if bool(accepted.any()) else None
            if kind == "attack":
                r["safe_rate"] = _rate(~accepted | correct)
                # what the guard must catch are the images that fool the classifier: the ROC is of those
                positives[name] = ~correct
                r["fooling"] = int((~correct).sum())
        scores[name], results[name] = score, r
    for name, r in results.items():
        if name == clean:
            continue
        fooled = positives.get(name)
        if fooled is not None and not bool(fooled.any()):  # nothing to catch: no ROC
            continue
        caught = scores[name] if fooled is None else scores[name][fooled.to(scores[name].device)]
        r["roc"] = score_roc(scores[clean], caught)
        rejected = (r[REJECTION_KEYS[r["kind"]]] if fooled is None
                    else float((caught < detector.threshold).double().mean()))  # fmt: skip
        r["roc"]["operating_point"] = {"fpr": results[clean]["false_rejection_rate"], "tpr": rejected}
    every = torch.cat([*scores.values(), torch.tensor([detector.threshold], dtype=torch.float64)])
    lo, hi = float(every.min()), float(every.max())
    edges = torch.linspace(lo, hi if hi > lo else lo + 1e-6, HISTOGRAM_BINS + 1, dtype=torch.float64)
    for name, score in scores.items():
        results[name]["histogram"] = torch.histogram(score, edges).hist.long().tolist()
    return {**detector.settings(), "clean": clean, "histogram_edges": edges.tolist(), "sets": results}


def detector_figure(report: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """ROC of clean vs each set with the operating point marked (and of the adaptive attack per budget, where the
    report has one), and guard-score histograms with the threshold."""
    from dam.plotting import colormap, new_figure, save_figure

    fig = new_figure((12, 4.8))
    roc_ax, hist_ax = fig.subplots(1, 2)
    roc_ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    edges = report["histogram_edges"]
    for i, (name, r) in enumerate(report["sets"].items()):
        colour = colormap("tab20")(i % 20)  # more sets than the 10 default colours
        if "roc" in r:
            roc, point = r["roc"], r["roc"]["operating_point"]
            roc_ax.plot(roc["fpr"], roc["tpr"], color=colour, label=f"{name} (AUC {roc['auc']:.3f})")
            roc_ax.plot(point["fpr"], point["tpr"], "o", color=colour)
        total = max(sum(r["histogram"]), 1)  # fractions, so that sets of different sizes compare
        hist_ax.stairs([c / total for c in r["histogram"]], edges, color=colour, label=name)
    # The adaptive attack's adversarials the classifier alone gets wrong, per budget: dashed, as they are made
    # against the detector itself, not taken from elsewhere
    adaptive = [(k, b["roc"]) for k, b in (report.get("adaptive") or {}).get("budgets", {}).items() if b.get("roc")]
    for j, (key, roc) in enumerate(adaptive):
        colour = colormap("Dark2")(j % 8)
        point = roc["operating_point"]
        roc_ax.plot(roc["fpr"], roc["tpr"], color=colour, ls="--", label=f"adaptive {key} (AUC {roc['auc']:.3f})")
        roc_ax.plot(point["fpr"], point["tpr"], "s", color=colour)
    roc_ax.set_xlabel(f"clean images rejected ({report['clean']!r})")
    roc_ax.set_ylabel("set images rejected")
    title = "ROC: clean vs each set by guard score (dot: the detector)"
    if adaptive:
        title += "\ndashed: the adaptive attack's images the classifier gets wrong (square: the detector)"
    roc_ax.set_title(title, fontsize=9)
    roc_ax.legend(fontsize=7, loc="lower right")
    hist_ax.axvline(report["threshold"], color="black", ls="--", lw=1, label=f"threshold {report['threshold']:.4g}")
    hist_ax.set_yscale("symlog", linthresh=1e-3)
    hist_ax.set_xlabel(f"guard confidence Z = max softmax({report['beta_sm']:.3g} Y)")
    hist_ax.set_ylabel("fraction of the set")
    hist_ax.set_title("Guard scores: below the threshold is rejected as junk", fontsize=9)
    hist_ax.legend(fontsize=7, loc="upper right")  # a fixed place: "best" warns that it is slow on many bins
    return save_figure(fig, path)
