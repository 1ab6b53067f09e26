"""Adversarial fine-tuning of a trained DAM_n: the extension the paper's discussion proposes.

A trained run folder is trained on with the authors' own rule (``dam.training.rule.minibatch_step``), at its
final temperature and loss power m, on minibatches that hold the clean images plus, for a fraction of
them, their decision-boundary adversarials: the image one step past the boundary that
:class:`~dam.probes.boundary.BoundarySearch` finds on the *current* weights, labelled with the clean
image's true label.  Making an adversarial costs one gradient step per search step (~50-100 per image
for the trained models), so only a fraction of each minibatch gets one, and the default runs a few
epochs on a subset of the training set.  Measured for DAM_20 with K = 2000 on one CPU thread: 18-25 ms
per searched image against ~0.4 ms per clean training image, so an epoch of the default 10,000 images
at fraction 0.1 took 28-37 s where a clean one takes ~3 s; the default 3 epochs plus the robustness
measurement of ``dam adversarial-train`` took 3 minutes.

The output folder is an ordinary DAM run folder (``DenseAssociativeMemory.load``, ``dam evaluate``,
``dam info``, the probes all read it): its ``train`` section holds the effective settings of the
fine-tuning as a :class:`~dam.training.rule.TrainConfig`, and ``adversarial`` / ``base_run`` /
``base_model_md5`` say what it was fine-tuned from and how.  It resumes after a kill from the last
finished epoch with the same weights as an uninterrupted run: the searches are deterministic functions
of the weights and the images, and shuffling comes from (seed, epoch).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dam.data import load_dataset, seeded_subset
from dam.environment import environment_info, resolve_device
from dam.errors import (
    CheckpointError,
    ConfigError,
    InputError,
    changed,
    is_finite_number,
    is_whole,
    plain_fields,
    violated,
)
from dam.io import atomic_write_json
from dam.model import CONFIG_FILE, DenseAssociativeMemory
from dam.probes.boundary import BoundarySearch
from dam.results import read_json, tensor_md5
from dam.runs import OutputFolder, finished_epochs, model_md5, read_run_config, run_data_dir
from dam.training.loop import (
    RunPlan,
    TrainData,
    as_unit_float,
    check_settings_type,
    epoch_permutation,
    error_rate,
    fit,
    prepare_data,
    resolved_data_dir,
    restore_trainer,
    resumed_settings,
    run_record,
    settings_from,
)
from dam.training.rule import DAMTrainer, TrainConfig, dam_loss, minibatch_step

logger = logging.getLogger(__name__)

ROBUSTNESS_FILE = "robustness.json"


@dataclass(frozen=True)
class AdversarialTrainConfig:
    """Settings of an adversarial fine-tuning; None means "as the base run was trained"."""

    epochs: int = 3
    fraction: float = 0.1  # share of each minibatch's clean images that also get an adversarial twin
    eps: float = 0.05  # search step in [-1, 1] pixel units (the probes' default)
    max_steps: int = 200  # search budget per image; images that do not cross in it get no twin
    lr: float | None = None  # None: the base run's last learning rate
    lr_decay: float = 1.0
    momentum: float | None = None
    batch_size: int | None = None
    train_subset: int | None = 10000  # None: the whole training set
    seed: int = 0

    def __post_init__(self) -> None:
        whole = ("epochs", "max_steps", "seed")  # (types first: 2.5 epochs would fail inside the locked folder)
        maybe_whole = ("batch_size", "train_subset")
        plain_fields(self, (*whole, *maybe_whole, "fraction", "eps", "lr_decay", "lr", "momentum"))
        types = {
            **{f"{k} is an integer": is_whole(getattr(self, k)) for k in whole},
            **{f"{k} is an integer or None": getattr(self, k) is None or is_whole(getattr(self, k))
               for k in maybe_whole},
            **{f"{k} is a finite number": is_finite_number(getattr(self, k)) for k in ("fraction", "eps", "lr_decay")},
            **{f"{k} is a finite number or None": getattr(self, k) is None or is_finite_number(getattr(self, k))
               for k in ("lr", "momentum")},
        }  # fmt: skip
        bad = [k for k, ok in types.items() if not ok]
        if bad:
            raise ConfigError(violated("adversarial training settings", bad, self))
        checks = {
            "epochs >= 1": self.epochs >= 1,
            "0 <= seed < 2**63": 0 <= self.seed < 2**63,
            "0 < fraction <= 1": 0 < self.fraction <= 1,
            "eps > 0": self.eps > 0,
            "max_steps >= 1": self.max_steps >= 1,
            "lr > 0": self.lr is None or self.lr > 0,
            "0 < lr_decay <= 1": 0 < self.lr_decay <= 1,
            "0 <= momentum < 1": self.momentum is None or 0 <= self.momentum < 1,
            "batch_size >= 1": self.batch_size is None or self.batch_size >= 1,
            "train_subset >= 1": self.train_subset is None or self.train_subset >= 1,
            "batch_size <= train_subset": None in (self.batch_size, self.train_subset)
            or self.batch_size <= self.train_subset,  # type: ignore[operator]
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(violated("adversarial training settings", bad, self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdversarialTrainConfig:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown adversarial training settings {sorted(unknown)}")
        return cls(**data)


def base_settings(base_run: str | os.PathLike[str]) -> TrainConfig:
    """The base run's training settings (its m, dataset, lr schedule); a folder without them is refused."""
    return settings_from(TrainConfig, read_run_config(base_run).get("train"), str(Path(base_run) / CONFIG_FILE))


