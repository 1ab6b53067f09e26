"""The one training loop: epochs over seeded minibatches into a resumable run folder.

Every model of the package trains through :func:`fit`: the DAM with the authors' rule
(:mod:`dam.training.rule`), the MLP baselines with cross-entropy and Adam (:mod:`dam.training.mlp`) and
adversarial fine-tuning (:mod:`dam.robustness.adversarial_training`).  What differs is a
:class:`Trainer`: one epoch's work and the tensors resuming needs.  :func:`fit` is the one-run case of
:func:`fit_runs`, which also trains several run folders whose epochs one step computes together (stacked
DAMs, :mod:`dam.training.stacked`).  What is shared is here:

- the run folder is locked for the run and never overwritten silently (:class:`dam.runs.OutputFolder`);
- the data are loaded before anything is written, so a failed download leaves no half-made run;
- per epoch, metrics are appended; the training state (with the model files) is written atomically after
  the first epoch, the last, and any epoch that ends at least ``SAVE_COST_RATIO`` times the last write's
  cost after it, so that writing costs at most about 5% of the time: every epoch of a CPU run (seconds
  each), about every second of a GPU run, whose epochs take tens of milliseconds and whose state is 13 MB.
  A kill replays the epochs after the last state written, whose metrics lines are then dropped and
  rewritten (:func:`keep_metrics_until`); an exception (Ctrl-C) drops them before it leaves;
- shuffling is derived from (seed, epoch), so no generator state needs saving and a resumed run ends
  with the same weights, bit for bit, as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from torch import Tensor, nn

from dam.data import VALIDATION_SIZE, load_dataset, seeded_subset, train_val_split
from dam.environment import denormals_flushed_in_training, environment_info, flush_denormals
from dam.errors import CheckpointError, ConfigError, DivergedError, InputError, is_whole
from dam.io import append_jsonl, atomic_write_bytes, atomic_write_json, json_ready, read_jsonl
from dam.model import CONFIG_FILE, FORMAT_VERSION
from dam.progress import progress_bar
from dam.runs import METRICS_FILE, STATE_FILE, finished_epochs, run_data_dir

logger = logging.getLogger(__name__)


# -- data --------------------------------------------------------------------------------------------


def as_unit_float(images: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 images -> floats in [0, 1]; floating images pass through."""
    if images.dtype == torch.uint8:
        return images.to(dtype) / 255.0
    return images.to(dtype)


@dataclass
class TrainData:
    train_images: Tensor
    train_labels: Tensor
    eval_images: Tensor
    eval_labels: Tensor
    eval_name: str  # "test" or "validation"


def _training_images(dataset: str, validation: bool) -> tuple[int, str] | None:
    """How many training images a known data set offers (less the validation split), and how to say so."""
    from dam.data.sources import DATASETS

    spec = DATASETS.get(dataset)
    if spec is None:
        return None
    rest = ", less the validation split" if validation else ""
    available = spec.sizes["train"] - (VALIDATION_SIZE if validation else 0)
    return available, f"the {available} {spec.title} training images{rest}"


def check_train_subset(dataset: str, train_subset: int | None, validation: bool) -> None:
    """Refuse a ``train_subset`` larger than the training images, when the settings are made (before any
    folder or data): the sizes of the known data sets are fixed, and the validation split takes 10,000."""
    known = _training_images(dataset, validation)
    if train_subset is not None and known is not None and train_subset > known[0]:
        raise ConfigError(f"train_subset {train_subset} is larger than {known[1]}")


def check_batch_size(dataset: str, train_subset: int | None, validation: bool, batch_size: int) -> None:
    """Refuse a minibatch larger than the images a new run trains on: it would silently train on whole epochs
    instead.  Checked where a run is started, not where settings are read back, so that a run saved by an older
    dam with such settings still resumes."""
    if train_subset is not None and batch_size > train_subset:
        raise ConfigError(f"batch_size {batch_size} is larger than the train_subset of {train_subset}")
    known = _training_images(dataset, validation)
    if known is not None and batch_size > known[0]:
        raise ConfigError(f"batch_size {batch_size} is larger than {known[1]}")


def check_settings_type(settings: Any, cls: type, what: str, *, optional: bool = True) -> None:
    """Refuse settings of another class (a DAM's TrainConfig for a baseline, a dict): they would train with
    fields silently ignored, or fail deep inside with an AttributeError."""
    if (settings is None and optional) or isinstance(settings, cls):
        return
    hint = f" (or None{' to resume with the saved ones' if what.endswith('settings') else ''})" if optional else ""
    raise ConfigError(f"{what} must be a {cls.__module__}.{cls.__name__}{hint}, got {type(settings).__name__}")


