"""Calibrated beta_sm of a DAM over its training, under one schedule (docs/paper-claims.md, statement 10).

    python studies/calibration_trend.py n30 paper --memories 200 --epochs 25,50,100,200,400,800,1600,3000 \
        --out trend/n30-paper-K200

Trains preset NAME under SCHEDULE (seed 0, K = --memories) into OUT, stopping at each of --epochs in turn (a
stopped run resumes bit-exactly, so the checkpoints lie on one run; run again, the same command goes on from where
it stopped and skips the checkpoints already passed, measuring again one it stopped exactly at), and after each
prints one JSON line: test error, the beta_sm at which mean confidence equals accuracy on the 10,000 test images
(null, with the reason, where the accuracy leaves none), and the mean top output. The lines are also appended to
OUT.jsonl.
K is reduced so that the paper's 3000 epochs fit on a CPU (K = 200: about 0.7 s per epoch on one core of a
2-core VM); the question is how the schedule moves beta_sm, at equal K.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from dam import load_dataset, load_model
from dam.errors import InputError
from dam.probes.confidence import calibrate_beta_sm, model_outputs
from dam.runs import finished_epochs, read_run_config
from dam.training import train
from dam.training.presets import preset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="model preset: n2, n3, n20, n30")
    parser.add_argument("schedule", help="training schedule: paper, cpu, quick")
    parser.add_argument("--memories", type=int, default=200)
    parser.add_argument("--epochs", required=True, help="comma-separated epochs to measure at")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    checkpoints = sorted(int(e) for e in args.epochs.split(","))
    config = preset(args.name, args.schedule, seed=args.seed, num_memories=args.memories)
    if checkpoints[-1] > config.epochs:
        parser.error(f"--epochs goes past the schedule's {config.epochs} epochs")
    x, y = load_dataset("mnist", "test", data_dir=args.data_dir)
    out = Path(args.out)
    done = (finished_epochs(out) or (0, 0))[0]
    if done:  # a folder of another run: say so before any line about its checkpoints
        saved = read_run_config(out).get("train", {})
        other = sorted(k for k, v in asdict(config).items() if k != "epochs" and saved.get(k) != v)
        if other:
            parser.error(f"{out} holds a run with other settings ({', '.join(other)}); give another --out")
    passed = [epoch for epoch in checkpoints if epoch < done]
    if passed:  # the model of those epochs is gone: measuring the current one would mislabel it
        print(f"{out}: {done} epochs done; skipping the checkpoints it has passed: {passed}", file=sys.stderr)
    for epoch in checkpoints[len(passed) :]:
        t0 = time.perf_counter()
        train(config, out, data_dir=args.data_dir, resume=True, stop_after=epoch, progress=False)
        status = finished_epochs(out)
        if status is None or status[0] != epoch:  # a run planned shorter, or a bug: never mislabel a row
            raise RuntimeError(f"{out}: expected {epoch} epochs done, found {status}")
        model = load_model(out)
        with torch.no_grad():
            outputs = model_outputs(model, x)  # Y = tanh(scores), what beta_sm multiplies (eq. 1)
        try:
            beta_sm, why = calibrate_beta_sm(None, None, y, outputs=outputs), None
        except InputError as exc:  # accuracy at chance or 100%: no beta_sm exists, as the report says
            beta_sm, why = None, str(exc)
        row = {
            "epoch": epoch,
            "test_error": (outputs.argmax(1) != y).float().mean().item(),
            "beta_sm": beta_sm,
            "mean_top_output": outputs.max(1).values.mean().item(),
            "seconds": time.perf_counter() - t0,
        }
        if why is not None:
            row["not_calibrated"] = why
        print(json.dumps(row), flush=True)
        with out.with_suffix(".jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