def finetune_settings(
    base: TrainConfig, base_epochs: int, temperature: float, config: AdversarialTrainConfig, dtype: torch.dtype
) -> TrainConfig:
    """The fine-tuning as a TrainConfig: constant T and the base run's m; lr, momentum and batch size
    default to where the base run left off (the batch size no larger than the fine-tuning's train_subset)."""
    return replace(
        base,
        temperature_start=temperature, temperature_end=temperature, ramp_epochs=0, epochs=config.epochs,
        lr=config.lr if config.lr is not None else base.lr_at(max(base_epochs - 1, 0)), lr_decay=config.lr_decay,
        momentum=config.momentum if config.momentum is not None else base.momentum,
        batch_size=config.batch_size or min(base.batch_size, config.train_subset or base.batch_size),
        train_subset=config.train_subset, seed=config.seed,
        validation=False, eval_every=1, dtype=str(dtype).removeprefix("torch."),
    )  # fmt: skip


def training_search(model: DenseAssociativeMemory, config: AdversarialTrainConfig, m: int) -> BoundarySearch:
    """The search that makes the training adversarials: one step past the boundary, on the model as it
    is being trained (the search holds the same module, so it always sees the current weights)."""
    return BoundarySearch(model, eps=config.eps, max_steps=config.max_steps, m=m, until="crossing", progress=False)


@contextmanager
def pixel_gradients_only(model: DenseAssociativeMemory) -> Iterator[None]:
    """Searches need dC/dv only; with the weights frozen the backward pass skips the K x 794 weight
    gradient, one large product per search step."""
    model.memories.requires_grad_(False)
    try:
        yield
    finally:
        model.memories.requires_grad_(True)


@dataclass
class Adversarials:
    """Past-the-boundary twins of some clean images, on the weights they were searched on."""

    images: Tensor  # (A, 784) in [0, 1], the model's dtype
    labels: Tensor  # the TRUE labels of their clean images (the model labels them otherwise)
    source: Tensor  # index of each one's clean image in the batch searched
    l2: Tensor  # distance from the clean image, [0, 1] pixel units


def make_adversarials(search: BoundarySearch, images: Tensor, labels: Tensor) -> Adversarials:
    """Search every image; keep those the model got right and whose search succeeded.

    A misclassified image's search leads from its wrong label to its second choice, which may well be
    the true label: that image is no adversarial, so it gets no twin.
    """
    model = search.model
    with pixel_gradients_only(model):
        result = search(images)
    keep = (result.success & (result.top == labels.to(result.top.device))).nonzero()[:, 0]
    keep = keep.to(images.device)
    return Adversarials(
        images=result.past.to(images.device, model.memories.dtype)[keep],
        labels=labels[keep],
        source=keep,
        l2=result.distances("past")["l2"].to(images.device)[keep],
    )


