"""Robustness against n, with seeds: one DAM_n per point (n, seed), trained, attacked and probed.

Layout of the output folder::

    OUT/plan.json                 the plan the folder was started with (a different plan is refused)
    OUT/points/n{n}-s{seed}/      one run folder per point (``dam train``), resumable, and beside the
                                  run's files: attacks/ (``run_attacks`` on that one run), probes/
                                  (boundary, rubbish, calibration) and point.json
    OUT/points/n{n}-s{seed}.log   the point's events, one JSON line each (trained epochs, stages, reuse)
    OUT/sweep.json, sweep.csv     every point, the per-n mean and std over seeds, the failed points
    OUT/sweep_robustness.png      worst-case robust accuracy against n, one line per budget, seed error bars
    OUT/sweep_probes.png          clean error, boundary distance, rubbish confidence, calibrated beta_sm

A point's measurements go to ``point.json`` with a reuse key (:func:`dam.results.result_key` of its
training settings, its weights' MD5, the attack suite and the probe settings): a point whose key matches
is never recomputed.  Inside a point every stage is reused on its own: training resumes from its last
finished epoch, attacks and probes reuse their results by their own keys; so a killed worker's retry
loses at most the epoch or stage it was in.

Points run as Ray tasks (``backend="ray"``, the optional extra ``dam[sweep]``), one CPU and a fraction of
a GPU each, on this machine or on a cluster; or one after another in this process (``backend="local"``),
through the same :func:`run_point`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import socket
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

from dam.errors import ConfigError, DamError, InputError, MissingExtraError, changed
from dam.io import append_jsonl, atomic_write_bytes, atomic_write_json
from dam.progress import progress_lines
from dam.results import key_matches, read_json, result_key

logger = logging.getLogger(__name__)
PROGRESS = progress_lines(logger)  # the default log of this module's jobs

RAY_MISSING = 'the sweep needs Ray: pip install "dam[sweep]"'
POINT_FILE = "point.json"
NORMS = ("linf", "l2")
RUBBISH_BETA_SM = 3.2  # the paper's single beta_sm of the rubbish table (dam.probes.PAPER_BETA_SM)
FLOAT32_MAX = 3.4028234663852886e38


# -- settings for any n ------------------------------------------------------------------------------

_MODEL_FIELDS = ("m", "temperature_start", "temperature_end", "lr", "momentum")


def model_settings(n: int, schedule: str = "cpu") -> dict[str, Any]:
    """The per-model training settings (n, m, T_i, T_f, ramp, eps0, p) of DAM_n under ``schedule``.

    n = 2, 3, 20, 30 take their named presets (:mod:`dam.training.presets`).  Any other n takes the rule:

    * between two named presets, every setting (m, T_i, T_f, eps0, p) is interpolated linearly in n
      between the two neighbours, m rounded to an integer; T ramps over the schedule's ramp when the
      interpolated T_i and T_f differ, else it is constant.
    * above n = 30 the settings of n30 are held (m = 30, constant T = 650).

    Why: the paper tuned two regimes, small n (features; m = 2..4, T cooling to T_f ~ 70) and large n
    (prototypes; m ~ 30, constant T in [500, 700]), and says nothing in between.  The larger n, the more
    F_n(h / T) is dominated by the memories whose overlap h exceeds T, so T has to grow with n towards the
    overlap a prototype reaches (~500-700 of at most 794), and m with it (a larger m for larger n reduced
    overfitting, docs/training.md).  A linear path keeps every setting inside the hull of the tuned values
    (n = 6: m = 8, T 425 -> 153, p = 0.85; n = 10: m = 14, T 458 -> 264; n = 15: m = 22, T 499 -> 402).
    Extrapolating past n = 30 would leave the paper's windows (T > 700), so n30's values are held, which
    float32 still represents: the largest scaled argument of F_n is (784 + 10) / T, and
    K * ((784 + 10) / T)^n must stay below float32's maximum (n = 40, T = 650, K = 2000: ~1e7).  A rule
    that broke this bound raises ConfigError (the model would silently compute in float64 instead).
    """
    from dam.training.presets import preset, preset_names

    if n < 2:
        raise InputError(f"n must be at least 2, got {n}")
    anchors = {c.n: c for c in (preset(name, schedule) for name in preset_names())}
    if n in anchors:
        c = anchors[n]
        return {"n": n, **{k: getattr(c, k) for k in _MODEL_FIELDS}, "ramp_epochs": c.ramp_epochs}
    below = max(k for k in anchors if k < n)
    above = [k for k in anchors if k > n]
    if not above:  # past the largest tuned n: hold its settings
        c = anchors[below]
        return {"n": n, **{k: getattr(c, k) for k in _MODEL_FIELDS}, "ramp_epochs": c.ramp_epochs}
    lo, hi = anchors[below], anchors[min(above)]
    frac = (n - lo.n) / (hi.n - lo.n)
    values = {k: getattr(lo, k) + frac * (getattr(hi, k) - getattr(lo, k)) for k in _MODEL_FIELDS}
    values["m"] = round(values["m"])
    values["lr"] = round(values["lr"], 6)
    values["momentum"] = round(values["momentum"], 4)
    values["temperature_start"] = round(values["temperature_start"], 1)
    values["temperature_end"] = round(values["temperature_end"], 1)
    ramps = values["temperature_start"] != values["temperature_end"]
    ramp = max(lo.ramp_epochs, hi.ramp_epochs) if ramps else 0
    return {"n": n, **values, "ramp_epochs": ramp}


def check_float32_range(config: Any) -> None:
    """Refuse settings whose largest score K * ((784 + 10) / T)^n would overflow float32."""
    t_min = min(config.temperature_start, config.temperature_end)
    log_max = math.log(config.num_memories) + config.n * math.log(794.0 / t_min)
    if log_max >= math.log(FLOAT32_MAX):
        raise ConfigError(
            f"n = {config.n} at T = {t_min:g} with K = {config.num_memories}: scores up to e^{log_max:.0f} "
            "overflow float32; raise T"
        )


# -- the plan --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep measures: which n and seeds, how each model trains, and how it is probed and attacked.

    ``train_overrides`` are TrainConfig fields laid over every point's settings (the schedule's and the
    n's, :func:`model_settings`), e.g. ``num_memories``, ``epochs``, ``train_subset``.  ``attacks`` are
    :class:`~dam.robustness.attacks.runner.AttackSuite` fields (a stronger suite can be given to
    :func:`run_sweep` instead).  ``images`` test images are searched for boundary images and calibrate
    beta_sm; ``per_class`` rubbish images per class are searched from seeded noise.
    """

    name: str
    ns: tuple[int, ...]
    seeds: tuple[int, ...]
    schedule: str = "quick"
    train_overrides: dict[str, Any] = field(default_factory=dict)
    images: int = 1000
    per_class: int = 10
    probe_seed: int = 0
    search_options: dict[str, Any] = field(default_factory=dict)
    attacks: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        if not self.ns or not self.seeds:
            raise InputError(f"sweep {self.name!r}: give at least one n and one seed")
        if len(set(self.ns)) != len(self.ns) or len(set(self.seeds)) != len(self.seeds):
            raise InputError(f"sweep {self.name!r}: repeated n or seed ({self.ns}, {self.seeds})")
        if any(n < 2 for n in self.ns):
            raise InputError(f"sweep {self.name!r}: every n must be at least 2, got {self.ns}")
        if self.images < 1 or self.per_class < 1:
            raise InputError(f"sweep {self.name!r}: images and per_class must be at least 1")
        if "seed" in self.train_overrides or "n" in self.train_overrides:
            raise InputError(f"sweep {self.name!r}: n and seed come from ns and seeds, not train_overrides")

    def check(self) -> None:
        """Every setting a point reads, checked before any point starts (one InputError naming the problem): the
        names in train_overrides, attacks and search_options, and images against the test set."""
        import inspect
        from dataclasses import fields

        from dam.data.sources import DATASETS
        from dam.probes.boundary import BoundarySearch
        from dam.probes.rubbish import RubbishSearch
        from dam.robustness.attacks.runner import AttackSuite
        from dam.training import TrainConfig

        searches = [set(inspect.signature(c.__init__).parameters) - {"self", "model"}
                    for c in (BoundarySearch, RubbishSearch)]  # fmt: skip
        known = {"train_overrides": {f.name for f in fields(TrainConfig)},
                 "attacks": {f.name for f in fields(AttackSuite)} | set(SWITCHED_OFF),
                 "search_options": set.intersection(*searches)}  # fmt: skip
        for name, names in known.items():
            unknown = sorted(set(getattr(self, name)) - names)
            if unknown:
                raise InputError(f"sweep {self.name!r}: {name} has no setting {', '.join(unknown)}; "
                                 f"choose from {', '.join(sorted(names))}")  # fmt: skip
        test = DATASETS["mnist"].sizes["test"]
        if self.images > test:
            raise InputError(f"sweep {self.name!r}: images must be between 1 and {test} (the MNIST test set)")

    def points(self) -> list[tuple[int, int]]:
        """(n, seed) of every point, n major."""
        return [(n, seed) for n in self.ns for seed in self.seeds]

    def config(self, n: int, seed: int) -> Any:
        """The TrainConfig of point (n, seed)."""
        from dam.training import TrainConfig
        from dam.training.loop import check_temperatures
        from dam.training.presets import preset, schedule_names

        if self.schedule not in schedule_names():
            raise InputError(f"unknown schedule {self.schedule!r}; choose from {', '.join(schedule_names())}")
        base = preset("n2", self.schedule)  # the schedule's fields (epochs, decay, batch, K)
        values = {**asdict(base), **model_settings(n, self.schedule), **self.train_overrides, "seed": seed}
        if values["temperature_start"] == values["temperature_end"]:
            values["ramp_epochs"] = 0
        config = TrainConfig(**values)
        check_float32_range(config)
        check_temperatures(config)  # (train() checks it too, but only when the point starts: hours later)
        return config

    def suite(self) -> Any:
        """The plan's AttackSuite.  A setting that switches off an attack the suite does not have (see
        ``SWITCHED_OFF``) is dropped: turning off what is not there changes nothing."""
        from dataclasses import fields

        from dam.robustness.attacks.runner import AttackSuite

        known = {f.name for f in fields(AttackSuite)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in self.attacks.items()
                  if k in known or SWITCHED_OFF.get(k, object()) != v}  # fmt: skip
        return AttackSuite(**values)

    def comparable(self) -> dict[str, Any]:
        """What must not change within one output folder (points may be added: ns and seeds may differ)."""
        data = json.loads(json.dumps(asdict(self)))
        for k in ("ns", "seeds", "description"):
            data.pop(k)
        return data


