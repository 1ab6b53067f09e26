"""``dam reproduce``: the paper end to end.  Train DAM_2, DAM_3, DAM_20 and DAM_30, run every probe, write
the report.

Layout of the output folder::

    OUT/reproduce.json      preset, seed, data checksums, versions
    OUT/stages.json         wall time of every stage that ran (kept when a later invocation reuses it)
    OUT/runs/n2 ... n30     run folders (``dam train``)
    OUT/probes/             per-model probe outputs, transfer tables, figures (``dam transfer|figures``)
    OUT/beyond/             past the paper: baselines/ (MLP run folders), substitutes/ (the same presets from
                            another seed), attacks/ (``dam attack``), detector/ and detector-agreement/
                            (``dam detect``), adversarial/ (``dam adversarial-train``); see dam.experiments.past_paper
    OUT/report/index.html   the report, self-contained, with its tables and figures beside it

Each stage is skipped when its outputs exist and are valid: training resumes from its last finished epoch,
each model's probes are reused when made with the same settings, so a killed run loses at most the stage
that was running.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dam.errors import InputError, changed
from dam.io import atomic_write_json, read_json_object
from dam.progress import progress_lines
from dam.workers import check_workers

logger = logging.getLogger(__name__)
PROGRESS = progress_lines(logger)  # the default log of this module's jobs

MODELS = ("n2", "n3", "n20", "n30")
CONVERGED_EXAMPLES = 8  # images per model followed until C^second converges, for Fig. 4's third image


@dataclass(frozen=True)
class ReproducePreset:
    """How much of the paper to redo: the training schedule and the probes' sizes."""

    name: str
    schedule: str  # dam.training.presets schedule of every model
    images: int  # test images searched for boundary adversarials, used for calibration and Fig. 5
    per_class: int  # rubbish images per class and model (Fig. 3, 6)
    description: str
    models: tuple[str, ...] = MODELS
    seed: int = 0
    train_overrides: dict[str, Any] = field(default_factory=dict)
    search_options: dict[str, Any] = field(default_factory=dict)  # eps, max_steps, ... of both searches
    # Past the paper.  baselines: name -> MLPConfig and MLPTrainConfig fields; attacks: AttackSuite fields;
    # detector: dam.robustness.detector_sets.run_detection options; adversarial: model names plus AdversarialTrainConfig
    # fields and ``eval_images``.
    # None (the default) leaves that stage out; {} runs it with its defaults.
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Models (of ``models``) trained a second time from seed + 1: each one's most similar substitute, whose
    # adversarials the attack stage transfers to every model (needs ``attacks``).
    substitutes: tuple[str, ...] = ()
    attacks: dict[str, Any] | None = None
    detector: dict[str, Any] | None = None
    adversarial: dict[str, Any] | None = None
    # Models the attack stage attacks at once on a CPU, each in a process of its own (at most the cores).
    attack_workers: int = 1
    # Claim key (dam.experiments.report.claims.claim_keys) -> one measured line on why this preset's models do
    # not show that statement (their size, the seed, or a difference that remains at the paper's own schedule);
    # the report prints it beside the verdict when the verdict is not "agrees".
    limits: dict[str, str] = field(default_factory=dict)


# The fields of ReproducePreset that only the stages past the paper (dam.experiments.past_paper) read.
PAST_PAPER_SETTINGS = ("baselines", "substitutes", "attacks", "detector", "adversarial", "attack_workers")

# K = 2000 hidden units like the DAMs.  Degree 2 is the dual network of DAM_3.  The duals of DAM_20 and
# DAM_30 (degrees 19, 29) are not here: trained the conventional way (cross-entropy, Adam) they diverge at
# lr 1e-3 and stay at 7-15% test error at lr 1e-4 to 3e-5 (measured; see README), no fair comparison.
FULL_BASELINES: dict[str, dict[str, Any]] = {
    "mlp-relu": {"degree": 1, "hidden": 2000, "epochs": 15},
    "mlp-repu2": {"degree": 2, "hidden": 2000, "epochs": 15},
}

# The attack budgets of the full-size presets: the field's usual ones plus larger ones where accuracy must be 0%.
LINF_TO_ZERO = [0.05, 0.1, 0.2, 0.3, 0.4]
L2_TO_ZERO = [0.5, 1.0, 2.0, 3.0, 4.0, 5.0]

