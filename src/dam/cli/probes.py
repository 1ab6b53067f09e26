"""``dam rubbish | boundary | calibrate | transfer``: the paper's probes over run folders."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from dam.cli.args import check_test_images, note_unfinished, positive_float, positive_int, seed
from dam.errors import ConfigError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="run folders (models); each one's name is its folder name")
    p.add_argument("--out", required=True, help="output folder (per-model results are reused when present)")
    p.add_argument("--no-clip", action="store_true", help="let pixels leave [0, 1] during the search")
    p.add_argument("--m", type=positive_int, help="objective power (default: each run's training m)")
    p.add_argument("--eps", type=positive_float, help="step length in [-1, 1] pixel units")
    p.add_argument("--max-steps", type=positive_int)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--force", action="store_true",
                   help="replace results in --out made with other settings or inputs (default: refuse)")  # fmt: skip


def _search_kwargs(args: argparse.Namespace) -> dict:
    """Search settings from the flags; m is each run's training m unless --m is given."""
    kw: dict = {"clip": not args.no_clip, "progress": False if args.no_progress else None}
    if args.m is not None:
        kw["m"] = args.m
    if getattr(args, "float64", False):
        kw["dtype"] = torch.float64
    if args.eps is not None:
        kw["eps"] = args.eps
    if args.max_steps is not None:
        kw["max_steps"] = args.max_steps
    return kw


def _prepare(args: argparse.Namespace) -> Path:
    """Check every run folder, the flags and the output folder before any compute; return the output folder."""
    _check_runs(args)
    return _output(args)


def _output(args: argparse.Namespace) -> Path:
    """The output folder, checked writable (and made): after the data are read, so a failed read leaves none."""
    from dam.runs import OutputFolder

    out = OutputFolder(args.out, "probe output folder")
    out.check_results()
    return out.path


def _check_runs(args: argparse.Namespace) -> None:
    """Every run folder and the flags."""
    from dam.runs import distinct_names, run_kind

    for run in args.runs:
        if (kind := run_kind(run)) != "dam":
            raise ConfigError(f"{run}: holds a baseline ({kind}), not a DAM; the probes search DAMs")
    distinct_names(args.runs)
    note_unfinished(args.runs)
    if getattr(args, "images", None) is not None:
        check_test_images("--images", args.images, _dataset(args))


def _dataset(args: argparse.Namespace) -> str:
    """The data set the runs were trained on (they must agree): probes use the same one."""
    from dam.runs import common_dataset

    return common_dataset(args.runs)


def cmd_rubbish(args: argparse.Namespace) -> int:
    from dam.probes.runner import run_rubbish
    from dam.runs import OutputFolder, model_name

    out = _prepare(args)
    with OutputFolder(out, "probe output folder").lock():
        for run in args.runs:  # refuse before any run's result is made
            run_rubbish(run, out, _search_kwargs(args), args.per_class, args.seed, replace=args.force, check_only=True)
        for run in args.runs:
            result = run_rubbish(run, out, _search_kwargs(args), args.per_class, args.seed, replace=args.force)
            rate = result.success.float().mean()
            print(f"{model_name(run)}: {len(result.targets)} rubbish images, success {rate:.1%}, "
                  f"stalled {result.stalled.float().mean():.1%}, stuck {result.stuck.float().mean():.1%} "
                  f"-> {out / model_name(run)}/rubbish.*")  # fmt: skip
    return 0