# AttackSuite settings that switch an attack off, and the value that does so.
SWITCHED_OFF: dict[str, Any] = {"autoattack": "none"}

QUICK_ATTACKS: dict[str, Any] = {
    "images": 200,
    "linf": [0.05, 0.1, 0.2, 0.3],
    "l2": [0.5, 1.0, 2.0, 3.0],
    "pgd_steps": 40,
    "hsj_steps": 0,  # HopSkipJump's queries would cost more than the rest of a quick point together
    # No robustness number may rest on attacks weaker than AutoAttack: cross-entropy attacks overstate
    # large-n robustness by tens of points.  Reduced to fit a quick point (20 APGD iterations, no FAB-T,
    # Square with 300 queries on the survivors), named as such in the results; the full sweep runs it whole.
    "autoattack": "standard",
    "aa_steps": 20,
    "aa_fab": False,
    "square_queries": 300,
    "effort_check": False,  # the convergence check doubles the attack cost of a point; the full sweep runs it
}

PRESETS: dict[str, SweepPlan] = {
    # The `quick` training schedule as it is (K = 400, 30 epochs of minibatches of 100, T ramped over 15):
    # a compressed one (K = 300, 15 epochs, T ramped over 8, eps decaying 15% per epoch) was tried first
    # and left n = 2 at 7% and n = 3 at 10% and 39% test error (n = 3 jumped when T reached T_f, as the
    # presets' notes describe); n >= 6 trained to 3-6% either way.
    "quick": SweepPlan(
        "quick",
        ns=(2, 3, 6, 10, 20, 30),
        seeds=(0, 1),
        schedule="quick",
        images=500,
        per_class=10,
        search_options={"max_steps": 400},
        attacks=QUICK_ATTACKS,
        description="n in {2, 3, 6, 10, 20, 30}, two seeds; K = 400, the quick schedule (30 epochs of "
        "minibatches of 100); attacks (FGSM, PGD and a reduced AutoAttack; no HopSkipJump) on 200 test images, "
        "boundary search and calibration on 500, "
        "10 rubbish images per class. 7-15 minutes on a 2-core CPU (Ray, two points at a time; locally, one).",
    ),
    "full": SweepPlan(
        "full",
        ns=(2, 3, 4, 6, 8, 10, 15, 20, 25, 30, 40),
        seeds=(0, 1, 2),
        schedule="cpu",
        images=10000,
        per_class=100,
        attacks={},  # the package's default suite: 500 images, FGSM, PGD, HopSkipJump (L-inf), AutoAttack
        description="n in {2, 3, 4, 6, 8, 10, 15, 20, 25, 30, 40}, three seeds; K = 2000, the cpu schedule "
        "(400 epochs); the package's default attack suite on 500 test images (FGSM, PGD, HopSkipJump and "
        "AutoAttack, worst case per image); the paper's probes (10,000 test images, "
        "100 rubbish images per class). Meant for GPUs or a cluster.",
    ),
}


