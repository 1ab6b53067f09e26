"""The adaptive attack on the junk detector: the 11-class system model is the detector, the attack's outcomes are
the real detector's, and knowing the guard beats not knowing it where the guard stops the non-adaptive attack."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from dam.cli import main
from dam.robustness.adaptive import (
    JUNK_CLASS,
    AdaptiveDetectorAttack,
    DetectorSystem,
    SafeOutcomeView,
    accepted_pool,
    blend_candidates,
    junk_scale_for,
)
from dam.robustness.attacks.standard import within_budget
from dam.robustness.detector import JUNK, Detector
from fakes import prototype_images, prototype_model

BLOCK = 50  # pixels per class block of the block images


def block_features(x: Tensor, half: bool) -> Tensor:
    """Mean brightness of each class's block of pixels (B, 10); with ``half``, of the block's second half only."""
    blocks = x.reshape(len(x), -1)[:, : 10 * BLOCK].reshape(len(x), 10, BLOCK)
    return (blocks[..., BLOCK // 2 :] if half else blocks).mean(dim=-1)


class HalfBlockClassifier(nn.Module):
    """Logits 10 * (brightness of the second half of each block): blind to the first halves."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(10.0))

    def forward(self, x: Tensor) -> Tensor:
        return self.gain * block_features(x, half=True)


class BlockGuard(nn.Module):
    """Y = tanh(10 * (block brightness - mean block brightness)) in [-1, 1], reading whole blocks: confident when one
    block stands out.  An attack on the classifier alone brightens the second half of a wrong block and darkens the
    true block's, leaving two equal blocks for the guard (unconfident: rejected); an attacker who knows the guard
    moves the first halves too."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(10.0))

    def forward(self, x: Tensor) -> Tensor:
        f = block_features(x, half=False)
        return torch.tanh(self.gain * (f - f.mean(dim=1, keepdim=True)))


def block_images(count: int, seed: int) -> tuple[Tensor, Tensor]:
    """Class k: block k at 0.6, everything else at 0.4, plus uniform pixel noise of +-0.05."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(count) % 10
    x = torch.full((count, 784), 0.4)
    x[:, : 10 * BLOCK].view(count, 10, BLOCK)[torch.arange(count), y] = 0.6
    return (x + 0.05 * (2 * torch.rand(count, 784, generator=g) - 1)).clamp(0, 1), y


def block_detector(agreement: bool) -> Detector:
    clean, _ = block_images(200, seed=2)
    return Detector.calibrate(HalfBlockClassifier(), BlockGuard(), clean, 0.05, agreement=agreement)


def as_detector_labels(system_logits: Tensor) -> Tensor:
    label = system_logits.argmax(dim=1)
    return torch.where(label == JUNK_CLASS, JUNK, label)


def probe_images(model: nn.Module) -> Tensor:
    """Clean, noisier, blended-between-two-classes and pure-noise images: every kind of detector outcome."""
    clean, _ = prototype_images(model, 60, noise=0.15, seed=3)
    noisy, _ = prototype_images(model, 60, noise=0.4, seed=4)
    g = torch.Generator().manual_seed(5)
    blends = torch.rand(60, 1, generator=g)
    mixed = blends * clean + (1 - blends) * clean.roll(1, dims=0)
    return torch.cat([clean, noisy, mixed, torch.rand(60, 784, generator=g)])


# (a) the system model is the detector


def prototype_detector(agreement: bool) -> tuple[Detector, Tensor, Tensor]:
    """DAM_2 guarded by DAM_20 (hand-built), calibrated for 10% false rejection on held-out images; returns
    the detector, those images and the probe images."""
    classifier = prototype_model(n=2, per_class=3, seed=0)
    guard = prototype_model(n=20, per_class=3, seed=0)
    held, _ = prototype_images(classifier, 60, noise=0.15, seed=2)
    return Detector.calibrate(classifier, guard, held, 0.1, agreement=agreement), held, probe_images(classifier)