def check_new_run(config: Any, folder: Path, *, resume: bool, force: bool) -> None:
    """Before a run folder is touched (locked, or moved aside by ``force``): the minibatch and the temperatures
    of a run that will start, unless the folder holds a run that ``resume`` continues with its saved settings
    (saved by an older dam, they still resume).  ``config``: a TrainConfig or MLPTrainConfig, or None (resume
    with the saved settings)."""
    if config is None or (resume and not force and (folder / STATE_FILE).exists()):
        return
    check_batch_size(config.dataset, config.train_subset, config.validation, config.batch_size)
    check_temperatures(config)


def check_temperatures(config: Any) -> None:
    """A DAM schedule that uses every temperature it names: T_i without a ramp would be ignored (T is T_f from
    the first epoch).  Checked where a run starts (a run saved so still resumes) and where a sweep plans one."""
    start, end = getattr(config, "temperature_start", None), getattr(config, "temperature_end", None)
    if getattr(config, "ramp_epochs", None) == 0 and start != end:
        raise ConfigError(
            f"T_i = {start:g} and T_f = {end:g} with no ramp (ramp_epochs 0): the run would train at T_f throughout; "
            "give a ramp (--ramp-epochs N) or one temperature (--temperature T)"
        )


def prepare_data(
    dataset: str,
    seed: int,
    train_subset: int | None,
    validation: bool,
    data_dir: str | os.PathLike[str] | None,
    device: torch.device,
) -> TrainData:
    """The training images (a seeded subset when asked) and the images errors are measured on."""
    images, labels = load_dataset(dataset, "train", data_dir=data_dir)
    if validation:
        train_idx, val_idx = train_val_split(len(images), VALIDATION_SIZE, seed=seed)
        eval_images, eval_labels, eval_name = images[val_idx], labels[val_idx], "validation"
        images, labels = images[train_idx], labels[train_idx]
    else:
        eval_images, eval_labels = load_dataset(dataset, "test", data_dir=data_dir)
        eval_name = "test"
    if train_subset is not None:
        if train_subset > len(images):
            raise ConfigError(f"train_subset {train_subset} is larger than the {len(images)} training images")
        images, labels, _ = seeded_subset(images, labels, train_subset, seed)
    return TrainData(
        images.reshape(len(images), -1).to(device),
        labels.to(device),
        eval_images.reshape(len(eval_images), -1).to(device),
        eval_labels.to(device),
        eval_name,
    )


def epoch_permutation(num: int, seed: int, epoch: int) -> Tensor:
    """The order of an epoch's examples, from (seed, epoch) alone."""
    # (modulo 2**64, the generator's seed range: the same seed as before for every seed below 9.2e12, and any
    # seed up to 2**63 - 1 works)
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch + 1) % 2**64)
    return torch.randperm(num, generator=g)


@torch.no_grad()
def error_rate(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 2000) -> float:
    """Fraction of misclassified examples; ``images`` uint8 (B, 784) or float in [0, 1]."""
    dtype = next(model.parameters()).dtype
    wrong = 0
    for i in range(0, len(images), batch_size):
        x = as_unit_float(images[i : i + batch_size], dtype)
        wrong += int((model.logits(x).argmax(dim=1) != labels[i : i + batch_size]).sum())
    return wrong / max(len(images), 1)


# -- run folders -------------------------------------------------------------------------------------


def keep_metrics_until(folder: Path, epoch: int) -> None:
    """Drop metric lines past ``epoch`` (an epoch a kill interrupted after logging it is replayed)."""
    records = [r for r in read_jsonl(folder / METRICS_FILE) if r.get("epoch", 0) <= epoch]
    lines = [json.dumps(json_ready(r), sort_keys=True, allow_nan=False) + "\n" for r in records]
    atomic_write_bytes(folder / METRICS_FILE, "".join(lines).encode())


def save_train_state(folder: Path, tensors: dict[str, Tensor], epochs_done: int, meta: dict[str, str]) -> None:
    from safetensors.torch import save as st_save

    cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {**meta, "epochs_done": str(epochs_done), "format_version": str(FORMAT_VERSION)}
    atomic_write_bytes(folder / STATE_FILE, st_save(cpu, metadata=metadata))


