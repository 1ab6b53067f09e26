"""``dam attack``: standard attacks, robust accuracy against budget and the gradient-masking verdict."""

from __future__ import annotations

import argparse
from dataclasses import replace

from dam.cli.args import (
    check_test_images,
    device,
    l2_budgets,
    linf_budgets,
    nonnegative_int,
    note_unfinished,
    positive_int,
    seed,
)
from dam.errors import ConfigError


def cmd_attack(args: argparse.Namespace) -> int:
    from dam.robustness.attacks.runner import AttackSuite, check_sources, run_attacks
    from dam.runs import common_dataset, distinct_names, load_model

    for run in [*args.runs, *args.transfer_from]:  # every model readable before any attack (weights too)
        load_model(run)
    note_unfinished([*args.runs, *args.transfer_from])
    distinct_names(args.runs)
    distinct_names(args.transfer_from)
    check_sources(args.runs, args.transfer_from)
    check_test_images("--images", args.images, common_dataset(args.runs))
    # settings are checked before the output folder is made; a flag that would have no effect is refused
    unused = {"--autoattack none": ["--aa-steps", "--no-fab", "--square-queries"] if args.autoattack == "none" else [],
              "--hsj-steps 0": ["--hsj-max-evals", "--hsj-norms"] if args.hsj_steps == 0 else []}  # fmt: skip
    for cause, flags in unused.items():
        given = [f for f in flags if getattr(args, f[2:].replace("-", "_")) not in (None, False)]
        if given:
            raise ConfigError(f"{', '.join(given)}: no effect with {cause}")
    if args.hsj_norms is not None and not args.hsj_norms.strip(","):
        raise ConfigError("--hsj-norms '': give linf, l2 or linf,l2 (--hsj-steps 0 leaves HopSkipJump out)")
    d = AttackSuite()
    given = {k: v for k, v in (("hsj_max_evals", args.hsj_max_evals), ("aa_steps", args.aa_steps),
                               ("square_queries", args.square_queries)) if v is not None}  # fmt: skip
    if args.hsj_norms is not None:
        given["hsj_norms"] = tuple(args.hsj_norms.split(","))
    suite = replace(d, images=args.images, seed=args.seed, linf=args.linf, l2=args.l2, pgd_steps=args.pgd_steps,
                    hsj_steps=args.hsj_steps, autoattack=args.autoattack, aa_fab=not args.no_fab, **given)  # fmt: skip
    # (run_attacks refuses a training run's folder and locks its own)
    summary = run_attacks(args.runs, args.out, suite, sources=args.transfer_from, data_dir=args.data_dir,
                          device=args.device, replace=args.force, workers=args.workers)  # fmt: skip
    for norm in ("linf", "l2"):
        eps = summary["suite"][norm]
        print(f"\nrobust accuracy, {norm}, worst case over all attacks ({summary['images']['count']} images)")
        print(f"{'model':<14}{'clean':>8}" + "".join(f"{e:>9g}" for e in eps))
        for name, m in summary["models"].items():
            t = m["tables"][norm]
            print(f"{name:<14}{t['clean_accuracy']:>8.1%}" + "".join(f"{a:>9.1%}" for a in t["worst_case"]))
    print()
    print(f"protocol: {summary['protocol']}")
    for m in summary["models"].values():
        print(m["verdict"]["verdict"])
    print(f"\nwrote {args.out}/robustness.json, robust_accuracy_*.csv, masking.csv, robust_accuracy.png")
    return 0


def add_attack_commands(sub: argparse._SubParsersAction) -> None:
    from dam.robustness.attacks.runner import AttackSuite

    d = AttackSuite()
    p = sub.add_parser(
        "attack",
        help="the AutoAttack protocol (APGD-CE, APGD-T, FAB-T, Square), FGSM, PGD, HopSkipJump and transfer attacks; "
        "worst case per image, convergence check, masking diagnostics (needs dam[attacks])",
    )
    p.add_argument("runs", nargs="+", help="run folders (DAMs or baselines) to attack")
    p.add_argument("--out", required=True, help="output folder (locked while written; finished models are reused "
                   "from OUT/models; robustness.json and the CSVs hold this call's models)")  # fmt: skip
    p.add_argument("--force", action="store_true",
                   help="attack again models whose result in --out was made otherwise (default: refuse)")  # fmt: skip
    p.add_argument("--transfer-from", nargs="*", default=[], metavar="RUN",
                   help="source models whose PGD and APGD-T adversarials are shown to every other model")  # fmt: skip
    p.add_argument("--images", type=positive_int, default=d.images, help="size of the seeded test subset")
    p.add_argument("--seed", type=seed, default=d.seed)
    p.add_argument("--linf", type=linf_budgets, default=d.linf, help="L-inf budgets, comma-separated")
    p.add_argument("--l2", type=l2_budgets, default=d.l2, help="L2 budgets, comma-separated")
    p.add_argument("--pgd-steps", type=positive_int, default=d.pgd_steps)
    p.add_argument("--hsj-steps", type=nonnegative_int, default=d.hsj_steps, help="HopSkipJump iterations (0: skip it)")
    p.add_argument("--hsj-max-evals", type=positive_int,
                   help=f"HopSkipJump's cap on queries per gradient estimate (default {d.hsj_max_evals})")  # fmt: skip
    p.add_argument(
        "--hsj-norms", help=f"norms HopSkipJump runs in: linf, l2 or linf,l2 (default {','.join(d.hsj_norms)})"
    )
    p.add_argument("--autoattack", choices=["standard", "plus", "none"], default=d.autoattack,
                   help="the AutoAttack protocol (default: standard, the field's standard evaluation)")  # fmt: skip
    p.add_argument("--aa-steps", type=positive_int,
                   help="APGD/FAB iterations (100 in the protocol; fewer: a reduced run, named so)")  # fmt: skip
    p.add_argument("--no-fab", action="store_true", help="leave FAB-T out (a reduced run)")
    p.add_argument("--square-queries", type=nonnegative_int,
                   help="Square's query budget (5000 in the protocol; 0 leaves it out)")  # fmt: skip
    p.add_argument("--data-dir")
    p.add_argument("--device", type=device, default="cpu")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="models attacked at once, each in its own process with its share of the CPU cores (default "
                        "1; small models go faster several at a time, and each holds its own memory)")  # fmt: skip
    p.set_defaults(func=cmd_attack)