@pytest.mark.parametrize("agreement", [False, True])
def test_system_argmax_is_the_detectors_decision(agreement: bool) -> None:
    detector, held, x = prototype_detector(agreement)
    predicted = detector.predict(x)
    for scale in (0.01, 1.0, junk_scale_for(detector, held)):
        with torch.no_grad():
            system = DetectorSystem(detector, scale)(x)
        assert system.shape == (len(x), 11) and system.dtype == torch.float64
        assert torch.equal(as_detector_labels(system), predicted)
    rejected = predicted == JUNK
    assert 0.1 < float(rejected.double().mean()) < 0.9  # both outcomes occur
    # the margin is positive exactly where the detector rejects
    margin = DetectorSystem(detector).parts(x)[1]
    assert torch.equal(margin > 0, rejected)


def conflict_images(count: int, seed: int) -> tuple[Tensor, Tensor]:
    """Block k bright in its first half (the guard sees k, confidently), block j in its second (the classifier
    sees j): the two disagree."""
    x, k = block_images(count, seed)
    j = (k + 1 + torch.arange(count) % 9) % 10
    blocks = x[:, : 10 * BLOCK].view(count, 10, BLOCK)
    rows, half = torch.arange(count), BLOCK // 2
    blocks[rows, k, :half], blocks[rows, k, half:] = 1.0, 0.5
    blocks[rows, j, :half], blocks[rows, j, half:] = 0.2, 0.7
    return x, j


@pytest.mark.parametrize("agreement", [False, True])
def test_system_on_perturbed_block_images(agreement: bool) -> None:
    detector = block_detector(agreement)
    x, _ = block_images(100, seed=6)
    conflict, seen_by_classifier = conflict_images(30, seed=7)
    assert torch.equal(detector.decide(conflict)[2], seen_by_classifier)
    assert bool((detector.guard_scores(conflict) >= detector.threshold).all())  # the guard alone would accept
    assert bool((detector.accept(conflict) != agreement).all())  # only agreement mode rejects them
    g = torch.Generator().manual_seed(7)
    for images in (x, conflict):
        for noise in (0.0, 0.05, 0.15, 0.3):
            perturbed = (images + noise * (2 * torch.rand(images.shape, generator=g) - 1)).clamp(0, 1)
            with torch.no_grad():
                system = DetectorSystem.fitted(detector, x)(perturbed)
            assert torch.equal(as_detector_labels(system), detector.predict(perturbed)), noise


@pytest.mark.parametrize("agreement", [False, True])
def test_safe_outcome_view_is_wrong_exactly_when_the_detector_is_unsafe(agreement: bool) -> None:
    detector, held, x = prototype_detector(agreement)
    predicted = detector.predict(x)
    system = DetectorSystem.fitted(detector, held)
    seen = 0
    for k in range(10):
        with torch.no_grad():
            view = SafeOutcomeView(system, k)(x)
        assert view.shape == (len(x), 10)
        unsafe = (predicted != JUNK) & (predicted != k)
        assert torch.equal(view.argmax(dim=1) != k, unsafe), k
        seen += int(unsafe.sum()) > 0 and int((~unsafe).sum()) > 0
    assert seen == 10