def load_train_state(folder: Path) -> tuple[dict[str, Tensor], dict[str, str], int]:
    """Tensors, metadata and epochs done of a run folder's training state."""
    from safetensors import SafetensorError, safe_open

    path = folder / STATE_FILE
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        return tensors, meta, int(meta["epochs_done"])
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable training state ({exc}); cannot resume") from None


S = TypeVar("S")


def settings_from(cls: type[S], data: Any, where: str) -> S:
    """A settings dataclass from a saved dict; a folder whose settings do not fit is a CheckpointError."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{where}: records no training settings ({cls.__name__})")
    try:
        unknown = set(data) - {f.name for f in fields(cls)}  # type: ignore[arg-type]
        if unknown:
            raise InputError(f"unknown settings {sorted(unknown)}")
        return cls(**data)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: no valid {cls.__name__} ({exc})") from None


def resumed_settings(saved: S, given: S | None, folder: Path) -> S:
    """The settings of a resumed run: the saved ones rule; ``given`` may differ only in ``epochs``."""
    if given is None:
        return saved
    if replace(given, epochs=saved.epochs) != saved:  # type: ignore[type-var]
        diff = {k: (v, getattr(given, k)) for k, v in asdict(saved).items() if getattr(given, k) != v}  # type: ignore[call-overload]
        raise CheckpointError(f"{folder}: resume with settings that differ from the saved run (saved, given): {diff}")
    status = finished_epochs(folder)
    if status is not None and given.epochs < status[0]:  # type: ignore[attr-defined]
        # A run is extended, never shortened: its weights already hold the later epochs.
        raise CheckpointError(
            f"{folder}: {given.epochs} epochs asked for, fewer than the {status[0]} already done; a run is "  # type: ignore[attr-defined]
            "extended, never shortened (ask for at least as many, or give no epoch count to finish the saved plan)"
        )
    return replace(saved, epochs=given.epochs)  # type: ignore[type-var]


# -- the loop ----------------------------------------------------------------------------------------


class Trainer(Protocol):
    """One kind of training: what an epoch does and what resuming needs."""

    model: nn.Module

    def train_epoch(self, epoch: int, data: TrainData) -> dict[str, Any]:
        """Train one epoch (0-based); return its statistics (loss, train error, ...)."""
        ...

    def state(self) -> tuple[dict[str, Tensor], dict[str, str]]:
        """Tensors and string metadata that, with the weights, let a killed run continue exactly."""
        ...

    def load_state(self, tensors: dict[str, Tensor], meta: dict[str, str], where: Path) -> None:
        """Restore what :meth:`state` saved (the weights included); ``where`` names the folder in errors."""
        ...

    def save_model(self, folder: Path, run_info: dict[str, Any]) -> None: ...


def restore_trainer(trainer: Trainer, folder: Path) -> int:
    """Load a run folder's training state into ``trainer`` (its ``load_state``); the epochs it had done."""
    tensors, meta, epochs_done = load_train_state(folder)
    trainer.load_state(tensors, meta, folder)
    return epochs_done


@dataclass
class RunPlan:
    """Where a run goes and how far: shared by every trainer."""

    folder: Path
    epochs: int
    eval_every: int = 1
    desc: str = "train"
    postfix: tuple[str, ...] = ("loss", "train_error")


@dataclass
class Run:
    """One run folder in the loop: its trainer (state, weights, model files), plan, config.json record, data
    and the epoch it starts from (0, or the epochs its training state has done)."""

    trainer: Trainer
    plan: RunPlan
    run_info: dict[str, Any]
    data: TrainData
    start_epoch: int = 0


# Trains the given runs (those with this epoch still to do) through one epoch, together; one statistics dict
# per run, in their order.
EpochStep = Callable[[int, list[Run]], list[dict[str, Any]]]