class AdversarialTrainer(DAMTrainer):
    """The authors' rule on clean minibatches plus boundary adversarials of the current weights."""

    def __init__(self, model: DenseAssociativeMemory, settings: TrainConfig, search: BoundarySearch,
                 fraction: float) -> None:  # fmt: skip
        super().__init__(model, settings)
        self.search = search
        self.fraction = fraction

    def train_epoch(self, epoch: int, data: TrainData) -> dict[str, Any]:
        """One pass in seeded minibatches; the first ``fraction`` of each (already shuffled) minibatch is
        searched on the current weights and its adversarials join the minibatch."""
        model, settings = self.model, self.config
        images, labels = data.train_images, data.train_labels
        lr, dev = settings.lr_at(epoch), images.device
        order = epoch_permutation(len(images), settings.seed, epoch).to(dev)
        clean_loss = torch.zeros((), dtype=torch.float64, device=dev)
        adv_loss, adv_l2 = torch.zeros_like(clean_loss), torch.zeros_like(clean_loss)
        wrong = torch.zeros((), dtype=torch.long, device=dev)
        attempted = made = 0
        search_seconds = 0.0
        for start in range(0, len(images), settings.batch_size):
            idx = order[start : start + settings.batch_size]
            x, y = as_unit_float(images[idx], model.memories.dtype), labels[idx]
            k = max(1, round(self.fraction * len(idx)))
            t0 = time.perf_counter()
            adv = make_adversarials(self.search, x[:k], y[:k])
            search_seconds += time.perf_counter() - t0
            loss, out = minibatch_step(model, self.velocity, torch.cat([x, adv.images]), torch.cat([y, adv.labels]),
                                       settings.m, lr, settings.momentum)  # fmt: skip
            clean = dam_loss(out[: len(y)], y, settings.m)
            clean_loss += clean
            adv_loss += loss - clean
            adv_l2 += adv.l2.sum()
            wrong += (out[: len(y)].argmax(dim=1) != y).sum()
            attempted, made = attempted + k, made + len(adv.labels)
        return {
            "loss": float(clean_loss) / len(images),  # per clean image, as in the base run's metrics
            "adversarial_loss": float(adv_loss) / made if made else 0.0,
            "train_error": int(wrong) / len(images),
            "adversarials_attempted": attempted,
            "adversarials_made": made,
            "adversarial_fraction": made / len(images),
            "adversarial_l2_mean": float(adv_l2) / made if made else None,
            "search_seconds": search_seconds,
            "lr": lr,
            "temperature": model.temperature,
        }


def _resumed_config(
    folder: Path, config: AdversarialTrainConfig | None, base_run: str | os.PathLike[str], base_md5: str
) -> AdversarialTrainConfig:
    saved_run = read_run_config(folder)
    if "adversarial" not in saved_run:
        raise CheckpointError(f"{folder}: holds a plain training run, not an adversarial fine-tuning; resume it "
                              "with dam train --resume")  # fmt: skip
    saved = settings_from(AdversarialTrainConfig, saved_run["adversarial"], str(folder / CONFIG_FILE))
    if saved_run.get("base_model_md5") != base_md5:
        saved_base = saved_run.get("base_run")
        if saved_base and Path(saved_base) != Path(base_run).resolve():
            raise CheckpointError(f"{folder}: was fine-tuned from {saved_base}, not {Path(base_run).resolve()}; "
                                  "give that base run, or another --out")  # fmt: skip
        raise CheckpointError(f"{folder}: the base run's weights changed since this fine-tuning started")
    return resumed_settings(saved, config, folder)


def adversarial_finetune(
    base_run: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: AdversarialTrainConfig | None = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    resume: bool = False,
    force: bool = False,
    progress: bool | None = None,
    stop_after: int | None = None,
    log: Callable[[str], None] | None = None,
) -> DenseAssociativeMemory:
    """Fine-tune the DAM in ``base_run`` on clean plus boundary-adversarial images into run folder ``out``.

    ``resume=True`` continues ``out`` from its last finished epoch with its saved settings (``config`` may
    then be None, or differ only in ``epochs``).  ``stop_after`` ends after that many epochs in total,
    as a kill would.  ``progress=None`` shows a bar on a terminal or in Jupyter.
    """
    check_settings_type(config, AdversarialTrainConfig, "fine-tuning settings")
    device = resolve_device(device)
    folder = Path(out)
    if folder.resolve() == Path(base_run).resolve():
        raise ConfigError(f"--out {folder} is the base run itself; fine-tuning writes a new run folder")
    model = DenseAssociativeMemory.load(base_run, device=device)
    base, base_md5 = base_settings(base_run), model_md5(base_run)
    with OutputFolder(folder, "run folder").writing(resume=resume, force=force) as resuming:
        if resuming:
            config = _resumed_config(folder, config, base_run, base_md5)
        config = config or AdversarialTrainConfig()
        if data_dir is None and not resuming:
            data_dir = run_data_dir(base_run)
        data_dir = resolved_data_dir(data_dir, folder, resuming)
        done = (finished_epochs(base_run) or (base.epochs, base.epochs))[0]
        settings = finetune_settings(base, done, model.temperature, config, model.memories.dtype)
        data = prepare_data(settings.dataset, settings.seed, settings.train_subset, False, data_dir, device)
        # the base run's momentum is not carried over: the trainer starts from V = 0
        trainer = AdversarialTrainer(model, settings, training_search(model, config, settings.m), config.fraction)
        start_epoch = restore_trainer(trainer, folder) if resuming else 0
        run_info = {
            **run_record("dam", asdict(model.config), settings, device, data_dir, data),
            "adversarial": asdict(config),
            "base_run": str(Path(base_run).resolve()),
            "base_model_md5": base_md5,
            "base_train": asdict(base),
        }
        plan = RunPlan(folder, config.epochs, 1, f"adversarial n={settings.n}",
                       ("loss", "adversarial_fraction"))  # fmt: skip
        fit(trainer, plan, run_info, data, start_epoch=start_epoch, stop_after=stop_after, progress=progress,
            log=log)  # fmt: skip
    return model


