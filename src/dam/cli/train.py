"""``dam train | evaluate | info``: training runs and what they hold."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

from dam.cli.args import device, finite_float, fraction, positive_float, positive_int, seed
from dam.errors import ConfigError

DAM_ONLY = ["preset", "n", "m", "temperature", "temperature_start", "temperature_end", "ramp_epochs",
            "num_memories", "lr_decay", "momentum", "dtype", "schedule"]  # fmt: skip


def add_train_commands(sub: argparse._SubParsersAction) -> None:
    from dam.training.presets import preset_names, schedule_names

    p = sub.add_parser(
        "train",
        help="train a DAM_n classifier with the authors' algorithm (or an MLP baseline)",
        description="Train DAM_n on MNIST. A preset fills in every setting; any option overrides it.",
    )
    p.add_argument(
        "--model", choices=["dam", "mlp-relu", "mlp-repu"], default="dam",
        help="dam (default), or a baseline trained with cross-entropy and Adam: a one-hidden-layer network of "
        "ReLU units or of rectified-polynomial units of degree --degree",
    )  # fmt: skip
    p.add_argument("--degree", type=positive_int, help="mlp-repu: power of the hidden units (default 2)")
    p.add_argument("--hidden", type=positive_int, help="mlp-*: hidden units (default 2000)")
    p.add_argument("--preset", choices=preset_names(), help="model preset (n2, n3, n20, n30)")
    p.add_argument("--schedule", choices=schedule_names(), help="training schedule of --preset (default: cpu)")
    p.add_argument("--n", type=positive_int, help="power of the interaction vertex")
    p.add_argument("--m", type=positive_int, help="loss power: (Y - t)^(2m)")
    p.add_argument("--temperature", type=positive_float, help="constant temperature T (pixel units)")
    p.add_argument("--temperature-start", type=positive_float, help="T_i of a linear ramp")
    p.add_argument("--temperature-end", type=positive_float, help="T_f of a linear ramp")
    p.add_argument("--ramp-epochs", type=int, help="epochs over which T goes from T_i to T_f")
    p.add_argument("--memories", type=positive_int, dest="num_memories", help="number of memories K")
    p.add_argument("--epochs", type=positive_int)
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--lr", type=positive_float, help="initial learning rate eps0")
    p.add_argument("--lr-decay", type=fraction, help="per-epoch factor f: eps = eps0 * f^epoch")
    p.add_argument("--momentum", type=finite_float, help="momentum p")
    p.add_argument("--seed", type=seed)
    p.add_argument(
        "--seeds", type=seed, nargs="+", metavar="SEED",
        help="train one DAM per seed, all in this process (stacked: fills a GPU that one model leaves idle), "
        "into run folders OUT/s{SEED}; --resume continues each",
    )  # fmt: skip
    p.add_argument("--train-subset", type=positive_int, help="train on this many examples (seeded choice)")
    p.add_argument("--validation", action="store_true", default=None, help="hold out 10k training images")
    p.add_argument("--eval-every", type=positive_int, help="evaluate every this many epochs")
    p.add_argument("--dtype", choices=["float32", "float64"])
    p.add_argument("--dataset", choices=["mnist", "fashion-mnist"])
    p.add_argument("--data-dir", help="folder with the IDX files (default: search, then download)")
    p.add_argument("--device", type=device, default="cpu", help="auto, cpu, cuda, cuda:1, ... (default: cpu)")
    p.add_argument("--out", required=True, help="run folder to write (or resume)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its last saved epoch")
    g.add_argument("--force", action="store_true", help="move a run already in --out aside (never deleted)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="test error and confusion matrix of a run folder")
    p.add_argument("run")
    p.add_argument("--split", choices=["test", "train"], default="test")
    p.add_argument("--data-dir")
    p.add_argument("--device", type=device, default="cpu")
    p.add_argument("--format", choices=["text", "json"], default="text", help="what to print")
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON to FILE")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("info", help="settings, progress and metrics of a run folder")
    p.add_argument("run")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(func=cmd_info)


def train_config(args: argparse.Namespace) -> Any:
    """The DAM settings the flags ask for: a preset (and schedule) with every given flag on top."""
    from dam.training import TrainConfig
    from dam.training.presets import preset

    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
    if args.temperature is not None:
        ramp = [
            f"--{k.replace('_', '-')}"
            for k in ("temperature_start", "temperature_end", "ramp_epochs")
            if getattr(args, k) is not None
        ]
        if ramp:
            raise ConfigError(
                f"--temperature (constant T) contradicts {', '.join(ramp)} (a ramp); give one or the other"
            )
        overrides.update(temperature_start=args.temperature, temperature_end=args.temperature, ramp_epochs=0)
    if args.preset:
        base = preset(args.preset, args.schedule or "cpu")
        if "n" in overrides and overrides["n"] != base.n:
            raise ConfigError(f"--n {overrides['n']} contradicts --preset {args.preset}")
        config = replace(base, **overrides)
    else:
        if args.schedule:
            raise ConfigError("--schedule sets the epochs and learning-rate schedule of a --preset; give --preset too")
        if "n" not in overrides:
            raise ConfigError("give --preset (n2, n3, n20, n30) or at least --n")
        config = TrainConfig(**overrides)
    # a temperature flag the schedule would not use is refused, never ignored: a ramp from T_i to an equal T_f
    # changes nothing (and T_i without a ramp is refused where a run starts, dam.training.loop.check_new_run)
    if args.ramp_epochs and config.temperature_start == config.temperature_end:
        raise ConfigError(
            f"--ramp-epochs {args.ramp_epochs}: T_i and T_f are both {config.temperature_end:g}, so nothing ramps; "
            "give --temperature-start and --temperature-end too"
        )
    return config


def _train_mlp(args: argparse.Namespace, out: Path) -> Any:
    from dam.baselines import MLPConfig
    from dam.training import MLPTrainConfig, train_mlp

    given = [f"--{k.replace('_', '-')}" for k in DAM_ONLY if getattr(args, k, None) is not None]
    if given:
        raise ConfigError(f"{', '.join(given)}: DAM settings, not used by --model {args.model}")
    if args.model == "mlp-relu" and args.degree not in (None, 1):
        raise ConfigError("--model mlp-relu has degree 1; use --model mlp-repu --degree D")
    degree = 1 if args.model == "mlp-relu" else (args.degree if args.degree is not None else 2)
    if args.model == "mlp-repu" and degree < 2:
        raise ConfigError("--model mlp-repu needs --degree >= 2 (degree 1 is mlp-relu)")
    model_config = MLPConfig(degree=degree, hidden=args.hidden if args.hidden is not None else 2000)
    keys = ("epochs", "batch_size", "lr", "seed", "train_subset", "validation", "eval_every", "dataset")
    overrides = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    train_settings: Any = MLPTrainConfig(**overrides)
    from dam.runs import OutputFolder

    # a run to continue, or one killed before its first epoch was saved (it starts again, as its record says)
    if args.resume and ((out / "train_state.safetensors").exists() or OutputFolder(out).unstarted_run()):
        from dam.runs import read_run_config

        saved = read_run_config(out)  # the saved settings rule a resumed run; only --epochs may extend it
        if saved.get("kind") != "mlp":
            raise ConfigError(f"{out} holds a {saved.get('kind', 'dam')!r} run; resume it without --model")
        if (args.model == "mlp-relu") != (saved["model"].get("degree") == 1):
            raise ConfigError(f"{out} holds a run of degree {saved['model'].get('degree')}, not --model {args.model}")
        # flags given on resume are laid over the saved settings: one that differs is refused, never ignored
        model_config = MLPConfig(**{**saved["model"], **{k: v for k, v in asdict(model_config).items()
                                                         if getattr(args, k, None) is not None}})  # fmt: skip
        train_settings = replace(MLPTrainConfig(**saved["train"]), **overrides) if overrides else None
    train_mlp(model_config, train_settings, out, data_dir=args.data_dir, device=args.device, resume=args.resume,
              force=args.force, progress=False if args.no_progress else None)  # fmt: skip
    return asdict(model_config)


def dam_settings(args: argparse.Namespace, out: Path, seed: int | None = None) -> Any:
    """The TrainConfig for run folder ``out`` (with ``seed``, when given): None to resume a run with its saved
    settings, which only --epochs may extend; the flags' settings otherwise."""
    from dam.runs import STATE_FILE, OutputFolder

    # a run to continue, or one killed before its first epoch was saved (it starts again, as its record says)
    if args.resume and ((out / STATE_FILE).exists() or OutputFolder(out).unstarted_run()):
        from dam.runs import read_run_config, resume_flags
        from dam.training import TrainConfig

        record = read_run_config(out)
        if record.get("kind", "dam") != "dam":  # a baseline's settings never become a DAM's
            raise ConfigError(f"{out}: holds a {record.get('kind')!r} run; resume it with {resume_flags(record)}")
        if args.preset:  # the command that started the run, again: its settings must be the saved ones
            config = train_config(args)
            return config if seed is None else replace(config, seed=seed)
        if args.schedule:
            raise ConfigError("--schedule sets the schedule of a --preset; give --preset too")
        saved = TrainConfig.from_dict(read_run_config(out)["train"])
        given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
        if args.temperature is not None:
            given.update(temperature_start=args.temperature, temperature_end=args.temperature)
        # a flag that differs from the saved run is refused (by train's resume rule), never ignored
        return None if not given else replace(saved, **given)
    if args.resume and not args.preset and args.n is None:
        seeds = sorted(
            int(p.name[1:]) for p in out.glob("s[0-9]*") if p.name[1:].isdigit() and (p / "config.json").exists()
        )
        if seeds:  # a folder of --seeds runs
            raise ConfigError(f"{out}: holds one run per seed; resume them with --seeds {' '.join(map(str, seeds))}")
        raise ConfigError(f"{out}: no run to resume there; to start one, give --preset (n2, n3, n20, n30) or --n")
    config = train_config(args)
    return config if seed is None else replace(config, seed=seed)


