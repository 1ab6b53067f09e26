"""``dam detect``: calibrate a junk detector (classifier + large-n guard) and measure it on clean, noise and
probe images."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

CALIBRATION_RULE = (
    "the first `images` MNIST test images in the order of torch.randperm(images) seeded with `seed`: the first "
    "half (rounded down) chooses the threshold, the rest is the clean evaluation set"
)


def _probe_folders(folder: Path) -> list[Path]:
    """``folder`` itself when it holds one model's results, else its model subfolders (a probes --out)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"--probes {folder}: no such folder")
    if any((folder / f"{stem}.safetensors").exists() for stem in ("boundary", "rubbish")):
        return [folder]
    return sorted(p for p in folder.iterdir() if p.is_dir())


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
    for folder in (p for f in folders for p in _probe_folders(Path(f))):
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


def cmd_detect(args: argparse.Namespace) -> int:
    from dam.data import load_dataset
    from dam.detector import (
        Detector,
        check_false_rejection,
        detector_figure,
        evaluate_detector,
        noise_images,
        run_folders,
    )
    from dam.io import atomic_write_json
    from dam.loading import load_model
    from dam.probes.confidence import PAPER_BETA_SM
    from dam.runinfo import environment_info

    check_false_rejection(args.false_rejection)
    beta_sm = PAPER_BETA_SM if args.beta_sm is None else args.beta_sm
    if not beta_sm > 0:
        raise ValueError(f"--beta-sm must be positive, got {beta_sm}")
    if args.noise < 0:
        raise ValueError(f"--noise must be >= 0, got {args.noise}")
    for folder in args.probes or []:  # before the slow part, so that a typo fails at once
        _probe_folders(Path(folder))
    classifier, guard = load_model(args.classifier), load_model(args.guard)
    x_test, y_test = load_dataset("mnist", "test", data_dir=args.data_dir)
    x_test = x_test.reshape(len(x_test), -1)
    if not 2 <= args.images <= len(x_test):
        raise ValueError(f"--images must be in [2, {len(x_test)}] (half calibrates, half evaluates), got {args.images}")
    g = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(args.images, generator=g)
    calibration, evaluation = order[: args.images // 2].sort().values, order[args.images // 2 :].sort().values
    detector = Detector.calibrate(classifier, guard, x_test[calibration], args.false_rejection, beta_sm)
    sets: dict[str, tuple[Tensor, Tensor | None]] = {"clean": (x_test[evaluation], y_test[evaluation])}
    if args.noise:
        for kind in ("gaussian", "uniform"):
            sets[f"{kind} noise"] = (noise_images(args.noise, kind, g), None)
    probes, used, skipped = probe_sets(args.probes or [], x_test, y_test, calibration)
    sets.update(probes)

    report = evaluate_detector(detector, sets)
    report.update(run_folders(args.classifier, args.guard))
    report["data"] = {
        "dataset": "mnist test", "images": args.images, "seed": args.seed, "split": CALIBRATION_RULE,
        "calibration_images": len(calibration), "evaluation_images": len(evaluation),
        "calibration_indices": calibration.tolist(),
        "calibration_false_rejection_rate": float((~detector.accept(x_test[calibration])).double().mean()),
        "noise_images": args.noise,
        "noise": "gaussian: pixels N(0.5, 0.25^2) clipped to [0, 1]; uniform: pixels U[0, 1]",
    }  # fmt: skip
    report["probes"] = {"folders": args.probes or [], "used": used, "skipped": skipped}
    report["environment"] = environment_info()
    out = Path(args.out)
    atomic_write_json(out / "detector.json", report)
    detector_figure(report, out / "detector.png")
    _print_table(report)
    print(f"written {out / 'detector.json'} and {out / 'detector.png'}")
    return 0


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _print_table(report: dict[str, Any]) -> None:
    data = report["data"]
    print(f"threshold {report['threshold']:.6g} on guard confidence (beta_sm {report['beta_sm']:.3g}): rejects "
          f"{data['calibration_false_rejection_rate']:.1%} of {data['calibration_images']} held-out clean images "
          f"(target {report['false_rejection']:.1%})")  # fmt: skip
    row = "{:<24s} {:<7s} {:>7} {:>9s} {:>17s} {:>7s} {:>6s}".format
    print(row("set", "kind", "images", "accepted", "acc. on accepted", "safe", "AUC"))
    for name, r in report["sets"].items():
        auc = f"{r['roc']['auc']:.3f}" if "roc" in r else "-"
        print(row(name, r["kind"], r["count"], _percent(r["acceptance_rate"]),
                  _percent(r.get("accuracy_on_accepted")), _percent(r.get("safe_rate")), auc))  # fmt: skip


def add_detect_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "detect",
        help="junk detector: a classifier's label where a large-n guard is confident, junk otherwise",
        description="Choose the guard's confidence threshold on half of the first --images MNIST test images "
        "for the given false-rejection rate, then measure the detector on the other half, on noise, and on the "
        "adversarial and rubbish images found in --probes folders. Writes OUT/detector.json and OUT/detector.png.",
    )  # fmt: skip
    p.add_argument("--classifier", required=True, help="run folder of the classifier whose labels are used")
    p.add_argument("--guard", required=True, help="run folder of the guard (a large-n DAM)")
    p.add_argument("--false-rejection", type=float, default=0.05,
                   help="largest fraction of held-out clean images rejected (default 0.05)")  # fmt: skip
    p.add_argument("--beta-sm", type=float, help="softmax beta of the guard's confidence (default: the paper's 3.2)")
    p.add_argument("--images", type=int, default=2000, help="first N test images, split in half (default 2000)")
    p.add_argument("--noise", type=int, default=1000, help="Gaussian and uniform noise images, each (default 1000)")
    p.add_argument(
        "--probes", nargs="+", metavar="DIR",
        help="probe output folders: the --out of dam boundary/rubbish/transfer, or a reproduction's probes/",
    )  # fmt: skip
    p.add_argument("--out", required=True, help="folder for detector.json and detector.png")
    p.add_argument("--data-dir")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration split and the noise")
    p.set_defaults(func=cmd_detect)