def _test_images(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    from dam.data import load_dataset

    x, y = load_dataset(_dataset(args), "test", data_dir=args.data_dir)  # (--images checked by _prepare)
    return x[: args.images].reshape(-1, 784), y[: args.images]


def cmd_boundary(args: argparse.Namespace) -> int:
    from dam.probes.runner import crossed_mean, run_boundary
    from dam.runs import OutputFolder, model_name

    _check_runs(args)
    x, y = _test_images(args)
    out = _output(args)
    options = {"until": args.until, **_search_kwargs(args)}
    with OutputFolder(out, "probe output folder").lock():
        for run in args.runs:  # refuse before any run's result is made
            run_boundary(run, out, options, x, y, replace=args.force, check_only=True)
        for run in args.runs:
            r = run_boundary(run, out, options, x, y, replace=args.force)
            d = r.distances("boundary")
            print(f"{model_name(run)}: {len(x)} images, success {r.success.float().mean():.1%}, "
              f"stalled {r.stalled.float().mean():.1%}, stuck {r.stuck.float().mean():.1%}, "
              f"mean L2 {_mean_text(crossed_mean(d['l2']))} -> {out / model_name(run)}/boundary.*")  # fmt: skip
    return 0


def _mean_text(mean: float | None) -> str:
    return "n/a (no search crossed the boundary)" if mean is None else f"{mean:.3f}"


def cmd_calibrate(args: argparse.Namespace) -> int:
    from dam.probes.runner import run_calibration
    from dam.runs import OutputFolder

    _check_runs(args)
    x, y = _test_images(args)
    out = _output(args)
    results = {}
    with OutputFolder(out, "probe output folder").lock():
        for run in args.runs:  # refuse before any run's result is made
            run_calibration(run, out, x, y, replace=args.force, check_only=True)
        for run in args.runs:
            c = run_calibration(run, out, x, y, replace=args.force)
            results[c["model"]] = {"beta_sm": c["beta_sm"], "accuracy": c["accuracy"]}
    print(json.dumps(results, indent=2))
    return 0


def cmd_transfer(args: argparse.Namespace) -> int:
    from dam.probes.runner import run_transfer
    from dam.runs import OutputFolder

    options = {k: v for k, v in (("eps", args.eps), ("max_steps", args.max_steps)) if v is not None}
    if args.no_progress:
        options["progress"] = False
    out = _prepare(args)
    with OutputFolder(out, "probe output folder").lock():
        tables = run_transfer(args.runs, out, images=args.images, per_class=args.per_class, seed=args.seed,
                              data_dir=args.data_dir, search_options=options, dataset=_dataset(args),
                              replace=args.force)  # fmt: skip
    adv = tables["adversarial"]
    print("adversarial transfer: error rate (rows: set made by, columns: classified by)")
    print("            " + " ".join(f"{n:>10s}" for n in adv["models"]))
    for name, row in zip(adv["models"], adv["error"], strict=True):
        print(f"{name:>10s}  " + " ".join(f"{v:>10.1%}" for v in row))
    print("clean       " + " ".join(f"{v:>10.1%}" for v in adv["clean_error"]))
    for key in ("rubbish", "rubbish_calibrated"):
        t = tables[key]
        print(f"{key}: mean confidence (beta_sm {', '.join(f'{b:.3g}' for b in t['beta_sm'])})")
        for name, row in zip(t["models"], t["mean_confidence"], strict=True):
            print(f"{name:>10s}  " + " ".join(f"{v:>10.1%}" for v in row))
    print(f"tables written to {args.out}/*_transfer.json and .csv")
    return 0


def cmd_figures(args: argparse.Namespace) -> int:
    from dam.probes.figures import figures_for
    from dam.runs import OutputFolder, model_name

    out = _prepare(args)
    missing = [model_name(r) for r in args.runs if not (out / model_name(r)).is_dir()]
    if missing:
        print(f"note: {out} holds no probe outputs of {', '.join(missing)}: only their memories are drawn (dam "
              "boundary, rubbish, calibrate or transfer with this --out make the rest)", file=sys.stderr)  # fmt: skip
    with OutputFolder(out, "probe output folder").lock():
        for path in figures_for(out, args.runs):
            print(path)
    return 0


def add_probe_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rubbish", help="rubbish images from noise for each model (Fig. 3)")
    _common(p)
    p.add_argument("--per-class", type=positive_int, default=100)
    p.add_argument("--seed", type=seed, default=0)
    p.set_defaults(func=cmd_rubbish)

    p = sub.add_parser("boundary", help="decision-boundary images of the test set for each model (Fig. 4)")
    _common(p)
    p.add_argument("--data-dir")  # (rubbish searches start from noise: they read no data)
    p.add_argument("--images", type=positive_int, default=10000, help="first N test images")
    p.add_argument("--until", choices=["crossing", "converged"], default="crossing")
    p.add_argument("--float64", action="store_true", help="search in float64 (gradients underflow less; rubbish "
                   "searches always are)")  # fmt: skip
    p.set_defaults(func=cmd_boundary)

    p = sub.add_parser("calibrate", help="beta_sm with mean confidence = accuracy, binned error (Fig. 7)")
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--data-dir")
    p.add_argument("--images", type=positive_int, default=10000)
    p.add_argument("--force", action="store_true",
                   help="replace results in --out made with other settings or inputs (default: refuse)")  # fmt: skip
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("transfer", help="adversarial and rubbish transfer tables between models (Fig. 5, 6)")
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--data-dir")
    p.add_argument("--images", type=positive_int, default=10000)
    p.add_argument("--per-class", type=positive_int, default=100)
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--eps", type=positive_float, help="step length of both searches")
    p.add_argument("--max-steps", type=positive_int, help="step budget of both searches")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--force", action="store_true",
                   help="replace results in --out made with other settings or inputs (default: refuse)")  # fmt: skip
    p.set_defaults(func=cmd_transfer)

    p = sub.add_parser("figures", help="PNG pictures (Fig. 2-7) from the probe outputs in --out")
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", required=True, help="the folder given to rubbish/boundary/calibrate/transfer")
    p.set_defaults(func=cmd_figures)
