"""The junk detector over run folders, with its outputs on disk: what ``dam detect`` and ``dam reproduce`` call.

The guard's threshold is chosen on one half of the first ``images`` MNIST test images; the detector is then
measured on the other half, on Gaussian and uniform noise, on the adversarial and rubbish images that the
paper's probes saved, and on the successful adversarials of Foolbox's L-inf PGD (:func:`attack_sets`)
against the classifier.  Those attacks do not know the guard; asked for, the adaptive
attack of :mod:`dam.robustness.adaptive`, which does, is measured too (:func:`adaptive_sets`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from dam.errors import InputError

if TYPE_CHECKING:
    from dam.robustness.detector import Detector

logger = logging.getLogger(__name__)

CALIBRATION_RULE = (
    "the first `images` MNIST test images in the order of torch.randperm(images) seeded with `seed`: the first "
    "half (rounded down) chooses the threshold, the rest is the clean evaluation set"
)


# The adaptive attack's size when not given: evaluation images attacked, APGD iterations, APGD-T target classes.
ADAPTIVE_DEFAULTS = {"images": 200, "steps": 100, "targets": 9}


def probe_folders(folder: Path) -> list[Path]:
    """``folder`` itself when it holds one model's results, else its model subfolders (a probes --out)."""
    if not folder.is_dir():
        raise InputError(f"--probes {folder}: no such folder")

    def holds_results(f: Path) -> bool:
        return any((f / f"{stem}.safetensors").exists() for stem in ("boundary", "rubbish"))

    if holds_results(folder):
        return [folder]
    models = sorted(p for p in folder.iterdir() if p.is_dir() and holds_results(p))
    if not models:
        raise InputError(f"--probes {folder}: holds no boundary or rubbish results (the --out of dam boundary, "
                         "rubbish or transfer, or a reproduction's probes/)")  # fmt: skip
    return models