PRESETS: dict[str, ReproducePreset] = {
    "quick": ReproducePreset(
        "quick",
        "quick",
        images=1000,
        per_class=10,
        description="K = 400 models trained for 30 epochs (2.4-3.7% test error here); probes on the first 1,000 "
        "test images and 10 rubbish images per class and model. Minutes on a laptop CPU.",
        baselines={
            "mlp-relu": {"degree": 1, "hidden": 400, "epochs": 5},
            "mlp-repu2": {"degree": 2, "hidden": 400, "epochs": 5},
        },
        # AutoAttack reduced to fit about two minutes for all seven models here (20 APGD iterations, no FAB-T,
        # Square with 300 queries on the survivors): a preview; the report names the reduction.
        attacks={
            "images": 100,
            "hsj_steps": 10,
            "hsj_max_evals": 200,
            "aa_steps": 20,
            "aa_fab": False,
            "square_queries": 300,
        },
        # The adaptive attack at two L-inf budgets on 100 images, 20 APGD iterations: a preview like the attacks.
        detector={
            "images": 1000,
            "noise": 500,
            "attack_images": 200,
            "adaptive_eps": [0.1, 0.3],
            "adaptive_images": 100,
            "adaptive_steps": 20,
        },
        adversarial={"models": ["n20"], "epochs": 1, "train_subset": 5000, "eval_images": 200},
        # The seven small models' attacks in up to four processes: on the 2-core machine of the README two
        # workers took 219 s against 257-288 s one model at a time (benchmarks/attack_workers.py)
        attack_workers=4,
        substitutes=("n30",),
        # Why the K = 400 models cannot show these statements, measured on this preset's models (seed 0, the
        # 2-core machine of the README); the verdicts themselves are never changed.
        limits={
            "clean_error": "K = 400 memories trained for 30 epochs (half a minute per model on 2 idle cores) reach "
            "2.4-3.7%; other uses of the same minutes gave DAM_30 3.2-8.3% (dam.training.presets; 3.2% at T = 500, "
            "which then fell for 12.8% of DAM_2's adversarial set instead of 5.4%); the "
            "paper's 1.5% needs K = 2000 and hundreds of epochs (the cpu preset: 1.6-2.0%)",
            "boundary_pictures": "the K = 400 DAM_2 and DAM_3 have few features, so their own boundary "
            "deformations already follow the class-mean difference (correlation 0.56 and 0.50, against 0.39 and "
            "0.40 for the K = 2000 cpu models) about as much as DAM_30's (0.52)",
            "adversarial_small_to_large": "DAM_30's error on these sets includes its own clean error on the same "
            "images, 3.6% here against the paper's 1.5%; what the adversarial sets add, 1.8-2.3 points, is "
            "the paper's 1.5 points (97% correct)",
            "adversarial_large_to_small": "the K = 400 DAM_30's boundary images lie closer to the clean images "
            "(mean L2 1.60, the cpu model's 1.73) and fool DAM_2 and DAM_3 on 21-23% (the cpu models: 32-42%)",
            "rubbish_large": "the K = 400 DAM_20 gives even real test digits only 28% mean confidence at "
            "beta_sm = 3.2 (its outputs stay near 0, see Fig. 7), so it cannot accept DAM_30's digits there",
            "calibrated_beta": "the K = 400 large-n models' outputs on test digits stay near 0 (mean top output "
            "0.16 for DAM_20, 0.14 for DAM_30), so only a beta_sm of 50-110 makes them confident; the cpu "
            "models (K = 2000, 400 epochs) need 10.6 and 35.1, the paper preset's (3000 epochs) 4.2 and 19.1 (the "
            "paper: 4 and 26)",
        },
    ),
    "cpu": ReproducePreset(
        "cpu",
        "cpu",
        images=10000,
        per_class=100,
        description="K = 2000 models, 400 epochs each (the CPU schedule, 1.6-2.0% test "
        "error); the paper's full probes: 10,000 test images and 100 rubbish images per class and model. "
        "Hours on a 2-core CPU.",
        baselines=FULL_BASELINES,
        # The standard AutoAttack protocol on 1,000 seeded test images, with budgets past the usual ones so that
        # every model's curve reaches 0% (Carlini et al.'s check; the quick DAM_30 keeps 1% at L-inf 0.3 and 6%
        # at L2 3).
        attacks={"images": 1000, "linf": LINF_TO_ZERO, "l2": L2_TO_ZERO},
        detector={"adaptive_eps": [0.1, 0.3], "adaptive_l2": [1.0, 2.0], "adaptive_images": 500},
        substitutes=("n30",),  # the headline model's most similar substitute (25 min of training here)
        # Measured on this preset's models (seed 0) with dam 0.3's rubbish search and the preset's 1,000 searches
        # per model; the verdicts themselves are never changed.
        limits={
            "clean_error": "DAM_30 ends at 2.02% with two threads and at 1.89% with one (seed 0), at 1.91% from seed "
            "1: the seed and the thread count (the order of float sums, amplified by 400 epochs) move it across "
            "the 2.0% rule, so this verdict depends on them",
            "rubbish_large": "DAM_30's rubbish gets 97.7% from DAM_30 and 86.6% from DAM_20 at beta_sm = 3.2 (99.2% at "
            "DAM_20's calibrated 10.6); DAM_20 gives real test digits only 80.5% at 3.2, so it loses no confidence on "
            "DAM_30's digits against real ones: the gap is Fig. 7's, DAM_20's outputs stay further inside (-1, 1); "
            "trained on the paper's 3000 epochs, DAM_20 gives them 96.4% and the statement agrees (preset paper)",
            "calibrated_beta": "beta_sm falls as the models train (DAM_30: 94 at epoch 26, 49 at 201, 35 at 400; "
            "DAM_20: 60 at 32, 19 at 202, 10.6 at 400); on the paper's 3000-epoch schedule at the same K, measured "
            "here (studies/calibration_trend.py), DAM_30 ends at 19.1 and DAM_20 at 4.2 (the paper: "
            "26 and 4): this schedule's 400 epochs are what keeps beta_sm high",
        },
        # Measured on n20: lr 0.004 and fraction 0.2 raise the median boundary distance by 13%; the base
        # run's last lr (the default) moves it by 6%.
        adversarial={
            "models": ["n2", "n20"],
            "epochs": 5,
            "fraction": 0.2,
            "lr": 0.004,
            "train_subset": 10000,
            "eval_images": 500,
        },
    ),
    "paper": ReproducePreset(
        "paper",
        "paper",
        images=10000,
        per_class=100,
        description="The paper's 3000-epoch schedules and full probes. Meant for a GPU (--device cuda); on a "
        "2-core CPU, hours of training per model, and days for the attack stage on 10,000 images (--paper-only "
        "leaves it out).",
        baselines=FULL_BASELINES,
        attacks={
            "images": 10000,
            "hsj_steps": 40,
            "hsj_max_evals": 1000,
            "hsj_norms": ["linf", "l2"],
            "linf": LINF_TO_ZERO,
            "l2": L2_TO_ZERO,
        },
        detector={"adaptive_eps": [0.1, 0.3], "adaptive_l2": [1.0, 2.0], "adaptive_images": 1000},
        substitutes=MODELS,
        adversarial={"models": ["n2", "n3", "n20", "n30"], "epochs": 10, "train_subset": None, "eval_images": 1000},
        # Measured on this preset's models (seed 0, trained with studies/calibration_trend.py on the 2-core machine
        # of the README, one thread each, DAM_3's last 817 epochs with two); the verdicts themselves never change.
        limits={
            "calibrated_beta": "DAM_30's calibrated beta_sm falls all through this schedule (29.5 at epoch 800, "
            "24.9 at 1000, 20.2 at 2000, 19.1 at 3000): it passes the paper's 26 before epoch 1000 and ends 26% "
            "below it, just outside the rule's 25%; DAM_2, DAM_3 and DAM_20 end within it (4.5, 4.1, 4.2)",
        },
    ),
}


