"""``dam sweep``: robustness against n, with seeds, on this machine or a Ray cluster."""

from __future__ import annotations

import argparse
from typing import Any

from dam.cli.args import nonnegative_float, nonnegative_int, positive_int
from dam.errors import InputError


def point_device(text: str) -> str:
    """auto, cpu, cuda or cuda:N: where each point runs.  The workers' GPUs are not the driver's, so a GPU
    is required here only with --backend local (checked when the command runs)."""
    name = text.strip().lower()
    if name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit()):
        return name
    raise argparse.ArgumentTypeError(f"{text!r} is not a device: use auto, cpu, cuda or cuda:N")


def cmd_sweep(args: argparse.Namespace) -> int:
    from dam.experiments.sweep import run_sweep

    if args.backend == "local":
        ray_only = {"--address": args.address, "--gpus-per-trial": args.gpus_per_trial,
                    "--cpus-per-trial": args.cpus_per_trial, "--max-retries": args.max_retries}  # fmt: skip
        given = [flag for flag, value in ray_only.items() if value is not None]
        if given:
            raise InputError(f"{' and '.join(given)}: only for --backend ray")
        from dam.environment import resolve_device

        resolve_device(args.device)  # a local sweep runs here: its GPU must be here
    summary = run_sweep(
        args.preset,
        args.out,
        backend=args.backend,
        address=args.address,
        gpus_per_trial=args.gpus_per_trial,
        cpus_per_trial=1 if args.cpus_per_trial is None else args.cpus_per_trial,
        max_retries=2 if args.max_retries is None else args.max_retries,
        data_dir=args.data_dir,
        device=args.device,
        log=print,  # the command's progress lines go to stdout, beside its summary
    )
    print_summary(summary)
    if summary["failed"]:
        print(f"\n{len(summary['failed'])} points failed:")
        for name, error in sorted(summary["failed"].items()):
            print(f"  {name}: {error}")
        print("run the same command again to retry them (finished points and epochs are reused)")
        return 1
    return 0


def print_summary(summary: dict[str, Any]) -> None:
    """Per n: clean error and worst-case robust accuracy at every budget, mean +- std over seeds."""
    rows = summary["per_n"]
    if not rows:
        return
    columns = [k for k in rows[0]["mean"] if k == "clean_error" or k.startswith("robust_")]
    names = ["clean error" if k == "clean_error" else k.removeprefix("robust_") for k in columns]
    print(f"\nmean +- std over seeds ({summary.get('protocol') or 'the suite'}); robust accuracy is the worst "
          "case over the attacks; (k seeds) where fewer seeds than the row's measured a value")  # fmt: skip
    print(f"{'n':>4}{'seeds':>6}" + "".join(f"{name:>22}" for name in names))
    for row in rows:
        cells = []
        for k in columns:
            mean, std, count = row["mean"].get(k), row["std"].get(k), row.get("count", {}).get(k)
            cell = "-" if mean is None else f"{mean:.1%}" + ("" if std is None else f" +- {std:.1%}")
            if mean is not None and count is not None and count < len(row["seeds"]):
                cell += f" ({count} seed{'s' if count > 1 else ''})"
            cells.append(cell)
        print(f"{row['n']:>4}{len(row['seeds']):>6}" + "".join(f"{c:>22}" for c in cells))


def add_sweep_command(sub: argparse._SubParsersAction) -> None:
    from dam.experiments.sweep import PRESETS

    p = sub.add_parser(
        "sweep",
        help="robustness against n with seed error bars: train, attack and probe DAM_n for many n (Ray optional)",
        description="Train one DAM_n per (n, seed) of a preset, attack and probe it, and summarise robust "
        "accuracy, clean error, boundary distance and rubbish confidence against n. Points run as Ray tasks "
        '(pip install "dam[sweep]") on this machine or a cluster, or one after another (--backend local). '
        "Running the same command again resumes: finished points are reused.",
    )
    p.add_argument("--preset", choices=list(PRESETS), default="quick",
                   help=" ".join(f"{k}: {v.description}" for k, v in PRESETS.items()))  # fmt: skip
    p.add_argument("--out", required=True, help="output folder (resumable; locked while the sweep runs)")
    p.add_argument("--backend", choices=["ray", "local"], default="ray",
                   help="ray (default): a task per point; local: one point after another in this process")  # fmt: skip
    p.add_argument("--address", help='Ray cluster to join: host:port, ray://host:port or "auto" (the one of '
                   "`ray start --head` here; $RAY_ADDRESS first if set, as Ray reads them); default: $RAY_ADDRESS if "
                   "set, else a new Ray here")  # fmt: skip
    p.add_argument("--gpus-per-trial", type=nonnegative_float,
                   help="GPUs per point (default: 0.25 when the cluster has GPUs, else 0)")  # fmt: skip
    p.add_argument("--cpus-per-trial", type=positive_int, help="CPUs (torch threads) per point (default 1)")
    p.add_argument(
        "--max-retries",
        type=nonnegative_int,
        help="times a point whose worker died is retried (default 2; it resumes from its run folder)",
    )
    p.add_argument("--data-dir", help="folder with the MNIST IDX files (the same path on every node)")
    p.add_argument("--device", type=point_device, default="auto",
                   help="where each point runs: auto (default: its GPU if it has one), cpu, cuda, cuda:N")  # fmt: skip
    p.set_defaults(func=cmd_sweep)