def sweep_plan(preset: str | SweepPlan) -> SweepPlan:
    if isinstance(preset, SweepPlan):
        return preset
    if preset not in PRESETS:
        raise InputError(f"unknown sweep preset {preset!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[preset]


def point_name(n: int, seed: int) -> str:
    return f"n{n}-s{seed}"


def suite_record(suite: Any) -> dict[str, Any]:
    """An attack suite as its key records it: its type and its settings."""
    settings = asdict(suite) if is_dataclass(suite) and not isinstance(suite, type) else {"repr": repr(suite)}
    return json.loads(json.dumps({"type": f"{type(suite).__module__}.{type(suite).__qualname__}", **settings}))


# -- one point -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PointTask:
    """Everything one point needs, picklable for a Ray task."""

    plan: SweepPlan
    n: int
    seed: int
    folder: str  # the point's run folder, OUT/points/n{n}-s{seed}
    suite: Any  # an AttackSuite, or any suite run_attacks accepts
    data_dir: str | None = None
    device: str = "auto"

    @property
    def name(self) -> str:
        return point_name(self.n, self.seed)


def point_key(task: PointTask, config: Any, weights: str) -> dict[str, Any]:
    plan = task.plan
    probes = {"images": plan.images, "per_class": plan.per_class, "seed": plan.probe_seed,
              "search_options": plan.search_options, "rubbish_beta_sm": RUBBISH_BETA_SM}  # fmt: skip
    return result_key(config=asdict(config), weights=weights, suite=suite_record(task.suite), probes=probes)


def _training_complete(folder: Path, config: Any) -> bool:
    from dam.runs import finished_with

    return finished_with(folder, train=asdict(config))


def reused_point(task: PointTask) -> dict[str, Any] | None:
    """The saved record of a finished point whose key matches (same settings, weights, suite, probes)."""
    from dam.runs import model_md5

    folder = Path(task.folder)
    saved = read_json(folder / POINT_FILE)
    if not isinstance(saved, dict):
        return None
    config = task.plan.config(task.n, task.seed)
    if not _training_complete(folder, config):
        return None
    if not key_matches(saved, point_key(task, config, model_md5(folder)), "key"):
        return None
    return saved


def run_point(task: PointTask, *, on_epoch: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train (or resume) one point's model, then measure it; returns and writes its ``point.json``.

    A finished point whose key matches is returned as saved, nothing recomputed.  ``on_epoch`` is called
    with each epoch's metrics record once it is written (a hook for progress and for tests).
    """
    import torch

    from dam.environment import environment_info, resolve_device
    from dam.io import read_jsonl
    from dam.runs import METRICS_FILE, OutputFolder, finished_epochs, model_md5
    from dam.training import train

    t_start = time.perf_counter()
    folder = Path(task.folder)
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder.parent / f"{folder.name}.log"  # beside the run folder: train() wants it empty or a run

    def note(event: str, **fields: Any) -> None:
        append_jsonl(log_path, {"event": event, "pid": os.getpid(), "time": time.time(), **fields})

    saved = reused_point(task)
    if saved is not None:
        note("reused")
        return {**saved, "reused": True}

    device = str(resolve_device(task.device))
    config = task.plan.config(task.n, task.seed)
    trained_now = 0
    if not _training_complete(folder, config):
        status = finished_epochs(folder)
        # A kill before the first epoch was saved leaves the run's record without a training state: train() starts
        # it again.  Anything else there without a state (not a run's record) is moved aside, never deleted.
        fresh = (status is None and not OutputFolder(folder).unstarted_run()
                 and any(p.name not in (".dam.lock", ".dam.lock.json") for p in folder.iterdir()))  # fmt: skip
        note("train", from_epoch=status[0] if status else 0, epochs=config.epochs, fresh_start=fresh)

        def epoch_done(line: str) -> None:
            nonlocal trained_now
            record = json.loads(line)
            trained_now += 1
            note("epoch", epoch=record["epoch"], seconds=record["seconds"], test_error=record.get("test_error"))
            if on_epoch is not None:
                on_epoch(record)

        train(config, folder, data_dir=task.data_dir, device=device, resume=not fresh, force=fresh,
              progress=False, log=epoch_done)  # fmt: skip
    metrics = read_jsonl(folder / METRICS_FILE)
    weights = model_md5(folder)
    key = point_key(task, config, weights)
    t_eval = time.perf_counter()
    with OutputFolder(folder, "point folder").lock():
        measured = measure_point(task, folder, device, note)
        record = {
            "point": task.name,
            "n": task.n,
            "seed": task.seed,
            "key": key,
            "config": asdict(config),
            **measured,
            "epochs": len(metrics),
            "timings": {
                "train_seconds": sum(float(r.get("seconds", 0.0)) for r in metrics),
                "epochs_trained_now": trained_now,
                "eval_seconds": time.perf_counter() - t_eval,
                "wall_seconds": time.perf_counter() - t_start,
            },
            "device": device,
            "threads": torch.get_num_threads(),
            "environment": environment_info(),
        }
        atomic_write_json(folder / POINT_FILE, record)
    note("done", seconds=record["timings"]["wall_seconds"])
    return record


def _finite(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def measure_point(task: PointTask, run: Path, device: str, note: Callable[..., None]) -> dict[str, Any]:
    """Clean test error, worst-case robust accuracy, boundary distance, rubbish confidence, beta_sm."""
    from dam.model import DenseAssociativeMemory
    from dam.probes.confidence import confidence, model_outputs
    from dam.probes.runner import run_model_probes, test_images
    from dam.robustness.attacks.runner import run_attacks
    from dam.runs import model_name
    from dam.training.evaluate import evaluate_run

    plan = task.plan
    t0 = time.perf_counter()
    clean = evaluate_run(run, data_dir=task.data_dir, device=device)
    lines: list[str] = []
    # The sweep's own folder (its plan checked): results made otherwise (an older dam's suite) are redone.
    summary = run_attacks([str(run)], run / "attacks", task.suite, data_dir=task.data_dir, device=device,
                          log=lines.append, replace=True)  # fmt: skip
    attack_seconds = time.perf_counter() - t0
    note("attacks", seconds=attack_seconds, log=lines)
    model = summary["models"][model_name(run)]
    robust = {}
    for norm in NORMS:
        table = model["tables"].get(norm)
        if table is None:
            continue
        robust[norm] = {
            "budgets": list(table.get("epsilons") or summary["suite"].get(norm, [])),
            "clean_accuracy": table["clean_accuracy"],
            "worst_case": list(table["worst_case"]),
            "images": table.get("images"),
        }

    t1 = time.perf_counter()
    x, y = test_images(plan.images, task.data_dir)
    boundary, rubbish, calibration = run_model_probes(
        run, run / "probes", x, y, per_class=plan.per_class, seed=plan.probe_seed,
        search_options={**plan.search_options, "progress": False}, device=device, replace=True,
    )  # fmt: skip
    d = boundary.distances("boundary")
    l2, linf = _finite(d["l2"].tolist()), _finite(d["linf"].tolist())
    dam = DenseAssociativeMemory.load(run, device=device)
    outputs = model_outputs(dam, rubbish.images)
    z = confidence(outputs, RUBBISH_BETA_SM)
    probe_seconds = time.perf_counter() - t1
    note("probes", seconds=probe_seconds)
    return {
        "clean_error": clean["error"],
        "robust": robust,
        "masking": (model.get("verdict") or {}).get("verdict"),
        "boundary": {
            "images": len(x),
            "crossed_rate": len(l2) / max(len(x), 1),
            "success_rate": float(boundary.success.float().mean()),
            "l2_mean": statistics.fmean(l2) if l2 else None,
            "l2_median": statistics.median(l2) if l2 else None,
            "linf_mean": statistics.fmean(linf) if linf else None,
            "linf_median": statistics.median(linf) if linf else None,
        },
        "rubbish": {
            "images": len(rubbish.images),
            "beta_sm": RUBBISH_BETA_SM,
            "confidence_mean": float(z.mean()),
            "target_rate": float((outputs.argmax(dim=1) == rubbish.targets.cpu()).float().mean()),
            "converged_rate": float(rubbish.converged.float().mean()),
        },
        "beta_sm": calibration.get("beta_sm"),
        "eval_timings": {"attack_seconds": attack_seconds, "probe_seconds": probe_seconds},
    }


# -- the sweep -------------------------------------------------------------------------------------


def _ray_point(point_fn: Callable[[PointTask], dict[str, Any]], task: PointTask, threads: int) -> dict[str, Any]:
    """What a Ray task runs: the point, with as many torch threads as the CPUs it was given."""
    import torch

    torch.set_num_threads(max(1, threads))
    return point_fn(task)


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def _failed(task: PointTask, exc: BaseException, text: str, log: Callable[[str], None]) -> None:
    """A point's failure, kept: its traceback in the point's log (OUT/points/NAME.log), and shown where it is a
    bug rather than a refusal (a DamError), since a bug keeps its traceback."""
    folder = Path(task.folder)
    # (the point may have failed before it made anything: its folder's parent is made here; a log that still cannot
    # be written must not hide the failure, which sweep.json, the log line and the exit status report)
    with contextlib.suppress(OSError, DamError):
        folder.parent.mkdir(parents=True, exist_ok=True)
        append_jsonl(folder.parent / f"{folder.name}.log", {"event": "failed", "pid": os.getpid(), "time": time.time(),
                                                            "error": _first_line(exc), "traceback": text})  # fmt: skip
    if not isinstance(getattr(exc, "cause", None) or exc, DamError):
        log(f"{task.name}: {text.rstrip()}")


def _run_local(tasks, point_fn, log) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:  # type: ignore[no-untyped-def]
    done, failed = {}, {}
    for i, task in enumerate(tasks, 1):
        t0 = time.perf_counter()
        try:
            record = point_fn(task)
        except Exception as exc:  # one point's failure is recorded; the others go on
            failed[task.name] = _first_line(exc)
            _failed(task, exc, traceback.format_exc(), log)
            log(f"[{i}/{len(tasks)}] {task.name} FAILED: {failed[task.name]}")
            continue
        done[task.name] = record
        log(f"[{i}/{len(tasks)}] {task.name} {_describe(record, time.perf_counter() - t0)}")
    return done, failed


def _describe(record: dict[str, Any], seconds: float) -> str:
    if record.get("reused"):
        return "reused (finished before)"
    return f"done in {seconds:.0f} s: clean error {record['clean_error']:.2%}"


def ray_address(address: str | None, *, temp_dir: str | None = None, timeout: float = 10.0) -> str | None:
    """The address ``ray.init`` gets for a sweep's ``address`` (the ``--address`` flag), checked first.

    None: ``RAY_ADDRESS`` when it is set (Ray reads it itself, as it does for "auto"), else "local", a new Ray on
    this machine.  Ray's own None would join the cluster that ``ray start`` last recorded on this machine, even
    one that has since died (the record outlives a cluster killed without ``ray stop``), and then wait for it
    without end; a sweep that was not told to join a cluster starts its own.  The cluster to join, a host:port
    or ray://host:port given or in ``RAY_ADDRESS``, or for "auto" the one ``ray start`` recorded
    (:func:`ray_record`; ``temp_dir``: Ray's ``_temp_dir``), must accept a connection and answer HTTP/2's
    preface as gRPC servers do (:func:`speaks_http2`; not checked under ``RAY_USE_TLS``) within ``timeout`` seconds
    each, else one line says so before any folder is made: Ray would retry it for ever.  "auto" with no
    record goes to Ray, which looks for a Ray running here and says when there is none; other client
    protocols (name://...) go to Ray unchecked."""
    given = address
    env = os.environ.get("RAY_ADDRESS") or None
    where, hint = "the Ray cluster", ""
    if address in (None, "auto") and env is not None:  # (Ray's own order: the variable before None or "auto")
        address, where = env, "RAY_ADDRESS"
    if address is None:
        return "local"
    if address == "auto":
        record = ray_record(temp_dir)
        recorded = record.read_text().strip() if record.is_file() else ""
        if not recorded:
            return given
        address, where = recorded, f"the cluster `ray start` recorded in {record}"
        hint = ("; `ray stop` removes the record of a cluster that is gone (and stops every Ray process of yours on "
                "this machine), or give --address host:port")  # fmt: skip
    if address == "local" or ("://" in address and not address.startswith("ray://")):
        return given
    target = address.removeprefix("ray://").rstrip("/")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"{where} {address!r} is not an address: use host:port, ray://host:port or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as connection:
            # Ray's GCS and its client server speak gRPC, which Ray would wait for without end on a port that
            # answers something else (a dashboard, sshd, any web server); over TLS the handshake cannot be seen
            tls = os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true")
            grpc = tls or speaks_http2(connection, timeout)
    except OSError as exc:
        why = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise InputError(f"cannot join {where} at {address!r}: {why} at {host}:{port}{hint}") from None
    if not grpc:
        raise InputError(f"cannot join {where} at {address!r}: {host}:{port} answers, but not as Ray does (gRPC): "
                         "give the head's GCS port (`ray start --head --port`, 6379 by default) or ray://host:port "
                         "of its client server (10001 by default)")  # fmt: skip
    return given


# The client's connection preface of HTTP/2 (RFC 9113, section 3.4) and an empty SETTINGS frame after it.
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def speaks_http2(connection: socket.socket, timeout: float) -> bool:
    """Whether the server at the other end of ``connection`` answers HTTP/2's preface as HTTP/2 (and so gRPC)
    servers must: with a SETTINGS frame (type 4) as their first frame.  An HTTP/1 server answers with text or
    closes; a server that says nothing within ``timeout`` seconds is not one."""
    connection.settimeout(timeout)
    try:
        connection.sendall(HTTP2_PREFACE)
        head = b""
        while len(head) < 9:  # a frame header: length (3 bytes), type, flags, stream (4)
            chunk = connection.recv(9 - len(head))
            if not chunk:
                return False
            head += chunk
    except (TimeoutError, ConnectionError):
        return False
    return head[3] == 4


def ray_record(temp_dir: str | None = None) -> Path:
    """The file in which ``ray start`` records the address of the cluster it started, by Ray's rule: in
    ``temp_dir`` (ray.init's ``_temp_dir``), else in ``ray/`` under $RAY_TMPDIR, $TMPDIR (Linux), /tmp (Linux,
    macOS) or the system's temporary folder."""
    if temp_dir is None:
        if "RAY_TMPDIR" in os.environ:
            base = os.environ["RAY_TMPDIR"]
        elif sys.platform.startswith("linux") and "TMPDIR" in os.environ:
            base = os.environ["TMPDIR"]
        else:
            base = "/tmp" if sys.platform.startswith(("linux", "darwin")) else tempfile.gettempdir()
        temp_dir = os.path.join(base, "ray")
    return Path(temp_dir) / "ray_current_cluster"


@dataclass
class _RayCluster:
    """A Ray session this sweep runs in, joined or started, with the placement its checks settled."""

    ray: Any
    resources: dict[str, float]
    gpus_per_trial: float


@contextlib.contextmanager
def _ray_cluster(address, ray_init, *, gpus_per_trial, cpus_per_trial, device):  # type: ignore[no-untyped-def]
    """Join (or start) Ray and check that the cluster can run the points as asked, before anything is written:
    a refusal is one line; Ray is shut down on leaving when this started it."""
    try:
        import ray
    except ImportError:
        raise MissingExtraError(RAY_MISSING) from None

    options = {"include_dashboard": False, "log_to_driver": False, **(ray_init or {})}
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address, **options)
        except ConnectionError as exc:  # no cluster there: one line, not a traceback
            raise InputError(f"cannot join the Ray cluster at {address!r}: {str(exc).strip().splitlines()[0]}") from exc
        except ValueError as exc:  # an address Ray does not take (another protocol: http://...), or an option
            why = str(exc).strip().split(". ")[0]
            if "://" in str(address) and not str(address).startswith("ray://"):
                why += "; use host:port, ray://host:port or auto"
            raise InputError(f"cannot start Ray with address {address!r}: {why}") from exc
    try:
        resources = ray.cluster_resources()
        if gpus_per_trial is None:
            gpus_per_trial = 0.25 if resources.get("GPU", 0) > 0 and device != "cpu" else 0
        if gpus_per_trial > resources.get("GPU", 0):
            raise InputError(
                f"--gpus-per-trial {gpus_per_trial:g}: the Ray cluster has {resources.get('GPU', 0):g} GPUs"
            )
        if cpus_per_trial > resources.get("CPU", 0):
            raise InputError(f"{cpus_per_trial} CPUs per point: the Ray cluster has {resources.get('CPU', 0):g} CPUs")
        if device.startswith("cuda") and gpus_per_trial == 0:  # else every point fails on its worker, one by one
            why = "the Ray cluster has no GPUs" if not resources.get("GPU", 0) else "--gpus-per-trial 0 gives none"
            raise InputError(f"--device {device}: {why}; use --device auto or cpu, or a cluster with GPUs")
        yield _RayCluster(ray, resources, gpus_per_trial)
    finally:
        if started:
            ray.shutdown()


def _run_ray(cluster: _RayCluster, tasks, point_fn, log, *, cpus_per_trial, max_retries):  # type: ignore[no-untyped-def]
    ray, resources, gpus_per_trial = cluster.ray, cluster.resources, cluster.gpus_per_trial
    log(
        f"ray: {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs; {len(tasks)} points, "
        f"{cpus_per_trial} CPU and {gpus_per_trial:g} GPU each, up to {max_retries} retries"
    )
    remote = ray.remote(_ray_point).options(
        num_cpus=cpus_per_trial, num_gpus=gpus_per_trial, max_retries=max_retries, retry_exceptions=False
    )
    refs = {remote.remote(point_fn, task, cpus_per_trial): task for task in tasks}
    done, failed = {}, {}
    placement = {"gpus_per_trial": gpus_per_trial, "cluster": {k: resources.get(k, 0) for k in ("CPU", "GPU")}}
    pending = list(refs)
    t0 = time.perf_counter()
    while pending:
        # a timeout, so that Ctrl-C reaches Python between waits (a blocking wait never returns to it)
        ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
        if not ready:
            continue
        task = refs[ready[0]]
        count = f"[{len(done) + len(failed) + 1}/{len(tasks)}]"
        try:
            record = ray.get(ready[0])
        except ray.exceptions.RayError as exc:  # raised in the task, or its worker died past its retries
            failed[task.name] = _first_line(exc)
            _failed(task, exc, str(exc), log)  # (a task's error carries the worker's traceback)
            log(f"{count} {task.name} FAILED: {failed[task.name]}")
            continue
        done[task.name] = record
        log(f"{count} {task.name} {_describe(record, time.perf_counter() - t0)}")
    return done, failed, placement


def _check_plan(out: Path, plan: SweepPlan, suite: Any, data_md5: dict[str, str], *, write: bool = True) -> None:
    """The folder's plan, attack suite and data are this sweep's (a plan.json of dam 0.9 or older names no suite,
    which was the plan's own, and no data), so that no finished point is reused or redone with other settings or
    data in silence; then records them."""
    saved = read_json(out / "plan.json")
    now = {**plan.comparable(), "suite": suite_record(suite), "data_md5": data_md5}
    if isinstance(saved, dict):
        before = {k: saved.get(k) for k in now}
        if "suite" not in saved:
            before["suite"] = suite_record(plan.suite())
        if "data_md5" not in saved:
            before["data_md5"] = data_md5
        if before != now:
            diff = sorted(k for k in now if before[k] != now[k])
            raise InputError(f"{out} holds a sweep made with other settings ({changed(diff)}); use another --out")
    if write:
        atomic_write_json(out / "plan.json", {**json.loads(json.dumps(asdict(plan))), "suite": now["suite"],
                                              "data_md5": data_md5})  # fmt: skip


def run_sweep(
    plan: str | SweepPlan,
    out: str | os.PathLike[str],
    *,
    backend: str = "ray",
    address: str | None = None,
    gpus_per_trial: float | None = None,
    cpus_per_trial: int = 1,
    max_retries: int = 2,
    data_dir: str | os.PathLike[str] | None = None,
    device: str = "auto",
    suite: Any = None,
    point_fn: Callable[[PointTask], dict[str, Any]] = run_point,
    ray_init: dict[str, Any] | None = None,
    log: Callable[[str], None] = PROGRESS,
) -> dict[str, Any]:
    """Run (or resume) every point of ``plan`` into ``out``; write sweep.json, sweep.csv and the figures.

    ``backend="ray"``: one Ray task per point (``num_cpus=cpus_per_trial``, ``num_gpus=gpus_per_trial``:
    0.25 when the cluster has GPUs, else 0), retried up to ``max_retries`` times when its worker dies; Ray
    starts on this machine when ``address`` is None (and no ``RAY_ADDRESS`` is set), else joins the cluster
    at ``address`` ("auto": the one started here by ``ray start --head``; :func:`ray_address`).  ``ray_init``:
    more ray.init arguments (num_cpus, _temp_dir, ...).  Every node must see ``data_dir`` and ``out`` at the same paths
    (a shared file system).  ``backend="local"``: the points one after another in this process.
    ``suite``: the attack suite (default: the plan's :class:`AttackSuite`); any suite ``run_attacks``
    accepts.  Returns the summary written to sweep.json; its ``failed`` maps point names to their error.
    The output folder is locked for the run.
    """
    from dam.data.datasets import locate_dataset
    from dam.environment import environment_info
    from dam.experiments.reproduce import data_checksums
    from dam.runs import OutputFolder

    plan = sweep_plan(plan)
    if backend not in ("ray", "local"):
        raise InputError(f"backend must be 'ray' or 'local', got {backend!r}")
    if max_retries < 0 or cpus_per_trial < 1 or (gpus_per_trial is not None and gpus_per_trial < 0):
        raise InputError("max_retries >= 0, cpus_per_trial >= 1 and gpus_per_trial >= 0 are required")
    if str(device) == "cpu" and gpus_per_trial:  # reserved and unused, and fewer points at once
        raise InputError(f"--gpus-per-trial {gpus_per_trial:g} with --device cpu: the points would not use them")
    plan.check()  # a bad setting fails here, before any worker starts
    for n, seed in plan.points():
        plan.config(n, seed)
    suite = plan.suite() if suite is None else suite
    # an unreachable cluster is named before the folder is made
    ray_at = ray_address(address, temp_dir=(ray_init or {}).get("_temp_dir")) if backend == "ray" else None
    data = str(locate_dataset("mnist", data_dir).resolve())  # before the folder is made
    data_md5 = data_checksums(data)["md5"]
    out = Path(out)
    folder = OutputFolder(out, "sweep folder")
    folder.check_kind(("plan.json",), "sweep")
    _check_plan(out, plan, suite, data_md5, write=False)  # a folder of another sweep: refused before Ray starts
    # Ray is joined and the cluster checked before the plan is written: a refusal leaves no folder behind (the
    # lock removes the one it made) and no plan.json that would tie the folder to this sweep
    cluster = (_ray_cluster(ray_at, ray_init, gpus_per_trial=gpus_per_trial, cpus_per_trial=cpus_per_trial,
                            device=device) if backend == "ray" else contextlib.nullcontext())  # fmt: skip
    with folder.lock(), cluster as ray_session:
        _check_plan(out, plan, suite, data_md5)
        tasks = [PointTask(plan, n, seed, str((out / "points" / point_name(n, seed)).resolve()), suite, data, device)
                 for n, seed in plan.points()]  # fmt: skip
        log(f"sweep {plan.name}: {len(tasks)} points (n in {list(plan.ns)}, seeds {list(plan.seeds)}) into {out}")
        t0 = time.perf_counter()
        if backend == "local":
            done, failed = _run_local(tasks, point_fn, log)
            placement: dict[str, Any] = {"gpus_per_trial": None, "cluster": None}
        else:
            done, failed, placement = _run_ray(ray_session, tasks, point_fn, log, cpus_per_trial=cpus_per_trial,
                                               max_retries=max_retries)  # fmt: skip
        wall = time.perf_counter() - t0
        points = [done[t.name] for t in tasks if t.name in done]
        summary = {
            "plan": json.loads(json.dumps(asdict(plan))),
            "suite": suite_record(suite),
            "protocol": getattr(suite, "autoattack_protocol", None),  # the AutoAttack that ran, reduced or not
            "backend": backend,
            "address": address,
            "cpus_per_trial": cpus_per_trial if backend == "ray" else None,  # local: one point at a time, here
            **placement,
            "data_dir": data,
            "wall_seconds": wall,
            "points": [{k: v for k, v in p.items() if k not in ("environment", "key")} for p in points],
            "per_n": per_n_summary(points),
            "failed": failed,
            "environment": environment_info(),
        }
        atomic_write_json(out / "sweep.json", summary)
        write_csv(summary, out / "sweep.csv")
        figures = sweep_figures(summary, out)
    reused = sum(1 for p in points if p.get("reused"))
    wrote = ", ".join(["sweep.json", "sweep.csv", *(f.name for f in figures)])
    log(f"sweep {plan.name}: {len(points)} of {len(tasks)} points done ({reused} reused) in {wall:.0f} s; "
        f"wrote {wrote} in {out}")  # fmt: skip
    if failed:
        log(f"sweep {plan.name}: {len(failed)} points FAILED: {', '.join(sorted(failed))}")
    return summary


# -- summaries, table and figures ------------------------------------------------------------------


def point_metrics(point: dict[str, Any]) -> dict[str, float | None]:
    """The scalar measurements of one point, by column name."""
    values: dict[str, float | None] = {"clean_error": point.get("clean_error")}
    robust = point.get("robust") or {}
    for norm in [*(k for k in NORMS if k in robust), *sorted(k for k in robust if k not in NORMS)]:
        table = robust[norm]
        for eps, acc in zip(table["budgets"], table["worst_case"], strict=True):
            values[f"robust_{norm}_{eps:g}"] = acc
    boundary = point.get("boundary") or {}
    values["boundary_l2_mean"] = boundary.get("l2_mean")
    values["boundary_l2_median"] = boundary.get("l2_median")
    values["boundary_linf_median"] = boundary.get("linf_median")
    values["rubbish_confidence"] = (point.get("rubbish") or {}).get("confidence_mean")
    # beside it, since a search stopped at its step budget is not a minimum: its confidence is the budget's
    values["rubbish_converged"] = (point.get("rubbish") or {}).get("converged_rate")
    values["beta_sm"] = point.get("beta_sm")
    timings = point.get("timings") or {}
    values["train_seconds"] = timings.get("train_seconds")
    values["eval_seconds"] = timings.get("eval_seconds")
    return values


def per_n_summary(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per n: the mean and the standard deviation (sample, n - 1) over seeds of every measurement, and the number
    of seeds that measured it (``count``: a seed may lack one, e.g. no beta_sm at chance accuracy); the std of a
    single value is None, not 0."""
    rows = []
    for n in sorted({p["n"] for p in points}):
        group = [p for p in points if p["n"] == n]
        metrics = [point_metrics(p) for p in group]
        row: dict[str, Any] = {"n": n, "seeds": sorted(p["seed"] for p in group), "mean": {}, "std": {},
                               "count": {}}  # fmt: skip
        for name in metrics[0]:
            values = _finite([m.get(name) for m in metrics])  # type: ignore[misc]
            row["count"][name] = len(values)
            row["mean"][name] = statistics.fmean(values) if values else None
            row["std"][name] = statistics.stdev(values) if len(values) > 1 else None
        rows.append(row)
    return rows


def write_csv(summary: dict[str, Any], path: Path) -> None:
    """One row per point, then per n a ``mean``, a ``std`` and a ``count`` row (the seeds behind each column's mean
    and std: a seed may lack a measurement; the std is empty below 2)."""
    columns: list[str] = []
    for p in summary["points"]:
        columns += [c for c in point_metrics(p) if c not in columns]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["row", "n", "seed", "seeds", *columns])
    fmt = lambda v: "" if v is None else f"{v:.6g}"  # noqa: E731
    for p in summary["points"]:
        m = point_metrics(p)
        w.writerow(["point", p["n"], p["seed"], 1, *[fmt(m.get(c)) for c in columns]])
    for row in summary["per_n"]:
        for stat in ("mean", "std", "count"):
            w.writerow([stat, row["n"], "", len(row["seeds"]), *[fmt(row[stat].get(c)) for c in columns]])
    atomic_write_bytes(path, buf.getvalue().encode())


def sweep_figures(summary: dict[str, Any], out: Path) -> list[Path]:
    """sweep_robustness.png and sweep_probes.png (dam.plotting: no pyplot); none when no point finished."""
    from dam.plotting import colormap, new_figure, save_figure

    rows = summary["per_n"]
    if not rows:
        return []
    ns = [r["n"] for r in rows]
    counts = {c for r in rows for c in r.get("count", {}).values() if c} or {max(len(r["seeds"]) for r in rows)}
    seeds = f"{min(counts)}" if len(counts) == 1 else f"{min(counts)}-{max(counts)}"
    over = f"mean over {seeds} seeds per point, error bars the sample std (none where one seed measured it)"
    paths = []

    def series(name: str) -> tuple[list[int], list[float], list[float]]:
        xs, ys, es = [], [], []
        for r in rows:
            if r["mean"].get(name) is not None:
                xs.append(r["n"])
                ys.append(r["mean"][name])
                es.append(r["std"].get(name) or 0.0)  # (no bar where fewer than 2 seeds measured it)
        return xs, ys, es

    def n_axis(ax: Any) -> None:
        ax.set_xscale("log")
        ax.set_xticks(ns)
        ax.set_xticklabels([str(n) for n in ns])
        ax.minorticks_off()
        ax.set_xlabel("n (power of the interaction vertex)")
        ax.grid(alpha=0.3)

    fig = new_figure((11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    cmap = colormap("viridis")
    for ax, norm in zip(axes, NORMS, strict=True):
        budgets = sorted(
            {eps for p in summary["points"] for eps in (p.get("robust") or {}).get(norm, {}).get("budgets", [])}
        )
        for i, eps in enumerate(budgets):
            xs, ys, es = series(f"robust_{norm}_{eps:g}")
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, color=cmap(i / max(len(budgets) - 1, 1)),
                        label=f"eps = {eps:g}")  # fmt: skip
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("robust accuracy (worst case over attacks)")
        ax.set_title(f"{'L-inf' if norm == 'linf' else 'L2'} budgets")
        n_axis(ax)
        ax.legend(fontsize=8)
    fig.suptitle(f"sweep {summary['plan']['name']}: {over}")
    paths.append(save_figure(fig, out / "sweep_robustness.png"))

    fig = new_figure((11, 8), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    panels = [
        ("clean_error", "clean test error"),
        ("boundary_l2_median", "median L2 distance to the decision boundary"),
        ("rubbish_confidence", f"confidence on own rubbish (beta_sm {RUBBISH_BETA_SM:g})"),
        ("beta_sm", "calibrated beta_sm"),
    ]
    for ax, (name, label) in zip(axes, panels, strict=True):
        xs, ys, es = series(name)
        if xs:
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label="mean confidence" if "rubbish" in name else None)
            if name == "rubbish_confidence":
                cx, cy, ce = series("rubbish_converged")
                ax.errorbar(cx, cy, yerr=ce, marker="s", capsize=3, linestyle="--", color="grey",
                            label="searches that converged (else: stopped at the step budget or stuck)")  # fmt: skip
                ax.set_ylim(-0.02, 1.02)
                ax.legend(fontsize=8)
        else:  # e.g. no beta_sm: a model at chance accuracy has none (its calibration says why)
            ax.text(0.5, 0.5, "not measured", transform=ax.transAxes, ha="center", va="center")
        if name == "beta_sm" and ys and min(ys) > 0:
            ax.set_yscale("log")
        ax.set_ylabel(label)
        n_axis(ax)
    fig.suptitle(f"sweep {summary['plan']['name']}: {over}")
    paths.append(save_figure(fig, out / "sweep_probes.png"))
    return paths