# -- before / after ------------------------------------------------------------------------------


# What robustness_summary measures, in the reproduction's reuse key: a result measured otherwise is measured again.
ROBUSTNESS_RULE = "boundary distances over correctly classified images (dam 0.10)"


def robustness_summary(search: BoundarySearch, images: Tensor, labels: Tensor) -> dict[str, Any]:
    """Clean error and distance to the decision boundary (larger = more robust) of ``images``.

    Distances (L2, L-inf, in [0, 1] pixel units) are over the successful searches from images the model
    classifies correctly: from a misclassified image the search moves it off a wrong label, which says nothing of
    robustness (dam 0.9 counted those too).  Searches that fail (mostly: no crossing within the step budget) are
    the most robust images, so ``*_median_all`` also gives the median over every image with failures counted as
    infinitely far and misclassified images at distance 0 (None when over half fail).
    """
    with pixel_gradients_only(search.model):
        result = search(images)
    correct = result.top.cpu() == labels.cpu()
    ok = result.success.cpu() & correct
    summary: dict[str, Any] = {
        "images": len(images),
        "clean_error": float((result.top.cpu() != labels.cpu()).double().mean()),
        **{f"{k}_rate": float(getattr(result, k).cpu().double().mean()) for k in ("success", "stalled", "stuck")},
    }
    steps = result.crossing_step.cpu()[ok].double()
    summary["crossing_step_median"] = float(steps.median()) if len(steps) else None
    for norm, d in result.distances("boundary").items():
        d = d.cpu().double()
        summary[f"{norm}_mean"] = float(d[ok].mean()) if ok.any() else None
        summary[f"{norm}_median"] = float(d[ok].median()) if ok.any() else None
        censored = float(torch.where(ok, d, torch.full_like(d, math.inf)).where(correct, 0.0).median())
        summary[f"{norm}_median_all"] = censored if math.isfinite(censored) else None
    return summary


def seeded_test_subset(
    count: int, seed: int, dataset: str = "mnist", data_dir: str | os.PathLike[str] | None = None
) -> tuple[Tensor, Tensor]:
    """``count`` test images (flat, [0, 1]) chosen by a seeded permutation, with their labels."""
    x, y = load_dataset(dataset, "test", data_dir=data_dir)
    x, y, _ = seeded_subset(x, y, count, seed)
    return x.reshape(count, -1), y