class Stages:
    """Runs named stages once, records their wall times in ``stages.json``, and reports reuse."""

    def __init__(self, folder: Path, log: Callable[[str], None], device: str | None = None) -> None:
        self.path = folder / "stages.json"
        self.log = log
        self.device = device  # recorded per stage: one folder may be continued on another device
        self.records: dict[str, Any] = read_json_object(self.path, "") if self.path.exists() else {}

    def run(self, name: str, fn: Callable[[], Any], done: Callable[[], bool] = lambda: False) -> Any:
        if done() and name in self.records:
            self.records[name]["reused"] = True
            self.log(f"[{name}] done before ({self.records[name]['seconds']:.0f} s then); reused")
            self._write()
            return None
        self.log(f"[{name}] ...")
        t0 = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t0
        self.records[name] = {
            "seconds": seconds,
            "reused": False,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **({"device": self.device} if self.device is not None else {}),
        }
        self._write()
        self.log(f"[{name}] {seconds:.1f} s")
        return result

    def _write(self) -> None:
        atomic_write_json(self.path, self.records)


def data_checksums(data_dir: str | os.PathLike[str] | None) -> dict[str, Any]:
    """Where MNIST was read from and the MD5 of each file, so a report names the exact data it used.  The files
    are read (and their format checked) first: a folder of other files is refused before its MD5s are recorded,
    which would tie the output folder to them."""
    from dam.data import load_dataset
    from dam.data.datasets import locate_dataset
    from dam.data.sources import SPLIT_FILES, find_file, md5sum

    for split in ("train", "test"):
        load_dataset("mnist", split, data_dir=data_dir)
    folder = locate_dataset("mnist", data_dir)
    files = {}
    for stems in SPLIT_FILES.values():
        for stem in stems:
            path = find_file(folder, stem)
            files[path.name] = md5sum(path)
    return {"folder": str(Path(folder).resolve()), "md5": files}


