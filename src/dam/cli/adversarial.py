"""``dam adversarial-train``: fine-tune a trained DAM on clean plus boundary-adversarial images, then
measure clean error and distance to the decision boundary before and after."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from dam.cli.args import check_test_images, device, fraction, positive_float, positive_int, seed
from dam.errors import InputError

# CLI option -> AdversarialTrainConfig field
_SETTINGS = ("epochs", "fraction", "train_subset", "lr", "lr_decay", "momentum", "batch_size", "eps", "max_steps",
             "seed")  # fmt: skip


def _config(args: argparse.Namespace) -> Any:
    from dam.robustness.adversarial_training import AdversarialTrainConfig
    from dam.runs import STATE_FILE, read_run_config

    given = {k: getattr(args, k) for k in _SETTINGS if getattr(args, k) is not None}
    if args.train_subset == 0:  # 0: the whole training set
        given["train_subset"] = None
    out = Path(args.out)
    if args.resume and (out / STATE_FILE).exists():
        # The saved settings rule a resumed run; options given must agree with them, but for --epochs.
        saved = AdversarialTrainConfig.from_dict(read_run_config(out).get("adversarial") or {})
        return replace(saved, **given)
    return AdversarialTrainConfig(**given)


def _row(name: str, before: float | None, after: float | None, fmt: str) -> str:
    cells = ["-" if v is None else format(v, fmt) for v in (before, after)]
    return f"{name:<24s}{cells[0]:>12s}{cells[1]:>12s}"


def cmd_adversarial_train(args: argparse.Namespace) -> int:
    from dam.results import read_json
    from dam.robustness.adversarial_training import (
        ROBUSTNESS_FILE,
        adversarial_finetune,
        measurement_search,
        robustness_differs,
        robustness_report,
    )
    from dam.runs import run_dataset, run_kind

    if run_kind(args.base_run) != "dam":
        raise InputError(f"{args.base_run}: not a DAM run; adversarial fine-tuning continues a DAM's training")
    # a plain --resume measures as the saved measurement did; what is given must agree with it (checked below)
    measured = read_json(Path(args.out) / ROBUSTNESS_FILE) if args.resume and not args.remeasure else None
    measured = measured if isinstance(measured, dict) else {}
    for key, default in (("eval_images", 500), ("eval_seed", 0)):
        if getattr(args, key) is None:
            setattr(args, key, measured[key] if isinstance(measured.get(key), int) else default)
    check_test_images("--eval-images", args.eval_images, run_dataset(args.base_run))
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise InputError(f"--data-dir {args.data_dir}: no such folder")
    config = _config(args)
    out = Path(args.out)
    measure = {"eval_images": args.eval_images, "eval_seed": args.eval_seed}
    # A finished measurement is never replaced in silence.  Only a resumed run can hold one (a new --out is empty,
    # --force moves the old run aside), and the fine-tuning does not touch it; unreadable: measured again.
    saved = measured or None  # (read above, for the measurement's settings)
    search = measurement_search(args.base_run)
    if saved is not None:
        # (the weights are compared after the fine-tuning, which refuses a base run other than its own first)
        differs = robustness_differs(saved, out, args.base_run, **measure, weights=False, search=search)
        if differs:
            raise InputError(f"{out / ROBUSTNESS_FILE}: measured otherwise (saved, given): {'; '.join(differs)}; give "
                             "the same settings, or --remeasure to measure again and replace it")  # fmt: skip
    print(f"adversarial fine-tuning of {args.base_run} into {out}: {json.dumps(asdict(config))} (null: as the base run "
          "was trained)", file=sys.stderr)  # fmt: skip
    progress = False if args.no_progress else None
    adversarial_finetune(args.base_run, out, config, data_dir=args.data_dir, device=args.device,
                         resume=args.resume, force=args.force, progress=progress)  # fmt: skip
    # robustness_report reuses a measurement of these settings, search and weights, measures one of other weights
    # again (with a warning), and replaces one made otherwise only with --remeasure (warned too)
    current = read_json(out / ROBUSTNESS_FILE)
    same = isinstance(current, dict) and not robustness_differs(current, out, args.base_run, **measure, search=search)
    if same:
        print(f"{out / ROBUSTNESS_FILE}: already measured with these settings and weights; reused", file=sys.stderr)
    else:
        # the fine-tuning's own boundary search, the one it trained against: favourable to the fine-tuned model, so a
        # comparison, not the robustness measure (that is dam attack's worst case over the standard attacks)
        print(f"measuring the distance to the decision boundary on {args.eval_images} test images (seed "
              f"{args.eval_seed}), with the search the fine-tuning trained against; for robust accuracy under the "
              f"standard attacks: dam attack {out}", file=sys.stderr)  # fmt: skip
    report = robustness_report(args.base_run, out, **measure, data_dir=args.data_dir, device=args.device,
                               replace=args.remeasure, progress=progress)  # fmt: skip
    b, a = report["base"], report["finetuned"]
    print(f"{'':<24s}{'base':>12s}{'fine-tuned':>12s}")
    print(_row("test error (all)", b["test_error"], a["test_error"], ".2%"))
    print(_row(f"clean error ({args.eval_images})", b["clean_error"], a["clean_error"], ".2%"))
    print(_row("boundary found", b["success_rate"], a["success_rate"], ".1%"))
    print(_row("search stalled", b["stalled_rate"], a["stalled_rate"], ".1%"))  # zero gradient: masking
    print(_row("search stuck", b["stuck_rate"], a["stuck_rate"], ".1%"))  # local minimum before crossing
    for key in ("l2_mean", "l2_median", "l2_median_all", "linf_mean", "linf_median"):
        print(_row(f"distance {key}", b[key], a[key], ".3f"))
    print(f"written to {out / ROBUSTNESS_FILE}")
    return 0


def add_adversarial_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "adversarial-train",
        help="fine-tune a DAM run on clean plus decision-boundary adversarial images; robustness before/after",
        description="Continue training BASE_RUN with the authors' rule at its final temperature and m, on "
        "minibatches of clean images plus, for --fraction of them, the image one step past the decision "
        "boundary found on the current weights (labelled with the true label). Then write "
        "OUT/robustness.json: test error and distance to the boundary of both models. Each searched image "
        "costs ~50-100 gradient steps: at --fraction 0.1 an epoch costs about 10 clean epochs (DAM_20, K = 2000, "
        "one thread: ~30 s per 10,000 images).",
    )
    p.add_argument("base_run", help="a trained DAM run folder (read only)")
    p.add_argument("--out", required=True, help="run folder to write (or resume)")
    p.add_argument("--epochs", type=positive_int, help="fine-tuning epochs (default 3)")
    p.add_argument("--fraction", type=fraction, help="share of each minibatch searched for adversarials (default 0.1)")
    p.add_argument("--train-subset", type=int, help="train on this many images (seeded; default 10000, 0: all)")
    p.add_argument("--lr", type=positive_float, help="learning rate (default: the base run's last one)")
    p.add_argument("--lr-decay", type=fraction, help="per-epoch factor (default 1)")
    p.add_argument("--momentum", type=float, help="default: the base run's")
    p.add_argument("--batch-size", type=positive_int, help="clean images per minibatch (default: the base run's)")
    p.add_argument("--eps", type=positive_float, help="search step in [-1, 1] pixel units (default 0.05)")
    p.add_argument("--max-steps", type=positive_int, help="search budget per image (default 200)")
    p.add_argument("--seed", type=seed, help="shuffling and subset seed (default 0)")
    p.add_argument("--eval-images", type=positive_int, help="seeded test images for the boundary distances (default "
                   "500, or with --resume the saved measurement's)")  # fmt: skip
    p.add_argument("--eval-seed", type=seed, help="their seed (default 0, or with --resume the saved measurement's)")
    p.add_argument("--data-dir", help="default: the folder the base run was trained on")
    p.add_argument("--device", type=device, default="cpu")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its last saved epoch")
    g.add_argument("--force", action="store_true", help="move a run already in --out aside (never deleted)")
    p.add_argument(
        "--remeasure", action="store_true", help="measure robustness again, replacing a robustness.json made otherwise"
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_adversarial_train)