def measurement_search(
    base_run: str | os.PathLike[str], search_options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The settings of the boundary search :func:`robustness_report` measures ``base_run`` and its fine-tuning with
    (its record's ``search``); bad options are one InputError here, before any compute."""
    return BoundarySearch(DenseAssociativeMemory.load(base_run), **_search_options(base_run, search_options)).settings()


def _search_options(
    base_run: str | os.PathLike[str], search_options: dict[str, Any] | None, progress: bool | None = False
) -> dict[str, Any]:
    # the BoundarySearch options of a measurement: the base run's training m unless told otherwise
    return {"m": base_settings(base_run).m, **(search_options or {}), "progress": progress}


def robustness_differs(saved: dict[str, Any], tuned_run: str | os.PathLike[str], base_run: str | os.PathLike[str],
                       *, eval_images: int, eval_seed: int, weights: bool = True,
                       search: dict[str, Any] | None = None) -> list[str]:  # fmt: skip
    """What differs between ``saved``, the robustness.json of ``tuned_run``, and a measurement of ``base_run`` with
    these settings (``weights``: both models' weights too; ``search``: :func:`measurement_search`'s settings too),
    as "name (saved, given)" items ("search (changed: ...)" for the search); [] when it would be the same."""
    base = saved.get("base") if isinstance(saved.get("base"), dict) else {}
    given = {"eval_images": eval_images, "eval_seed": eval_seed, "rule": ROBUSTNESS_RULE}
    have = {"eval_images": saved.get("eval_images"), "eval_seed": saved.get("eval_seed"), "rule": saved.get("rule")}
    if have["rule"] is None:  # dam 0.10 measured by the rule but did not record it; older dams measured otherwise
        environment = saved.get("environment") if isinstance(saved.get("environment"), dict) else {}
        have["rule"] = ROBUSTNESS_RULE if str(environment.get("dam", "")).startswith("0.10.") else "before dam 0.10"
    if weights:
        tuned = saved.get("finetuned") if isinstance(saved.get("finetuned"), dict) else {}
        given["base weights"], have["base weights"] = model_md5(base_run), base.get("model_md5")
        given["fine-tuned weights"], have["fine-tuned weights"] = model_md5(tuned_run), tuned.get("model_md5")
    differs = [f"{k} ({have[k]!r}, {given[k]!r})" for k in given if have[k] != given[k]]
    if search is not None:
        before = saved.get("search") if isinstance(saved.get("search"), dict) else {}
        keys = sorted(k for k in {*before, *search} if before.get(k) != search.get(k))
        if keys:
            differs.append(f"search ({changed(keys)})")
    return differs


def robustness_report(
    base_run: str | os.PathLike[str],
    tuned_run: str | os.PathLike[str],
    *,
    eval_images: int = 500,
    eval_seed: int = 0,
    data_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    search_options: dict[str, Any] | None = None,
    replace: bool = False,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Before / after: full test-set error and :func:`robustness_summary` of both models, on the same
    seeded test images and the probes' search settings; written to ``tuned_run/robustness.json``.

    ``tuned_run`` must be a fine-tuning of ``base_run`` (:func:`adversarial_finetune`'s run folder); it is
    locked while measured.  A measurement already there with the same settings, search and weights is returned
    as it is; one of other weights (the run trained on) is measured again with a warning; one made with other
    settings is refused unless ``replace`` (the CLI's ``--remeasure``), which replaces it with a warning.
    ``progress=None`` shows the searches' bars on a terminal or in Jupyter.
    """
    base = base_settings(base_run)
    tuned_record = read_run_config(tuned_run)
    if tuned_record.get("base_model_md5") != model_md5(base_run):
        raise ConfigError(f"{tuned_run}: not a fine-tuning of {base_run} (adversarial_finetune writes one; "
                          "its config.json records the base model's weights)")  # fmt: skip
    search = measurement_search(base_run, search_options)
    options = _search_options(base_run, search_options, progress)
    path = Path(tuned_run) / ROBUSTNESS_FILE
    with OutputFolder(tuned_run, "run folder").lock():
        saved = read_json(path)
        if isinstance(saved, dict):
            how = {"eval_images": eval_images, "eval_seed": eval_seed, "search": search}
            differs = robustness_differs(saved, tuned_run, base_run, **how, weights=False)
            if differs and not replace:
                raise InputError(f"{path}: measured otherwise (saved, given): {'; '.join(differs)}; give the same "
                                 "settings, or replace=True (the CLI's --remeasure) to measure again")  # fmt: skip
            stale = robustness_differs(saved, tuned_run, base_run, **how)  # settings, search and weights
            if not stale:
                return saved
            logger.warning("%s: measured otherwise (saved, given): %s; measuring again", path, "; ".join(stale))
        return _measure(base_run, tuned_run, eval_images, eval_seed, base.dataset, data_dir, device, options, path)


def _measure(base_run: str | os.PathLike[str], tuned_run: str | os.PathLike[str], eval_images: int, eval_seed: int,
             dataset: str, data_dir: str | os.PathLike[str] | None, device: str | torch.device,
             options: dict[str, Any], path: Path) -> dict[str, Any]:  # fmt: skip
    data_dir = data_dir if data_dir is not None else run_data_dir(base_run)
    x, y = seeded_test_subset(eval_images, eval_seed, dataset, data_dir)
    x_all, y_all = load_dataset(dataset, "test", data_dir=data_dir)
    report: dict[str, Any] = {
        "eval_images": eval_images, "eval_seed": eval_seed, "images_md5": tensor_md5(x), "rule": ROBUSTNESS_RULE,
    }  # fmt: skip
    for key, run in (("base", base_run), ("finetuned", tuned_run)):
        t0 = time.perf_counter()
        model = DenseAssociativeMemory.load(run, device=device)
        report[key] = {
            "run": str(Path(run).resolve()), "model_md5": model_md5(run),
            "test_error": error_rate(model, x_all.reshape(len(x_all), -1).to(device), y_all.to(device)),
            **robustness_summary(search := BoundarySearch(model, **options), x.to(device), y.to(device)),
            "seconds": time.perf_counter() - t0,
        }  # fmt: skip
    report["search"] = search.settings()  # the same settings for both models
    report["environment"] = environment_info()
    atomic_write_json(path, report)
    return report