def fit(
    trainer: Trainer,
    plan: RunPlan,
    run_info: dict[str, Any],
    data: TrainData,
    *,
    start_epoch: int = 0,
    stop_after: int | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> None:
    """Train from ``start_epoch`` to ``plan.epochs`` (or ``stop_after``, as a kill would), writing the run
    folder (:class:`_Saves` says when).  The caller holds the folder's lock (:meth:`dam.runs.OutputFolder.writing`)."""
    fit_runs([Run(trainer, plan, run_info, data, start_epoch)], lambda epoch, runs: [trainer.train_epoch(epoch, data)],
             stop_after=stop_after, progress=progress, log=log, desc=plan.desc)  # fmt: skip


def fit_runs(
    runs: list[Run],
    step: EpochStep,
    *,
    stop_after: int | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
    desc: str = "train",
) -> None:
    """The one training loop: every run from its start epoch to its ``plan.epochs`` (or ``stop_after``),
    ``step`` training the runs due at an epoch together, then each run's folder written as :func:`fit`
    writes one.  Runs may start and end at different epochs (a multi-model run killed between two folders'
    writes resumes them one epoch apart).  The caller holds every folder's lock.

    A run whose statistics are not finite stops the loop with DivergedError (a FloatingPointError), after the
    other runs' epoch has been written.
    """
    if stop_after is not None and (not is_whole(stop_after) or stop_after < 1):
        raise InputError(f"stop_after must be an integer of at least 1 epoch, got {stop_after!r}")
    ends = [run.plan.epochs if stop_after is None else min(run.plan.epochs, stop_after) for run in runs]
    for run, end in zip(runs, ends, strict=True):
        # said here, once every check has passed, never before a refusal
        if run.start_epoch >= end:
            logger.info("%s: %d of %d epochs already done; nothing to train", run.plan.folder, run.start_epoch,
                        run.plan.epochs)  # fmt: skip
        else:
            how = f"resuming at epoch {run.start_epoch + 1}" if run.start_epoch else "training"
            logger.info("%s: %s, to epoch %d of %d", run.plan.folder, how, end, run.plan.epochs)
        keep_metrics_until(run.plan.folder, run.start_epoch)
        run.run_info = _with_earlier_sessions(run.plan.folder, run.run_info, run.start_epoch, end)
        atomic_write_json(run.plan.folder / CONFIG_FILE, run.run_info)
    first = min(run.start_epoch for run in runs)
    bar = progress_bar(max(run.plan.epochs for run in runs), first, desc, progress)
    saves = _Saves(runs)
    end_of = {id(run): end for run, end in zip(runs, ends, strict=True)}
    try:
        for epoch in range(first, max(ends)):
            due = [run for run, end in zip(runs, ends, strict=True) if run.start_epoch <= epoch < end]
            if not due:  # a gap between runs that ended (stop_after) and runs that start later
                bar.update(1)
                continue
            t0 = time.perf_counter()
            with flush_denormals():  # a large-n DAM's late epochs run 4x slower on denormal numbers
                stats = step(epoch, due)
            train_seconds = time.perf_counter() - t0
            records, bad, good = [], [], []
            checkpoint = saves.due()
            for run, run_stats in zip(due, stats, strict=True):
                record = _epoch_record(run, epoch, run_stats, train_seconds)
                nonfinite = {k: v for k, v in run_stats.items() if isinstance(v, float) and not math.isfinite(v)}
                if nonfinite:
                    where = f"{run.plan.folder}: " if len(runs) > 1 else ""
                    bad.append(f"{where}epoch {epoch + 1}: non-finite training statistics {nonfinite}")
                    continue
                append_jsonl(run.plan.folder / METRICS_FILE, record)
                if checkpoint or epoch == run.start_epoch or epoch + 1 == end_of[id(run)]:
                    saves.write(run, epoch)
                good.append(run)
                records.append(record)
                logger.debug("%s", json.dumps(record))
                if log is not None:
                    log(json.dumps(record) if len(runs) == 1 else json.dumps({"run": str(run.plan.folder), **record}))
            if bad:
                for run in good:  # the finite runs' epoch is kept
                    if saves.saved[id(run)] < epoch + 1:
                        saves.write(run, epoch)
                raise DivergedError("; ".join(bad) + "; lower the lr")
            saves.settle()
            bar.update(1)
            bar.set_postfix(_postfix(due, records))
    except BaseException:
        # Metrics of epochs whose state was not written would be replayed on resume: drop them now, so that
        # the folder's metrics always end at its training state.
        for run in runs:
            with contextlib.suppress(Exception):  # the error in flight is the one to report
                keep_metrics_until(run.plan.folder, saves.saved[id(run)])
        raise
    finally:
        bar.close()
    for run, end in zip(runs, ends, strict=True):
        if run.start_epoch >= end:  # nothing left to do: make sure the model files match the state
            run.trainer.save_model(run.plan.folder, run.run_info)


def _epoch_record(run: Run, epoch: int, stats: dict[str, Any], train_seconds: float) -> dict[str, Any]:
    """An epoch's metrics line: the step's statistics, its time and (when due) the error on the eval set.

    ``train_seconds`` is the step's: with several runs trained together, the time all of them took."""
    t0 = time.perf_counter()
    record: dict[str, Any] = {"epoch": epoch + 1, **stats, "train_seconds": train_seconds}
    plan, data = run.plan, run.data
    if (epoch + 1) % plan.eval_every == 0 or epoch + 1 == plan.epochs:
        record[f"{data.eval_name}_error"] = error_rate(run.trainer.model, data.eval_images, data.eval_labels)
    record["seconds"] = train_seconds + time.perf_counter() - t0
    return record


# The training state is written when the time since the last write is at least this many times what that
# write cost: writing then takes at most about 1 / (1 + 20) of the time.
SAVE_COST_RATIO = 20.0


class _Saves:
    """When to write the runs' training state, and the epochs each run's written state holds."""

    def __init__(self, runs: list[Run]) -> None:
        self.saved = {id(run): run.start_epoch for run in runs}
        self.cost = 0.0  # seconds the last epoch's writes took
        self.writing = 0.0  # seconds of writes in the epoch being recorded
        self.last = time.perf_counter()

    def due(self) -> bool:
        return time.perf_counter() - self.last >= SAVE_COST_RATIO * self.cost

    def write(self, run: Run, epoch: int) -> None:
        """The training state atomically, then the model files (see the module docstring)."""
        t0 = time.perf_counter()
        tensors, meta = run.trainer.state()
        save_train_state(run.plan.folder, tensors, epoch + 1, meta)
        run.trainer.save_model(run.plan.folder, run.run_info)
        self.saved[id(run)] = epoch + 1
        self.writing += time.perf_counter() - t0

    def settle(self) -> None:
        """End of an epoch's records: if anything was written, time the next write from now."""
        if self.writing:
            self.cost, self.writing, self.last = self.writing, 0.0, time.perf_counter()


def _postfix(runs: list[Run], records: list[dict[str, Any]]) -> dict[str, str]:
    """The progress bar's figures: a run's own, or the mean over the runs trained together."""
    keys = [*runs[0].plan.postfix, f"{runs[0].data.eval_name}_error"]
    shown = {}
    for key in keys:
        values = [r[key] for r in records if r.get(key) is not None]
        if values:
            shown[key if len(runs) == 1 else f"mean_{key}"] = f"{sum(values) / len(values):.4g}"
    return shown


def run_record(kind: str, model_settings: dict[str, Any], train_settings: Any, device: torch.device,
               data_dir: str | None, data: TrainData | None = None) -> dict[str, Any]:  # fmt: skip
    """What a run folder's config.json records: kind, settings, seed, device, data folder and the MD5 of the
    images and labels it trained and was measured on (``data``), versions, whether the kernels were compiled
    and whether its CPU epochs flushed denormal numbers (both change a large-n model's weights a little)."""
    from dam.model import fused_kernels_enabled
    from dam.results import tensor_md5

    record = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "model": model_settings,
        "train": asdict(train_settings),
        "seed": train_settings.seed,
        "device": str(device),
        "data_dir": data_dir,
        "environment": {
            **environment_info(),
            "denormals": "flushed" if denormals_flushed_in_training() else "computed",
            "compiled_kernels": fused_kernels_enabled(),
        },
    }
    if data is not None:  # (images and labels each, as trained on: the subset, the validation split)
        record["data_md5"] = {
            "train_images": tensor_md5(data.train_images), "train_labels": tensor_md5(data.train_labels),
            f"{data.eval_name}_images": tensor_md5(data.eval_images),
            f"{data.eval_name}_labels": tensor_md5(data.eval_labels),
        }  # fmt: skip
    return record


def _with_earlier_sessions(folder: Path, record: dict[str, Any], start_epoch: int, end: int) -> dict[str, Any]:
    """A resumed run's record keeps where and with what each earlier session ran (device, versions, data),
    so that a run trained across machines says so; a session that trains nothing leaves the record as it was."""
    if start_epoch == 0:
        return record
    try:
        old = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return record
    if start_epoch >= end and isinstance(old, dict) and old.get("train") == record.get("train"):
        return old
    keep = ("device", "data_dir", "data_md5", "environment")
    before = {**{k: old.get(k) for k in keep if k in old}, "resumed_at_epoch": start_epoch}
    return {**record, "earlier_sessions": [*old.get("earlier_sessions", []), before]}


def resolved_data_dir(data_dir: str | os.PathLike[str] | None, folder: Path, resuming: bool) -> str | None:
    """The data folder to read: the one given, else (on resume) the one the run started with."""
    if data_dir is None and resuming:
        data_dir = run_data_dir(folder)
    return str(Path(data_dir).resolve()) if data_dir is not None else None
