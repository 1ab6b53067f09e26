"""``dam rubbish | boundary | calibrate | transfer``: the paper's probes over run folders."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="run folders (models); each one's name is its folder name")
    p.add_argument("--out", required=True, help="output folder (per-model results are reused when present)")
    p.add_argument("--data-dir")
    p.add_argument("--float64", action="store_true",
                   help="search in float64 (gradients underflow less; always on for rubbish)")  # fmt: skip
    p.add_argument("--no-clip", action="store_true", help="let pixels leave [0, 1] during the search")
    p.add_argument("--m", type=int, help="objective power (default: each run's training m)")
    p.add_argument("--eps", type=float, help="step length in [-1, 1] pixel units")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--no-progress", action="store_true")


def _search_kwargs(args: argparse.Namespace, run: str) -> dict:
    from dam.probes.runner import training_m

    kw = {"m": args.m or training_m(run), "clip": not args.no_clip, "progress": False if args.no_progress else None}
    if args.float64:
        kw["dtype"] = torch.float64
    if args.eps is not None:
        kw["eps"] = args.eps
    if args.max_steps is not None:
        kw["max_steps"] = args.max_steps
    return kw


def cmd_rubbish(args: argparse.Namespace) -> int:
    from dam.probes import RubbishSearch
    from dam.probes.runner import model_name, run_rubbish

    out = Path(args.out)
    for run in args.runs:
        result = run_rubbish(run, out, RubbishSearch(**_search_kwargs(args, run)), args.per_class, args.seed)
        print(f"{model_name(run)}: {len(result.targets)} rubbish images, success {result.success.float().mean():.1%}, "
              f"stalled {result.stalled.float().mean():.1%} -> {out / model_name(run)}/rubbish.*")  # fmt: skip
    return 0


def _test_images(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    from dam.data import load_dataset

    x, y = load_dataset("mnist", "test", data_dir=args.data_dir)
    return x[: args.images].reshape(-1, 784), y[: args.images]


def cmd_boundary(args: argparse.Namespace) -> int:
    from dam.probes import BoundarySearch
    from dam.probes.runner import model_name, run_boundary

    x, y = _test_images(args)
    out = Path(args.out)
    for run in args.runs:
        search = BoundarySearch(until=args.until, **_search_kwargs(args, run))
        r = run_boundary(run, out, search, x, y)
        d = r.distances("boundary")
        print(f"{model_name(run)}: {len(x)} images, success {r.success.float().mean():.1%}, "
              f"stalled {r.stalled.float().mean():.1%}, stuck {r.stuck.float().mean():.1%}, "
              f"mean L2 {d['l2'].nanmean():.3f} -> {out / model_name(run)}/boundary.*")  # fmt: skip
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from dam.probes.runner import run_calibration

    x, y = _test_images(args)
    results = {}
    for run in args.runs:
        c = run_calibration(run, Path(args.out), x, y)
        results[c["model"]] = {"beta_sm": c["beta_sm"], "accuracy": c["accuracy"]}
    print(json.dumps(results, indent=2))
    return 0


def cmd_transfer(args: argparse.Namespace) -> int:
    from dam.probes.runner import run_transfer

    options = {k: v for k, v in (("eps", args.eps), ("max_steps", args.max_steps)) if v is not None}
    if args.no_progress:
        options["progress"] = False
    tables = run_transfer(args.runs, Path(args.out), images=args.images, per_class=args.per_class, seed=args.seed,
                          data_dir=args.data_dir, search_options=options)  # fmt: skip
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

    for path in figures_for(args.out, args.runs):
        print(path)
    return 0


def add_probe_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rubbish", help="rubbish images from noise for each model (Fig. 3)")
    _common(p)
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_rubbish)

    p = sub.add_parser("boundary", help="decision-boundary images of the test set for each model (Fig. 4)")
    _common(p)
    p.add_argument("--images", type=int, default=10000, help="first N test images")
    p.add_argument("--until", choices=["crossing", "converged"], default="crossing")
    p.set_defaults(func=cmd_boundary)

    p = sub.add_parser("calibrate", help="beta_sm with mean confidence = accuracy, binned error (Fig. 7)")
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--data-dir")
    p.add_argument("--images", type=int, default=10000)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("transfer", help="adversarial and rubbish transfer tables between models (Fig. 5, 6)")
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--data-dir")
    p.add_argument("--images", type=int, default=10000)
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eps", type=float, help="step length of both searches")
    p.add_argument("--max-steps", type=int, help="step budget of both searches")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_transfer)

    p = sub.add_parser("figures", help="PNG pictures (Fig. 2-7) from the probe outputs in --out")
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", required=True, help="the folder given to rubbish/boundary/calibrate/transfer")
    p.set_defaults(func=cmd_figures)