def _training_complete(run: Path, config: Any) -> bool:
    """Finished, evaluated, and trained with ``config`` (else the train stage runs: it resumes or refuses)."""
    from dam.runs import finished_with

    return finished_with(run, train=asdict(config)) and (run / "evaluation.json").exists()


def reproduce(
    preset: str | ReproducePreset = "quick",
    out: str | os.PathLike[str] = "runs/reproduce",
    *,
    data_dir: str | os.PathLike[str] | None = None,
    device: str = "auto",
    progress: bool | None = None,
    check: bool | None = None,
    log: Callable[[str], None] = PROGRESS,
    workers: int | None = None,
    paper_only: bool = False,
) -> Path:
    """Run (or resume) the whole reproduction into ``out``; return the path of the report.

    ``device="auto"`` uses a GPU when one is there, else the CPU.  ``check``: render the report in headless
    Chromium and fail if a figure or table is missing (None: when Chromium is installed).  The folder is
    locked for the run: a second ``reproduce`` into it is refused while this one works.  ``workers``: models
    the attack stage attacks at once (:func:`dam.robustness.attacks.runner.run_attacks`); None takes the
    preset's ``attack_workers`` on a CPU, at most its cores, and 1 on a GPU.  ``paper_only``: stop after the
    paper's stages (training, probes, tables, figures) and write the report of the eleven statements; the stages
    past the paper (baselines, substitutes, attacks, detector, adversarial fine-tuning) are left for a later run
    into the same folder without it, which reuses everything done.  The report then says nothing about
    robustness beyond the paper's probes, and says so.
    """
    from dam.environment import resolve_device
    from dam.runs import OutputFolder

    if isinstance(preset, str) and preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    seed = (PRESETS[preset] if isinstance(preset, str) else preset).seed
    if not 0 <= seed < 2**63 - 1:  # the substitutes train from seed + 1, a seed too
        raise InputError(f"a reproduction's seed must be between 0 and 2**63 - 2, got {seed}")
    device = str(resolve_device(device))
    if workers is not None:
        check_workers(workers)
        if paper_only:
            raise InputError("--workers sets the attack stage, which --paper-only leaves out: give one or the other")
    if check:  # asked for: a missing browser is said now, not after hours of training and attacks
        from dam.experiments.report.browser import require_chromium

        require_chromium()
    folder = OutputFolder(out, "reproduction folder")
    folder.check_kind(("reproduce.json", "stages.json"), "reproduction")  # a run's folder or another command's: refused
    with folder.lock():
        return _reproduce(preset, Path(out), data_dir, device, progress, check, log, workers, paper_only)


