"""``dam detect``: calibrate a junk detector (classifier + large-n guard) and measure it on clean, noise, probe
and attack images (the work is :func:`dam.robustness.detector_sets.run_detection`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dam.cli.args import (
    check_test_images,
    device,
    l2_budgets,
    linf_budgets,
    linf_budgets_or_none,
    nonnegative_int,
    note_unfinished,
    positive_float,
    positive_int,
    seed,
)
from dam.errors import InputError

ATTACK_IMAGES = 500  # default of --attack-images


def cmd_detect(args: argparse.Namespace) -> int:
    from dam.robustness.detector import check_false_rejection
    from dam.robustness.detector_sets import ADAPTIVE_DEFAULTS, check_adaptive, probe_folders, run_detection
    from dam.runs import run_dataset, run_kind

    # every check that needs no data, in the order a user reads the command line, before any compute
    check_false_rejection(args.false_rejection)
    given_adaptive_images = args.adaptive_images
    tuning = [f"--adaptive-{k}" for k in ADAPTIVE_DEFAULTS if getattr(args, f"adaptive_{k}") is not None]
    if tuning and not (args.adaptive or args.adaptive_l2):
        raise InputError(f"{', '.join(tuning)}: settings of the adaptive attack; give --adaptive or --adaptive-l2")
    for k, v in ADAPTIVE_DEFAULTS.items():
        if getattr(args, f"adaptive_{k}") is None:
            setattr(args, f"adaptive_{k}", v)
    check_adaptive(args.adaptive or (), args.adaptive_l2 or (), args.adaptive_images, args.adaptive_steps,
                   args.adaptive_targets)  # fmt: skip
    for probes in args.probes or []:
        probe_folders(Path(probes))
    run_kind(args.classifier), run_kind(args.guard)
    note_unfinished([args.classifier, args.guard])
    check_test_images("--images", args.images, run_dataset(args.classifier), 2, "half calibrates, half evaluates")
    # An image count given on the command line is used as given, or refused; only the defaults are capped.
    evaluation = args.images - args.images // 2
    if args.attack_images is not None and not args.attack_eps:
        raise InputError("--attack-images: no effect with --attack-eps '' (no attack asked for)")
    for flag, count in (("--attack-images", args.attack_images), ("--adaptive-images", given_adaptive_images)):
        if count is not None and count > evaluation:
            raise InputError(f"{flag} {count}: more than the {evaluation} evaluation images of --images {args.images}"
                             " (half calibrates, half evaluates)")  # fmt: skip
    if args.attack_images is None:
        args.attack_images = min(ATTACK_IMAGES, evaluation)
    # (run_detection refuses a training run's folder and a finished detector's without --force, and locks its own)
    report = run_detection(
        args.classifier, args.guard, args.out, false_rejection=args.false_rejection, beta_sm=args.beta_sm,
        images=args.images, noise=args.noise, probes=args.probes, attack_eps=args.attack_eps,
        attack_images=args.attack_images, seed=args.seed, data_dir=args.data_dir, agreement=args.agreement,
        device=args.device, adaptive_eps=args.adaptive or (), adaptive_l2=args.adaptive_l2 or (),
        adaptive_images=args.adaptive_images, adaptive_steps=args.adaptive_steps,
        adaptive_targets=args.adaptive_targets, replace=args.force,
    )  # fmt: skip
    out = Path(args.out)
    for skipped in report.get("probes", {}).get("skipped", []):  # said here, not only in the JSON
        print(f"probe set not used: {skipped['file']}: {skipped['reason']}")
    if str(report.get("data", {}).get("attacks", "")).startswith("not run"):
        print(f"PGD sets {report['data']['attacks']}")
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
    if "adaptive" in report:
        _print_adaptive(report["adaptive"])


def _print_adaptive(adaptive: dict[str, Any]) -> None:
    from dam.robustness.adaptive import unsafe_only_through

    print(f"adaptive attack (knows the guard) on {adaptive['images']} evaluation images; safe = right label or junk")
    print("safe worst case: safe under both attacks, image by image (the detector's robustness)")
    row = "{:<12s} {:>16s} {:>14s} {:>14s} {:>18s} {:>18s} {:>12s} {:>9s}".format
    print(row("budget", "safe worst case", "safe adaptive", "safe non-adap.", "rejected adaptive",
              "rejected non-adap.", "classifier", "seconds"))  # fmt: skip
    for name, b in adaptive["budgets"].items():
        seconds = f"{b['seconds'] + b['non_adaptive']['seconds']:.0f}"
        print(row(name, _percent(b.get("worst_case_safe_rate")), _percent(b["safe_rate"]),
                  _percent(b["non_adaptive"]["safe_rate"]),
                  _percent(b["rejection_rate"]), _percent(b["non_adaptive"]["rejection_rate"]),
                  _percent(b["classifier_robust_accuracy"]), seconds))  # fmt: skip
    for name, b in adaptive["budgets"].items():
        if b.get("unsafe_by"):
            print(f"{name}: images unsafe only through {unsafe_only_through(b['unsafe_by'])}")


def add_detect_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "detect",
        help="junk detector: a classifier's label where a large-n guard is confident, junk otherwise",
        description="Choose the guard's confidence threshold on half of the first --images MNIST test images "
        "for the given false-rejection rate, then measure the detector on the other half, on noise, on the "
        "adversarial and rubbish images found in --probes folders, on PGD adversarials of the classifier "
        "(--attack-eps) and, with --adaptive / --adaptive-l2, under an attack that knows the guard. Writes "
        "OUT/detector.json and OUT/detector.png.",
    )  # fmt: skip
    p.add_argument("--classifier", required=True, help="run folder of the classifier whose labels are used")
    p.add_argument("--guard", required=True, help="run folder of the guard (a large-n DAM)")
    p.add_argument("--false-rejection", type=float, default=0.05,
                   help="largest fraction of held-out clean images rejected (default 0.05)")  # fmt: skip
    p.add_argument(
        "--beta-sm", type=positive_float, help="softmax beta of the guard's confidence (default: the paper's 3.2)"
    )
    p.add_argument(
        "--images", type=positive_int, default=2000, help="first N test images, split in half (default 2000)"
    )
    p.add_argument(
        "--noise", type=nonnegative_int, default=1000, help="Gaussian and uniform noise images, each (default 1000)"
    )
    p.add_argument(
        "--probes", nargs="+", metavar="DIR",
        help="probe output folders: the --out of dam boundary/rubbish/transfer, or a reproduction's probes/",
    )  # fmt: skip
    p.add_argument("--attack-eps", type=linf_budgets_or_none, default=(0.1, 0.2, 0.3),
                   help="L-inf budgets of PGD against the classifier (needs dam[attacks]; '' for none)")  # fmt: skip
    p.add_argument(
        "--attack-images", type=nonnegative_int,
        help=f"evaluation images attacked (default {ATTACK_IMAGES}, or all evaluation images when fewer)",
    )  # fmt: skip
    p.add_argument("--adaptive", nargs="?", const=(0.1, 0.3), type=linf_budgets, metavar="EPS,...",
                   help="also run the adaptive attack, which knows the guard (APGD on the detector as an 11-class "
                   "model, and the same attacks on the classifier alone for comparison), at these L-inf budgets "
                   "(default 0.1,0.3; needs dam[attacks])")  # fmt: skip
    p.add_argument("--adaptive-l2", type=l2_budgets, metavar="EPS,...",
                   help="L2 budgets of the adaptive attack (default: none)")  # fmt: skip
    p.add_argument("--adaptive-images", type=positive_int,
                   help="evaluation images the adaptive attack attacks (default 200)")  # fmt: skip
    p.add_argument("--adaptive-steps", type=positive_int,
                   help="APGD iterations of the adaptive attack, per run and target class (default 100)")  # fmt: skip
    p.add_argument("--adaptive-targets", type=positive_int,
                   help="APGD-T target classes of the adaptive attack, 1 to 9 (default 9: all)")  # fmt: skip
    p.add_argument("--agreement", action="store_true",
                   help="also reject inputs on which the guard's label differs from the classifier's")  # fmt: skip
    p.add_argument("--device", type=device, default="cpu")
    p.add_argument("--out", required=True, help="folder for detector.json and detector.png")
    p.add_argument("--data-dir")
    p.add_argument("--seed", type=seed, default=0, help="seed of the calibration split and the noise")
    p.add_argument("--force", action="store_true",
                   help="replace the detector results already in --out (default: refuse)")  # fmt: skip
    p.set_defaults(func=cmd_detect)
