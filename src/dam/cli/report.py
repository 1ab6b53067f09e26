"""``dam reproduce`` and ``dam report``: the whole paper in one command, and its HTML report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dam.cli.args import device, positive_int, reproduction_seed
from dam.errors import InputError


def cmd_reproduce(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from dam.experiments.reproduce import PRESETS, reproduce

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    check = True if args.check else (False if args.no_check else None)
    plan = PRESETS[args.preset] if args.seed is None else replace(PRESETS[args.preset], seed=args.seed)
    default_out = f"runs/{args.preset}" + ("" if args.seed is None else f"-seed{args.seed}")
    report = reproduce(
        plan,
        args.out or default_out,
        data_dir=args.data_dir,
        device=args.device,
        progress=False if args.no_progress else None,
        check=check,
        log=log,
        workers=args.workers,
        paper_only=args.paper_only,
    )
    print(f"report: {report}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from dam.experiments.report import build_report, check_report
    from dam.runs import OutputFolder

    out = Path(args.out)
    if args.screenshot and not args.check:
        raise InputError("--screenshot is taken by the browser check: give --check too")
    if args.screenshot and Path(args.screenshot).is_dir():
        raise InputError(f"--screenshot {args.screenshot} is a folder: give the PNG file's name")
    if not out.is_dir():
        raise InputError(f"{out}: no such folder (give the --out of a dam reproduce)")
    if not (out / "reproduce.json").exists():
        raise InputError(f"{out}/reproduce.json: not a folder written by dam reproduce")
    if args.check:  # the browser and the screenshot's folder, before the report is rebuilt
        from dam.experiments.report.browser import require_chromium

        require_chromium()
        if args.screenshot:
            OutputFolder(Path(args.screenshot).parent, "screenshot's folder").check_writable()
    with OutputFolder(out, "reproduction folder").lock():  # one writer: not beside a running reproduce
        report = build_report(out)
    print(f"report: {report}")
    if args.check:
        result = check_report(report, args.screenshot or report.parent / "screenshot.png")
        print(f"screenshot: {result.screenshot} (page height {result.page_height} px)")
        if not result.ok:
            print("rendered report is incomplete: " + "; ".join(result.problems), file=sys.stderr)
            return 1
        print("browser check: every figure rendered, every table has rows")
    return 0


def add_report_commands(sub: argparse._SubParsersAction) -> None:
    from dam.experiments.reproduce import PRESETS

    p = sub.add_parser(
        "reproduce",
        help="train the four models, run every probe, write the HTML report",
        description="Reproduce the paper: DAM_2, 3, 20, 30, all probes, report. Each finished stage "
        "is reused, so running the same command again resumes after a kill.",
    )
    p.add_argument(
        "--preset",
        choices=list(PRESETS),
        default="quick",
        help=" ".join(f"{k}: {v.description}" for k, v in PRESETS.items()).replace("%", "%%"),  # argparse formats help
    )
    p.add_argument("--out", help="output folder (default: runs/PRESET, or runs/PRESET-seedS with --seed)")
    p.add_argument(
        "--seed",
        type=reproduction_seed,
        help="seed of every model, search and subset (default 0): run it again with another seed to see which "
        "verdicts hold across seeds",
    )
    p.add_argument("--data-dir", help="folder with the MNIST IDX files (default: $DAM_DATA_DIR, cache, download)")
    p.add_argument(
        "--device", type=device, default="auto", help="auto (default: a GPU when there is one), cpu, cuda, ..."
    )
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--workers",
        type=positive_int,
        help="models the attack stage attacks at once, in processes of their own (default: the preset's choice "
        "on a CPU, at most its cores; 1 on a GPU)",
    )
    p.add_argument(
        "--paper-only",
        action="store_true",
        help="stop after the paper's stages (training, probes, report of its statements); leave out baselines, "
        "substitutes, standard attacks, detector and adversarial fine-tuning, which a later run into the same "
        "folder without it adds (reusing the models and probes)",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--check", action="store_true", help="require the headless-Chromium check of the report")
    g.add_argument("--no-check", action="store_true", help="skip it (default: run it when Chromium is installed)")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("report", help="(re)build the HTML report of a dam reproduce folder")
    p.add_argument("out", help="the folder given to dam reproduce --out")
    p.add_argument("--check", action="store_true", help="render it in headless Chromium; fail if anything is missing")
    p.add_argument("--screenshot", help="where to save the full-page screenshot (default: beside the report)")
    p.set_defaults(func=cmd_report)