def probe_sets(
    folders: list[str], x_test: Tensor, y_test: Tensor, calibration: Tensor
) -> tuple[dict[str, tuple[Tensor, Tensor | None]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Adversarial and rubbish sets saved by ``dam boundary|rubbish|transfer|reproduce``, with what was used.

    Adversarial sets are the images one step past their model's decision boundary, with the TRUE labels of
    the test images they came from; only images whose search crossed the boundary count (the others are clean
    copies), and images made from the calibration half are left out, since the threshold has seen them.
    """
    from dam.probes import BoundaryResult, RubbishResult
    from dam.probes.runner import load_result

    sets: dict[str, tuple[Tensor, Tensor | None]] = {}
    used: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    in_calibration = torch.zeros(len(x_test), dtype=torch.bool)
    in_calibration[calibration] = True
    for folder in (p for f in folders for p in probe_folders(Path(f))):
        for stem, kind in (("boundary", "adversarial"), ("rubbish", "rubbish")):
            path = folder / stem
            if not path.with_suffix(".safetensors").exists():
                continue
            name = f"{kind} {folder.name}"
            if name in sets:  # the same model name in two probe folders
                name = f"{kind} {folder.parent.name}/{folder.name}"
            file = str(path.with_suffix(".safetensors"))
            if kind == "rubbish":
                images, labels = load_result(RubbishResult, path).images, None
            else:
                r = load_result(BoundaryResult, path)
                k = len(r.clean)
                if k > len(x_test) or not torch.allclose(r.clean, x_test[:k], atol=1e-5):
                    skipped.append({"file": file, "reason": "not made from the first MNIST test images"})
                    continue
                keep = (r.crossing_step >= 0) & ~in_calibration[:k]
                if not bool(keep.any()):
                    skipped.append({"file": file, "reason": "no image outside the calibration half crossed"})
                    continue
                images, labels = r.past[keep], y_test[:k][keep]
            sets[name] = (images, labels)
            used.append({"set": name, "file": file, "images": len(images)})
    return sets, used, skipped


def foolbox_available() -> bool:
    from importlib.util import find_spec

    return find_spec("foolbox") is not None


def attack_sets(
    classifier: nn.Module, images: Tensor, labels: Tensor, epsilons: tuple[float, ...], seed: int = 0
) -> dict[str, tuple[Tensor, Tensor | None]]:
    """PGD (L-inf) adversarials of ``classifier`` at each budget, the successful ones, with their true labels.

    Empty when Foolbox (the `attacks` extra) is not installed: the detector is still measured on the rest.
    """
    from dam.robustness.attacks import PGD

    if not foolbox_available():
        return {}
    result = PGD(classifier, list(epsilons), seed=seed)(images, labels)
    sets: dict[str, tuple[Tensor, Tensor | None]] = {}
    for eps, adv, won in zip(epsilons, result.adversarials, result.success, strict=True):
        if bool(won.any()):
            sets[f"PGD eps {eps:g}"] = (adv[won], labels[won])
    return sets


def check_adaptive(linf: tuple[float, ...], l2: tuple[float, ...], images: int, steps: int, targets: int) -> None:
    """The adaptive attack's options, checked before any compute (one InputError naming the problem)."""
    from dam.model import NUM_CLASSES
    from dam.robustness.attacks.standard import check_budgets

    if linf or l2:  # the reference attacks it runs, before calibration and the PGD sets
        from dam.robustness.attacks.autoattack import require_autoattack

        require_autoattack()

    for norm, budgets in (("linf", linf), ("l2", l2)):
        if budgets:
            check_budgets(norm, budgets, positive=True)
    if (linf or l2) and (images < 1 or steps < 1):
        raise InputError(f"adaptive attack images and steps must be at least 1, got {images} and {steps}")
    if (linf or l2) and not 1 <= targets <= NUM_CLASSES - 1:
        raise InputError(f"adaptive attack targets must be between 1 and {NUM_CLASSES - 1}, got {targets}")


def adaptive_sets(
    detector: Detector,
    images: Tensor,
    labels: Tensor,
    clean_scores: Tensor,
    budgets: dict[str, tuple[float, ...]],
    *,
    steps: int = 100,
    targets: int = 9,
    seed: int = 0,
) -> dict[str, Any]:
    """The adaptive attack (and the same attacks on the classifier alone) per norm and budget, as JSON.

    ``budgets`` maps a norm ("linf", "l2") to its budgets; ``clean_scores`` are the detector's scores of held-out
    clean images, the negatives of each budget's ROC.
    """
    from dam.robustness.adaptive import AdaptiveDetectorAttack

    out: dict[str, Any] = {"images": len(images), "attacks": {}, "junk_scale": {}, "budgets": {}}
    for norm, epsilons in budgets.items():
        if not epsilons:
            continue
        attack = AdaptiveDetectorAttack(detector, epsilons, norm=norm, steps=steps, targets=targets, seed=seed)
        result = attack(images, labels)
        out["attacks"][norm] = result.settings
        out["junk_scale"][norm] = result.junk_scale
        out["budgets"].update(result.report(clean_scores, detector.threshold))
    return out


def run_detection(
    classifier_run: str | os.PathLike[str],
    guard_run: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    false_rejection: float = 0.05,
    beta_sm: float | None = None,
    images: int = 2000,
    noise: int = 1000,
    probes: list[str] | None = None,
    attack_eps: tuple[float, ...] = (0.1, 0.2, 0.3),
    attack_images: int = 500,
    seed: int = 0,
    data_dir: str | os.PathLike[str] | None = None,
    agreement: bool = False,
    device: str = "cpu",
    adaptive_eps: tuple[float, ...] = (),
    adaptive_l2: tuple[float, ...] = (),
    adaptive_images: int = ADAPTIVE_DEFAULTS["images"],
    adaptive_steps: int = ADAPTIVE_DEFAULTS["steps"],
    adaptive_targets: int = ADAPTIVE_DEFAULTS["targets"],
    replace: bool = False,
) -> dict[str, Any]:
    """Calibrate, measure, and write OUT/detector.json and OUT/detector.png; return the report.

    ``agreement``: also reject inputs whose guard label differs from the classifier's (see :class:`Detector`).
    ``adaptive_eps`` / ``adaptive_l2``: L-inf / L2 budgets of the adaptive attack, which knows the detector
    (:class:`dam.robustness.adaptive.AdaptiveDetectorAttack`), on the first ``adaptive_images`` evaluation
    images; its results go under the report's "adaptive" key (absent when no budget is asked for).
    ``out`` is locked while it is written; a training run's folder is refused, and so is a folder that holds a
    detector's results unless ``replace`` (the CLI's ``--force``), which replaces them with a warning.
    """
    from dam.data import load_dataset
    from dam.environment import environment_info
    from dam.io import atomic_write_json
    from dam.probes.confidence import PAPER_BETA_SM
    from dam.robustness.detector import (
        Detector,
        check_false_rejection,
        detector_figure,
        evaluate_detector,
        noise_images,
        run_folders,
    )
    from dam.runs import OutputFolder, common_dataset, load_model

    check_false_rejection(false_rejection)
    beta_sm = PAPER_BETA_SM if beta_sm is None else beta_sm
    if not beta_sm > 0:
        raise InputError(f"beta_sm must be positive, got {beta_sm}")
    if noise < 0 or attack_images < 0:
        raise InputError(f"noise and attack image counts must be >= 0, got {noise} and {attack_images}")
    for folder in probes or []:  # before the slow part, so that a typo fails at once
        probe_folders(Path(folder))
    check_adaptive(adaptive_eps, adaptive_l2, adaptive_images, adaptive_steps, adaptive_targets)
    if attack_images and attack_eps:
        from dam.robustness.attacks.standard import check_budgets

        check_budgets("linf", attack_eps, positive=True)  # PGD's L-inf budgets, before the models are read
    folder = OutputFolder(out, "detector output folder")
    folder.check_results()
    with folder.lock():
        if (folder.path / "detector.json").exists():  # a finished result is never replaced silently
            if not replace:
                raise InputError(f"{out}: holds a detector's results (detector.json); use another --out, or --force "
                                 "(replace=True) to replace them")  # fmt: skip
            logger.warning("replacing the detector's results in %s", out)
        classifier, guard = load_model(classifier_run, device=device), load_model(guard_run, device=device)
        x_test, y_test = load_dataset(common_dataset([classifier_run, guard_run]), "test", data_dir=data_dir)
        x_test = x_test.reshape(len(x_test), -1)
        if not 2 <= images <= len(x_test):
            raise InputError(f"images must be in [2, {len(x_test)}] (half calibrates, half evaluates), got {images}")
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(images, generator=g)
        calibration, evaluation = order[: images // 2].sort().values, order[images // 2 :].sort().values
        detector = Detector.calibrate(
            classifier, guard, x_test[calibration], false_rejection, beta_sm, agreement=agreement
        )
        sets: dict[str, tuple[Tensor, Tensor | None]] = {"clean": (x_test[evaluation], y_test[evaluation])}
        if noise:
            for kind in ("gaussian", "uniform"):
                sets[f"{kind} noise"] = (noise_images(noise, kind, g), None)
        found, used, skipped = probe_sets(probes or [], x_test, y_test, calibration)
        sets.update(found)
        attacked = evaluation[:attack_images]
        attacks_note = "none asked for"
        if attack_images and attack_eps:
            made = attack_sets(classifier, x_test[attacked], y_test[attacked], attack_eps, seed)
            sets.update(made)
            attacks_note = (
                f"Foolbox L-inf PGD (40 steps) against the classifier on the first {len(attacked)} evaluation images "
                f"at eps {', '.join(f'{e:g}' for e in attack_eps)}; successful adversarials only, true labels"
                if made or foolbox_available()
                else 'not run: Foolbox is not installed (pip install "dam[attacks]")'
            )

        report = evaluate_detector(detector, sets)
        if adaptive_eps or adaptive_l2:
            chosen = evaluation[:adaptive_images]
            clean_scores = detector.decide(x_test[evaluation])[0]
            report["adaptive"] = adaptive_sets(detector, x_test[chosen], y_test[chosen], clean_scores,
                                               {"linf": adaptive_eps, "l2": adaptive_l2}, steps=adaptive_steps,
                                               targets=adaptive_targets, seed=seed)  # fmt: skip
            report["adaptive"]["rule"] = f"the first {len(chosen)} evaluation images (the clean set's order)"
        report.update(run_folders(str(classifier_run), str(guard_run)))
        report["data"] = {
            "dataset": "mnist test", "images": images, "seed": seed, "split": CALIBRATION_RULE,
            "calibration_images": len(calibration), "evaluation_images": len(evaluation),
            "calibration_indices": calibration.tolist(),
            "calibration_false_rejection_rate": float((~detector.accept(x_test[calibration])).double().mean()),
            "noise_images": noise,
            "noise": "gaussian: pixels N(0.5, 0.25^2) clipped to [0, 1]; uniform: pixels U[0, 1]",
            "attacks": attacks_note,
        }  # fmt: skip
        report["probes"] = {"folders": probes or [], "used": used, "skipped": skipped}
        report["environment"] = environment_info()
        out = Path(out)
        atomic_write_json(out / "detector.json", report)
        detector_figure(report, out / "detector.png")
        return report