def _summary(out: Path, model_settings: dict[str, Any]) -> dict[str, Any]:
    from dam.io import read_jsonl
    from dam.runs import METRICS_FILE

    last = read_jsonl(out / METRICS_FILE)[-1:]
    return {"run": str(out), "model": model_settings, "last_epoch": last[0] if last else None}


def cmd_train(args: argparse.Namespace) -> int:
    # The flags are checked first, then the folder and the settings against it (train() and train_mlp(), which
    # remove a folder they made for a refused run), all before any data is read or anything computed.
    out = Path(args.out)
    if args.seeds is not None:
        return _train_seeds(args, out)
    if args.model != "dam":
        model_settings = _train_mlp(args, out)
    else:
        from dam.training import train

        if args.degree is not None or args.hidden is not None:
            raise ConfigError("--degree and --hidden are settings of --model mlp-relu / mlp-repu")
        settings = dam_settings(args, out)
        model = train(settings, out, data_dir=args.data_dir, device=args.device, resume=args.resume,
                      force=args.force, progress=False if args.no_progress else None)  # fmt: skip
        model_settings = asdict(model.config)
    print(json.dumps(_summary(out, model_settings), indent=2))
    return 0


def _train_seeds(args: argparse.Namespace, out: Path) -> int:
    """``--seeds``: one DAM per seed into OUT/s{seed}, trained together (dam.training.train_many)."""
    from dam.runs import OutputFolder
    from dam.training import train_many

    if args.model != "dam" or args.degree is not None or args.hidden is not None:
        raise ConfigError("--seeds trains DAMs; train baselines one --seed at a time")
    if args.seed is not None:
        raise ConfigError("--seed and --seeds: give one or the other")
    if len(set(args.seeds)) != len(args.seeds):
        raise ConfigError(f"--seeds {' '.join(map(str, args.seeds))}: a seed is repeated")
    if OutputFolder(out).holds_run():
        raise ConfigError(f"{out}: holds a run; --seeds writes one run folder per seed inside --out, give another")
    outs = [out / f"s{seed}" for seed in args.seeds]
    settings = [dam_settings(args, folder, seed) for folder, seed in zip(outs, args.seeds, strict=True)]
    models = train_many(settings, outs, data_dir=args.data_dir, device=args.device, resume=args.resume,
                        force=args.force, progress=False if args.no_progress else None)  # fmt: skip
    print(json.dumps([_summary(f, asdict(m.config)) for f, m in zip(outs, models, strict=True)], indent=2))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from dam.io import atomic_write_bytes
    from dam.runs import LOCK_FILE, LOCK_OWNER_FILE, RUN_FILES, OutputFolder
    from dam.training.evaluate import evaluate_run

    target = Path(args.json) if args.json else None
    if target and target.is_dir():
        raise ConfigError(f"--json {target}: is a folder; give a file name")
    if target and target.name in (*RUN_FILES, LOCK_FILE, LOCK_OWNER_FILE) and OutputFolder(target.parent).holds_run():
        raise ConfigError(f"--json {target}: a file of the run folder itself; give another name")
    if target:  # where the result goes is checked before the data are read
        OutputFolder(target.parent, "--json file's folder").check_writable()
    result = evaluate_run(args.run, split=args.split, data_dir=args.data_dir, device=args.device)
    text = json.dumps(result, indent=2)
    if target:
        atomic_write_bytes(target, (text + "\n").encode())
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
    from dam.training.evaluate import run_info

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
