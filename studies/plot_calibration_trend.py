"""Draw the calibrated beta_sm of trend runs against their epochs (docs/paper-claims.md, statement 10).

    python studies/plot_calibration_trend.py runs/trend/n30-paper-K2000.jsonl runs/trend/n20-paper-K2000.jsonl \
        --out docs/images/calibration_trend.png

Each OUT.jsonl is what studies/calibration_trend.py wrote beside its run folder OUT, whose config.json names the
model, K and schedule of the curve. The paper's calibrated values are drawn as dashed lines in the same colour,
with the band the report's rule accepts (within 25%).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from matplotlib.ticker import NullFormatter, ScalarFormatter

from dam.experiments.report.claims import PAPER_BETA
from dam.plotting import new_figure, save_figure
from dam.runs import read_run_config

RULE = 0.25  # the report's rule for statement 10: within 25% of the paper's value


def read_trend(path: Path) -> tuple[str, str, list[tuple[int, float]]]:
    """(model name, label, [(epoch, beta_sm)]) of one trend file; rows without a beta_sm are left out."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    points = sorted({r["epoch"]: r["beta_sm"] for r in rows if r.get("beta_sm") is not None}.items())
    train = read_run_config(path.with_suffix(""))["train"]
    schedule = f"{train['epochs']} epochs, eps x {train['lr_decay']} per epoch"
    return f"n{train['n']}", f"DAM_{train['n']}, K = {train['num_memories']}, {schedule}", points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trends", nargs="+", help="OUT.jsonl files of studies/calibration_trend.py")
    parser.add_argument("--out", required=True, help="the PNG to write")
    args = parser.parse_args()
    for name in args.trends:
        if not Path(name).is_file() or not Path(name).with_suffix("").is_dir():
            sys.exit(f"{name}: not a trend file beside its run folder (give the OUT.jsonl of calibration_trend.py)")

    fig = new_figure((7.5, 5.4), layout="constrained")
    ax = fig.subplots()
    colours = {}
    for name in args.trends:
        model, label, points = read_trend(Path(name))
        if not points:
            sys.exit(f"{name}: no calibrated beta_sm in it")
        epochs, betas = zip(*points, strict=True)
        (line,) = ax.plot(epochs, betas, "o-", ms=3.5, label=label)
        colours.setdefault(model, line.get_color())
    for model, colour in colours.items():
        paper = PAPER_BETA[model]
        # In the legend, not written beside the line: the small-n values (4.7, 4.6, 4) lie too close for labels.
        ax.axhline(paper, color=colour, ls="--", lw=1, label=f"paper, DAM_{model[1:]}: {paper:g} (band: 25%)")
        ax.axhspan(paper * (1 - RULE), paper * (1 + RULE), color=colour, alpha=0.08, lw=0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):  # plain numbers on the log axes, not powers of ten
        axis.set_major_formatter(ScalarFormatter())
        axis.set_minor_formatter(NullFormatter())
    ax.set_yticks([2, 3, 4, 6, 10, 20, 30, 40, 60, 100])
    ax.set_xticks([25, 50, 100, 200, 400, 800, 1500, 3000])
    ax.set_xlabel("epoch")
    ax.set_ylabel("calibrated beta_sm (mean confidence = accuracy, 10,000 test images)")
    ax.grid(True, which="both", alpha=0.3)
    fig.legend(loc="outside lower center", ncol=2, fontsize=8)  # below the axes, clear of the curves
    print(save_figure(fig, args.out))


if __name__ == "__main__":
    main()