def test_bad_settings_are_one_clear_error() -> None:
    detector = block_detector(False)
    with pytest.raises(ValueError, match="junk_scale must be a positive finite number"):
        DetectorSystem(detector, 0.0)
    with pytest.raises(ValueError, match="true_class must be a class index"):
        SafeOutcomeView(DetectorSystem(detector), 10)
    for kwargs, message in (({"targets": 10}, "targets must be between 1 and 9"),
                            ({"steps": 0}, "steps and batch_size must be at least 1"),
                            ({"norm": "l1"}, "norm must be one of"),
                            ({"junk_scale": float("inf")}, "junk_scale must be")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            AdaptiveDetectorAttack(detector, [0.1], **kwargs)
    with pytest.raises(ValueError, match="epsilons must be a non-empty list of positive budgets"):
        AdaptiveDetectorAttack(detector, [0.0])
    with pytest.raises(ValueError, match="no images to attack"):
        AdaptiveDetectorAttack(detector, [0.1])(torch.zeros(0, 784), torch.zeros(0, dtype=torch.long))


# (b) the attack


@pytest.mark.parametrize("agreement", [False, True])
def test_adaptive_attack_beats_the_guard_that_stops_the_non_adaptive_one(agreement: bool) -> None:
    detector = block_detector(agreement)
    x, y = block_images(20, seed=1)
    eps = [0.05, 0.2]  # 0.1 flips the classifier; 0.05 cannot
    result = AdaptiveDetectorAttack(detector, eps, steps=10, targets=2)(x, y)
    adaptive, baseline = result.adaptive, result.non_adaptive
    for outcome in (adaptive, baseline):
        assert outcome.adversarials.shape == (2, 20, 784)
        for e, budget in enumerate(eps):
            adv = outcome.adversarials[e]
            assert bool(((adv >= 0) & (adv <= 1)).all())
            assert bool(within_budget("linf", adv, x, budget).all())
            # every counted success is unsafe for the real detector, and every other kept image is safe
            predicted = detector.predict(adv)
            assert torch.equal(predicted, outcome.labels[e])
            unsafe = (predicted != JUNK) & (predicted != y)
            assert torch.equal(unsafe, outcome.unsafe[e])
            assert not bool((outcome.rejected[e] & outcome.unsafe[e]).any())
        assert outcome.safe_rate()[0] == 1.0  # nothing flips the classifier at 0.05
    assert result.classifier_robust_accuracy == [1.0, 0.0]
    for outcome in (adaptive, baseline):  # an adversarial inside the smaller budget is inside the larger one
        assert not bool((outcome.unsafe[0] & ~outcome.unsafe[1]).any())
    # the guard stops the attack on the classifier alone: its adversarials are rejected...
    assert baseline.safe_rate()[1] >= 0.9 and baseline.rejection_rate()[1] >= 0.9
    # ...and an attacker who knows the guard gets most images through with a wrong label
    assert adaptive.safe_rate()[1] <= baseline.safe_rate()[1] - 0.5
    assert all(s > 0 for s in adaptive.seconds) and all(q > 0 for q in adaptive.queries_per_image)


class FlatGuard(BlockGuard):
    """BlockGuard without an input gradient, as a large-n DAM far from every memory: gradients cannot see it."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.detach())


@pytest.mark.parametrize("agreement", [False, True])
def test_a_guard_without_gradients_falls_to_the_gradient_free_move(agreement: bool) -> None:
    clean, _ = block_images(200, seed=2)
    detector = Detector.calibrate(HalfBlockClassifier(), FlatGuard(), clean, 0.05, agreement=agreement)
    x, y = block_images(20, seed=1)
    result = AdaptiveDetectorAttack(detector, [0.05, 0.3], steps=10, targets=2)(x, y)
    adaptive, baseline = result.adaptive, result.non_adaptive
    assert baseline.safe_rate()[1] >= 0.9  # the classifier alone is broken, the guard rejects what it is shown
    assert adaptive.safe_rate() == [1.0, 0.0]  # 0.3 reaches another class's image; 0.05 flips nothing
    assert adaptive.unsafe_by["blend"][1] > 0 and "blend" not in baseline.unsafe_by
    for e, budget in enumerate([0.05, 0.3]):
        adv = adaptive.adversarials[e]
        assert bool(((adv >= 0) & (adv <= 1)).all()) and bool(within_budget("linf", adv, x, budget).all())
        predicted = detector.predict(adv)
        assert torch.equal((predicted != JUNK) & (predicted != y), adaptive.unsafe[e])


@pytest.mark.parametrize("norm, eps", [("linf", 0.03), ("linf", 1.0), ("l2", 0.5), ("l2", 30.0)])
def test_blend_candidates_stay_inside_the_budget_and_are_unsafe_when_counted(norm: str, eps: float) -> None:
    detector = block_detector(False)
    x, y = block_images(30, seed=4)
    moved, evaluations = blend_candidates(detector, x, y, eps, norm=norm)
    assert bool(((moved >= 0) & (moved <= 1)).all()) and bool(within_budget(norm, moved, x, eps).all())
    changed = (moved != x).any(dim=1)
    predicted = detector.predict(moved)
    assert torch.equal(changed, (predicted != JUNK) & (predicted != y))  # a move is kept only when unsafe
    accepted = int((detector.predict(x) == y).sum())
    assert accepted - 3 <= evaluations <= accepted  # each image tries every accepted image of another class
    if (eps >= 1.0 and norm == "linf") or eps >= 28:  # the whole box: every other accepted image itself is reached
        assert bool(changed.all())
    if eps <= 0.05:
        assert not bool(changed.any())
    pool = accepted_pool(detector, x, y)
    assert len(pool) == accepted
    assert torch.equal(blend_candidates(detector, x, y, eps, norm=norm, pool=pool)[0], moved)
    assert torch.equal(blend_candidates(detector, x, y, eps, norm=norm, pool=pool[:0])[0], x)  # nothing to aim at


def test_attack_report_is_json(tmp_path: Path) -> None:
    detector = block_detector(False)
    x, y = block_images(20, seed=1)
    result = AdaptiveDetectorAttack(detector, [0.2, 0.05], steps=5, targets=1)(x, y)
    clean = detector.decide(block_images(50, seed=8)[0])[0]
    report = result.report(clean, detector.threshold)
    text = json.dumps(report, allow_nan=False)
    assert list(report) == ["linf 0.2", "linf 0.05"]  # the order the budgets were given in
    assert report["linf 0.05"]["safe_rate"] == 1.0 and report["linf 0.05"]["classifier_robust_accuracy"] == 1.0
    entry = json.loads(text)["linf 0.2"]
    assert entry["count"] == 20 and entry["eps"] == 0.2 and entry["norm"] == "linf"
    assert entry["safe_rate"] == result.adaptive.safe_rate()[0]
    assert entry["classifier_robust_accuracy"] == 0.0
    assert entry["non_adaptive"]["safe_rate"] == result.non_adaptive.safe_rate()[0]
    assert entry["worst_case_safe_rate"] <= min(entry["safe_rate"], entry["non_adaptive"]["safe_rate"])
    roc = entry["non_adaptive"]["roc"]  # the classifier is fooled on every image: one ROC point set
    assert entry["non_adaptive"]["classifier_fooled_count"] == 20
    assert roc["auc"] > 0.9 and roc["operating_point"]["tpr"] >= 0.9 and len(roc["fpr"]) == len(roc["tpr"])
    assert result.settings["junk_scale"] == result.junk_scale > 0
    # the ROC is of the attacker's best try per image (its highest guard score among the candidates that fool the
    # classifier), never below the candidate kept for the detector's worst outcome
    outcome = result.adaptive
    assert outcome.attacker_scores is not None and outcome.attacker_fooled is not None
    for e in range(2):
        kept = outcome.classifier_fooled[e]
        assert bool((outcome.attacker_fooled[e] | ~kept).all())  # a kept candidate that fools is one of them
        assert bool((outcome.attacker_scores[e][kept] >= outcome.scores[e][kept].double()).all())


# (c) the command


def test_detect_command_with_the_adaptive_attack(tiny_reproduction: Path, mnist_dir: Path, tmp_path: Path,
                                                 capsys) -> None:  # fmt: skip
    runs, out = tiny_reproduction / "runs", tmp_path / "detector"
    argv = ["detect", "--classifier", str(runs / "n2"), "--guard", str(runs / "n20"), "--images", "200",
            "--noise", "20", "--attack-images", "0", "--out", str(out), "--data-dir", str(mnist_dir),
            "--adaptive", "--adaptive-l2", "2", "--adaptive-images", "6", "--adaptive-steps", "2",
            "--adaptive-targets", "1"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "adaptive attack" in printed and "linf 0.3" in printed
    adaptive = json.loads((out / "detector.json").read_text())["adaptive"]
    assert set(adaptive["budgets"]) == {"linf 0.1", "linf 0.3", "l2 2"} and adaptive["images"] == 6
    for entry in adaptive["budgets"].values():
        assert entry["count"] == 6 and 0 <= entry["safe_rate"] <= 1 and "non_adaptive" in entry
    assert adaptive["attacks"]["linf"]["detector"]["agreement"] is False
    # the headline is the per-image worst case of both attacks, printed first in each row
    rows = {line.split()[0] + " " + line.split()[1]: line.split()[2:] for line in printed.splitlines()
            if line.startswith(("linf ", "l2 ")) and "%" in line}  # fmt: skip
    for budget, entry in adaptive["budgets"].items():
        assert rows[budget][:2] == [f"{entry['worst_case_safe_rate']:.1%}", f"{entry['safe_rate']:.1%}"]


def test_detect_bad_adaptive_option_is_one_line(tmp_path: Path, capsys) -> None:
    argv = ["detect", "--classifier", "x", "--guard", "y", "--out", str(tmp_path), "--adaptive",
            "--adaptive-targets", "12"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "adaptive attack targets must be between 1 and 9" in err and "Traceback" not in err
