"""The ``dam`` command: one subcommand per verb.  Errors the user can fix print one line, not a traceback."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

from dam.data import DatasetError
from dam.extras import MissingExtraError
from dam.model import CheckpointError, InputError
from dam.report.browser import ReportCheckError

USER_ERRORS = (
    DatasetError,
    CheckpointError,
    InputError,
    ReportCheckError,
    MissingExtraError,
    FileExistsError,
    FileNotFoundError,
    ValueError,
)


def _add_train(sub: argparse._SubParsersAction) -> None:
    from dam.presets import preset_names, schedule_names

    p = sub.add_parser(
        "train",
        help="train a DAM_n classifier with the authors' algorithm",
        description="Train DAM_n on MNIST. A preset fills in every setting; any option overrides it.",
    )
    p.add_argument(
        "--model", choices=["dam", "mlp-relu", "mlp-repu"], default="dam",
        help="dam (default), or a baseline trained with cross-entropy and Adam: a one-hidden-layer network of "
        "ReLU units or of rectified-polynomial units of degree --degree",
    )  # fmt: skip
    p.add_argument("--degree", type=int, help="mlp-repu: power of the hidden units (n - 1 matches DAM_n; default 2)")
    p.add_argument("--hidden", type=int, help="mlp-*: hidden units (default 2000)")
    p.add_argument("--preset", choices=preset_names(), help="model preset (n2, n3, n20, n30)")
    p.add_argument("--schedule", choices=schedule_names(), default="cpu", help="training schedule (default: cpu)")
    p.add_argument("--n", type=int, help="power of the interaction vertex")
    p.add_argument("--m", type=int, help="loss power: (Y - t)^(2m)")
    p.add_argument("--temperature", type=float, help="constant temperature T (pixel units)")
    p.add_argument("--temperature-start", type=float, help="T_i of a linear ramp")
    p.add_argument("--temperature-end", type=float, help="T_f of a linear ramp")
    p.add_argument("--ramp-epochs", type=int, help="epochs over which T goes from T_i to T_f")
    p.add_argument("--memories", type=int, dest="num_memories", help="number of memories K")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="initial learning rate eps0")
    p.add_argument("--lr-decay", type=float, help="per-epoch factor f: eps = eps0 * f^epoch")
    p.add_argument("--momentum", type=float, help="momentum p")
    p.add_argument("--seed", type=int)
    p.add_argument("--train-subset", type=int, help="train on this many examples (seeded choice)")
    p.add_argument("--validation", action="store_true", default=None, help="hold out 10k training images")
    p.add_argument("--eval-every", type=int, help="evaluate every this many epochs")
    p.add_argument("--dtype", choices=["float32", "float64"])
    p.add_argument("--dataset", choices=["mnist", "fashion-mnist"])
    p.add_argument("--data-dir", help="folder with the IDX files (default: search, then download)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    p.add_argument("--out", required=True, help="run folder to write (or resume)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last finished epoch")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def _train_config(args: argparse.Namespace) -> Any:
    from dam.presets import preset
    from dam.training import TrainConfig

    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
    if args.temperature is not None:
        overrides.update(temperature_start=args.temperature, temperature_end=args.temperature, ramp_epochs=0)
    if args.preset:
        base = preset(args.preset, args.schedule)
        if "n" in overrides and overrides["n"] != base.n:
            raise ValueError(f"--n {overrides['n']} contradicts --preset {args.preset}")
        return replace(base, **overrides)
    if "n" not in overrides:
        raise ValueError("give --preset (n2, n3, n20, n30) or at least --n")
    return TrainConfig(**overrides)


def _train_mlp(args: argparse.Namespace) -> int:
    from dam.baselines import MLPConfig, MLPTrainConfig, train_mlp

    dam_only = ["preset", "n", "m", "temperature", "temperature_start", "temperature_end", "ramp_epochs",
                "num_memories", "lr_decay", "momentum", "dtype"]  # fmt: skip
    given = [f"--{k.replace('_', '-')}" for k in dam_only if getattr(args, k, None) is not None]
    if given:
        raise ValueError(f"{', '.join(given)}: DAM settings, not used by --model {args.model}")
    if args.model == "mlp-relu" and args.degree not in (None, 1):
        raise ValueError("--model mlp-relu has degree 1; use --model mlp-repu --degree D")
    degree = 1 if args.model == "mlp-relu" else (args.degree if args.degree is not None else 2)
    if args.model == "mlp-repu" and degree < 2:
        raise ValueError("--model mlp-repu needs --degree >= 2 (degree 1 is mlp-relu)")
    model_config = MLPConfig(degree=degree, hidden=args.hidden if args.hidden is not None else 2000)
    keys = ("epochs", "batch_size", "lr", "seed", "train_subset", "validation", "eval_every", "dataset")
    overrides = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    out = Path(args.out)
    train_config = MLPTrainConfig(**overrides)
    if args.resume and (out / "train_state.safetensors").exists():
        # The saved settings rule a resumed run; only --epochs may extend it.
        from dam.training import read_run_config

        saved = read_run_config(out)
        if saved.get("kind") != "mlp":
            raise ValueError(f"{out} holds a {saved.get('kind', 'dam')!r} run; resume it without --model")
        model_config = MLPConfig(**saved["model"])
        train_config = replace(MLPTrainConfig(**saved["train"]), **({"epochs": args.epochs} if args.epochs else {}))
    print(f"training {model_config.name} into {out}", file=sys.stderr)
    train_mlp(model_config, train_config, out, data_dir=args.data_dir, device=args.device,
              resume=args.resume, progress=False if args.no_progress else None)  # fmt: skip
    from dam.io import read_jsonl

    last = read_jsonl(out / "metrics.jsonl")[-1:]
    print(
        json.dumps({"run": str(out), "model": asdict(model_config), "last_epoch": last[0] if last else None}, indent=2)
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from dam.training import STATE_FILE, train

    if args.model != "dam":
        return _train_mlp(args)
    if args.degree is not None or args.hidden is not None:
        raise ValueError("--degree and --hidden are settings of --model mlp-relu / mlp-repu")
    out = Path(args.out)
    if args.resume and (out / STATE_FILE).exists():
        # The saved settings rule a resumed run; only --epochs may extend it.
        config = None
        if args.epochs is not None:
            from dam.training import TrainConfig, read_run_config

            config = replace(TrainConfig.from_dict(read_run_config(out)["train"]), epochs=args.epochs)
    else:
        config = _train_config(args)
    print(f"training into {out}", file=sys.stderr)
    model = train(
        config,
        out,
        data_dir=args.data_dir,
        device=args.device,
        resume=args.resume,
        progress=False if args.no_progress else None,
    )
    from dam.io import read_jsonl

    last = read_jsonl(out / "metrics.jsonl")[-1:]
    summary = {"run": str(out), "model": asdict(model.config), "last_epoch": last[0] if last else None}
    print(json.dumps(summary, indent=2))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from dam.evaluate import evaluate_run

    result = evaluate_run(args.run, split=args.split, data_dir=args.data_dir, device=args.device)
    text = json.dumps(result, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    if args.format == "json":
        print(text)
    else:
        print(
            f"{args.run}: {result['split']} error {100 * result['error']:.2f}% "
            f"({result['errors']}/{result['examples']})"
        )
        print("confusion matrix (rows: true class, columns: predicted):")
        print("      " + " ".join(f"{c:>5d}" for c in range(10)))
        for i, row in enumerate(result["confusion_matrix"]):
            print(f"{i:>5d} " + " ".join(f"{v:>5d}" for v in row))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from dam.evaluate import run_info

    info = run_info(args.run)
    if args.format == "json":
        print(json.dumps(info, indent=2))
        return 0
    model, train_cfg, last = info["model"], info.get("train") or {}, info.get("last_epoch") or {}
    print(f"run       {args.run}")
    if info.get("kind") == "mlp":
        unit = "ReLU" if model["degree"] == 1 else f"ReLU^{model['degree']}"
        print(f"model     MLP 784-{model['hidden']}-10, {unit} units")
        if train_cfg:
            print(f"training  cross-entropy, Adam lr={train_cfg['lr']} epochs {info['epochs_done']}/"
                  f"{train_cfg['epochs']} batch={train_cfg['batch_size']} seed={train_cfg['seed']}")  # fmt: skip
    else:
        print(f"model     DAM_{model['n']}  K={model['num_memories']}  T={model['temperature']:g}")
    if train_cfg and info.get("kind", "dam") == "dam":
        print(
            f"training  m={train_cfg['m']} epochs {info['epochs_done']}/{train_cfg['epochs']} "
            f"batch={train_cfg['batch_size']} lr={train_cfg['lr']} f={train_cfg['lr_decay']} "
            f"p={train_cfg['momentum']} seed={train_cfg['seed']}"
        )
    for key in ("test_error", "validation_error", "train_error", "loss"):
        if key in last:
            print(f"{key:<9s} {last[key]:.4g} (epoch {last['epoch']})")
    env = info.get("environment") or {}
    if env:
        print(f"written   dam {env.get('dam')}, torch {env.get('torch')}, python {env.get('python')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dam", description="Dense Associative Memory classifiers and probes.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)

    p = sub.add_parser("evaluate", help="test error and confusion matrix of a run folder")
    p.add_argument("run")
    p.add_argument("--split", choices=["test", "train"], default="test")
    p.add_argument("--data-dir")
    p.add_argument("--device", default="cpu")
    p.add_argument("--format", choices=["text", "json"], default="text", help="what to print")
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON to FILE")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("info", help="settings, progress and metrics of a run folder")
    p.add_argument("run")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(func=cmd_info)

    from dam.cli_probes import add_probe_commands

    add_probe_commands(sub)
    from dam.cli_report import add_report_commands

    add_report_commands(sub)
    from dam.cli_adversarial import add_adversarial_commands

    add_adversarial_commands(sub)
    from dam.cli_attacks import add_attack_commands

    add_attack_commands(sub)
    from dam.cli_detect import add_detect_command

    add_detect_command(sub)
    return parser


def _version() -> str:
    from dam import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        print(f"dam {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        how = "run the same command again" if args.command == "reproduce" else "resume with --resume"
        print(f"dam {args.command}: interrupted; finished epochs and results are saved ({how})", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