def _reproduce(
    preset: str | ReproducePreset,
    out: Path,
    data_dir: str | os.PathLike[str] | None,
    device: str,
    progress: bool | None,
    check: bool | None,
    log: Callable[[str], None],
    workers: int | None = None,
    paper_only: bool = False,
) -> Path:
    from dam.environment import environment_info
    from dam.experiments.report.browser import ReportCheckError, check_report, find_chromium
    from dam.experiments.report.build import build_report
    from dam.probes.figures import figures_for
    from dam.probes.runner import model_probes_done, run_model_probes, test_images, transfer_tables
    from dam.training import train
    from dam.training.evaluate import evaluate_run
    from dam.training.presets import preset as train_preset

    if isinstance(preset, str) and preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    plan = PRESETS[preset] if isinstance(preset, str) else preset
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "reproduce.json"
    earlier = read_json_object(meta_path, "") if meta_path.exists() else {}
    if earlier:
        saved = earlier.get("preset", {})
        if saved.get("name") != plan.name:
            raise InputError(f"{out} holds a reproduction with preset {saved.get('name')!r}; use another --out")
        now = {k: v for k, v in json.loads(json.dumps(asdict(plan))).items() if k not in ("description", "limits")}
        # Settings an older dam did not record belong to stages it never ran: nothing to compare.  Nor do the
        # stages past the paper where none has begun (a --paper-only folder).
        unused = PAST_PAPER_SETTINGS if not (out / "beyond").exists() else ()
        diff = sorted(k for k in now if k in saved and k not in unused and saved[k] != now[k])
        if diff:
            raise InputError(
                f"{out} was made with other settings of preset {plan.name!r} ({changed(diff)}); use another --out"
            )
        started_with = (earlier.get("data") or {}).get("folder")
        if data_dir is None and started_with and Path(started_with).is_dir():
            data_dir = started_with  # run again, it reads the data it started with
    stages = Stages(out, log, device)
    data = stages.run("data", lambda: data_checksums(data_dir))
    if earlier:
        before = (earlier.get("data") or {}).get("md5")
        if before and before != data["md5"]:
            raise InputError(f"the MNIST files in {data['folder']} differ (MD5) from those {out} was started with")
    data_dir = data["folder"]
    # paper_only is what this run does, not a setting of the preset: a later run without it goes on in this folder.
    atomic_write_json(
        meta_path,
        {"preset": asdict(plan), "paper_only": paper_only, "data": data, "device": device,
         "environment": environment_info()},
    )  # fmt: skip

    runs = [out / "runs" / name for name in plan.models]
    for name, run in zip(plan.models, runs, strict=True):
        config = train_preset(name, plan.schedule, seed=plan.seed, **plan.train_overrides)

        def train_and_evaluate(config: Any = config, run: Path = run) -> None:
            train(config, run, data_dir=data_dir, device=device, resume=True, progress=progress)
            atomic_write_json(run / "evaluation.json", evaluate_run(run, data_dir=data_dir, device=device))

        stages.run(f"train {name}", train_and_evaluate, lambda run=run, c=config: _training_complete(run, c))

    probes = out / "probes"
    x, y = test_images(plan.images, data_dir)
    options = {**plan.search_options, **({"progress": progress} if progress is not None else {})}
    for name, run in zip(plan.models, runs, strict=True):
        done = lambda run=run: model_probes_done(  # noqa: E731
            run, probes, x, per_class=plan.per_class, seed=plan.seed, search_options=options,
            converged_examples=CONVERGED_EXAMPLES,
        )  # fmt: skip
        stages.run(
            f"probes {name}",
            lambda run=run: run_model_probes(
                run,
                probes,
                x,
                y,
                per_class=plan.per_class,
                seed=plan.seed,
                search_options=options,
                device=device,
                converged_examples=CONVERGED_EXAMPLES,
                replace=True,  # the reproduction's own folder: results made otherwise are redone
            ),
            done,
        )
    stages.run("transfer tables", lambda: transfer_tables([str(r) for r in runs], probes, x, y, device=device))
    stages.run("figures", lambda: figures_for(probes, [str(r) for r in runs]))
    from dam.experiments.past_paper import run_beyond

    if workers is None:
        workers = 1 if device != "cpu" else min(plan.attack_workers, os.cpu_count() or 1)
    if paper_only:
        log("[past the paper] not run (--paper-only): run again without it to add the attacks, the detector, ...")
    else:
        run_beyond(plan, out, runs, stages, data_dir=data_dir, device=device, progress=progress, log=log,
                   workers=workers)  # fmt: skip
    stages.run("report", lambda: build_report(out))
    report = out / "report" / "index.html"

    if check is None and find_chromium() is None:
        log("[browser check] skipped: no Chromium found (--check requires it)")
    elif check is not False:  # asked for, or Chromium found
        try:
            result = stages.run("browser check", lambda: check_report(report, out / "report" / "screenshot.png"))
        except ReportCheckError as exc:  # Chromium itself failed: fatal only when the check was asked for
            if check:
                raise
            log(f"[browser check] skipped: {exc}")
            return report
        if not result.ok:
            raise ReportCheckError(f"{report}: the rendered report is incomplete: {'; '.join(result.problems)}")
    return report
