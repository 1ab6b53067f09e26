"""Probes over run folders, with their outputs on disk: what the ``dam rubbish|boundary|calibrate|transfer``
commands call.  Each model's result is written atomically once finished and reused when present, so a
killed job resumes without redoing finished models."""

from __future__ import annotations

import logging
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dam.data import load_dataset
from dam.environment import environment_info
from dam.errors import InputError, changed
from dam.io import atomic_write_bytes, atomic_write_json
from dam.model import DenseAssociativeMemory
from dam.probes.boundary import BoundaryResult, BoundarySearch
from dam.probes.confidence import PAPER_BETA_SM, calibrate_beta_sm, confidence_binned_error, model_outputs
from dam.probes.rubbish import RubbishResult, RubbishSearch
from dam.probes.transfer import adversarial_table, rubbish_table, save_table
from dam.results import key_matches, read_json, result_key, tensor_md5
from dam.runs import model_md5, model_name

logger = logging.getLogger(__name__)


def save_result(result: Any, path: Path, summary: dict[str, Any]) -> None:
    """A probe result dataclass as safetensors (tensors only, no pickle) plus a JSON summary beside it."""
    from safetensors.torch import save as st_save

    tensors = {f.name: getattr(result, f.name).detach().cpu().contiguous() for f in fields(result)}
    # the summary (which holds the reuse key) goes first and comes back last: a kill in between, while a result
    # is replaced, leaves no key, so the new tensors are never taken for the old result
    path.with_suffix(".json").unlink(missing_ok=True)
    atomic_write_bytes(path.with_suffix(".safetensors"), st_save(tensors))
    atomic_write_json(path.with_suffix(".json"), summary)


def load_result(cls: type, path: Path) -> Any:
    from safetensors.torch import load_file

    tensors = load_file(str(path.with_suffix(".safetensors")))
    return cls(**{f.name: tensors[f.name] for f in fields(cls)})


def _saved(path: Path) -> dict[str, Any] | None:
    if not path.with_suffix(".safetensors").exists():
        return None
    saved = read_json(path.with_suffix(".json"))
    return saved if isinstance(saved, dict) else None


def _done(
    path: Path, search: BoundarySearch | RubbishSearch, inputs: dict[str, Any], replace: bool, quiet: bool = False
) -> bool:
    """Whether a finished result of these search settings and inputs is on disk (then it is reused).

    A finished result made otherwise (other search settings, or other inputs: the model's weights, the
    images, the rubbish seed or count) is never replaced silently: refused, or with ``replace`` (the CLI's
    ``--force``, a pipeline's own folder) replaced with a warning (not in the ``quiet`` look before the work:
    the replacement itself warns).
    """
    saved = _saved(path)
    if saved is None:
        return False
    if not key_matches(saved.get("search"), search.settings()):
        return _replaced(path.with_suffix(".json"), f"other search settings ({saved.get('search')})", replace, quiet)
    return _same_inputs(path.with_suffix(".json"), saved, inputs, replace, quiet)


def _same_inputs(file: Path, saved: dict[str, Any], inputs: dict[str, Any], replace: bool, quiet: bool = False) -> bool:
    if key_matches({k: saved.get(k) for k in inputs}, inputs):
        return True
    now = result_key(**inputs)
    what = changed(sorted(k for k in now if saved.get(k) != now[k]))
    return _replaced(file, f"other inputs ({what})", replace, quiet)


def _replaced(file: Path, how: str, replace: bool, quiet: bool = False) -> bool:
    """False (the result is made again) when ``replace``, with a warning; else the one-line refusal."""
    if not replace:
        raise InputError(f"{file} holds a finished result made with {how}; use another --out, or --force "
                         "(replace=True) to replace it")  # fmt: skip
    if not quiet:
        logger.warning("replacing %s, made with %s", file, how)
    return False


def _matches(path: Path, search: BoundarySearch | RubbishSearch, inputs: dict[str, Any]) -> bool:
    """Whether :func:`_done` would reuse the result; a result made otherwise is a plain mismatch here."""
    saved = _saved(path)
    return (
        saved is not None
        and key_matches(saved.get("search"), search.settings())
        and key_matches({k: saved.get(k) for k in inputs}, inputs)
    )


def crossed_mean(values: Tensor) -> float | None:
    """Mean over the images whose search crossed the boundary (the others are NaN); None when none did."""
    found = values[~values.isnan()]
    return float(found.mean()) if len(found) else None


def _boundary_inputs(images: Tensor, weights: str) -> dict[str, Any]:
    return {"images": len(images), "images_md5": tensor_md5(images), "model_md5": weights}


def _rubbish_inputs(seed: int, per_class: int, weights: str) -> dict[str, Any]:
    return {"seed": seed, "per_class": per_class, "model_md5": weights}


def _summary(run: str | os.PathLike[str], search: Any, result: Any, **extra: Any) -> dict[str, Any]:
    """What every probe's JSON holds: the model, the search's settings, how the search went, versions."""
    settings = search.settings()
    rates = {
        f"{k}_rate": float(getattr(result, k).float().mean()) for k in ("success", "converged", "stalled", "stuck")
    }
    return {"run": str(run), "model": model_name(run), "search": settings, **rates, **extra,
            "environment": environment_info()}  # fmt: skip


def run_rubbish(
    run: str | os.PathLike[str],
    out: Path,
    options: dict[str, Any],
    per_class: int,
    seed: int,
    device: str = "cpu",
    *,
    replace: bool = False,
    check_only: bool = False,
) -> RubbishResult | None:
    """Rubbish images of one run, ``per_class`` per class from seeded noise; ``options`` are
    :class:`RubbishSearch` settings (m: the run's training m unless given).  Reused when done; a result
    made otherwise is refused unless ``replace``.  ``check_only``: refuse (or not) and return None, computing
    nothing, so that a command over several runs refuses before it makes any run's result."""
    path = out / model_name(run) / "rubbish"
    inputs = _rubbish_inputs(seed, per_class, model_md5(run))
    model = DenseAssociativeMemory.load(run, device=device)
    search = RubbishSearch(model, **options)
    if _done(path, search, inputs, replace, check_only):
        return None if check_only else load_result(RubbishResult, path)
    if check_only:
        return None
    targets = torch.arange(10).repeat_interleave(per_class)
    result = search(targets, torch.Generator().manual_seed(seed))
    summary = _summary(run, search, result, **inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_result(result, path, summary)
    return result


def run_boundary(
    run: str | os.PathLike[str],
    out: Path,
    options: dict[str, Any],
    images: Tensor,
    labels: Tensor,
    device: str = "cpu",
    stem: str = "boundary",
    *,
    replace: bool = False,
    check_only: bool = False,
) -> BoundaryResult | None:
    """Boundary images of ``images`` for one run; ``options`` are :class:`BoundarySearch` settings (m: the
    run's training m unless given).  Reused when done with the same settings, weights and images; a result
    made otherwise is refused unless ``replace``.  ``check_only`` as in :func:`run_rubbish`."""
    path = out / model_name(run) / stem
    inputs = _boundary_inputs(images, model_md5(run))
    model = DenseAssociativeMemory.load(run, device=device)
    search = BoundarySearch(model, **options)
    if _done(path, search, inputs, replace, check_only):
        return None if check_only else load_result(BoundaryResult, path)
    if check_only:
        return None
    result = search(images)
    d = result.distances("boundary")
    crossed = result.crossing_step[result.crossing_step >= 0].float()
    summary = _summary(
        run, search, result, **inputs,
        crossing_step_median=float(crossed.median()) if len(crossed) else None,
        l2_mean=crossed_mean(d["l2"]), linf_mean=crossed_mean(d["linf"]),
        clean_error=float((result.top.cpu() != labels.cpu()).float().mean()),
    )  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    save_result(result, path, summary)
    return result


def run_calibration(
    run: str | os.PathLike[str],
    out: Path,
    images: Tensor,
    labels: Tensor,
    device: str = "cpu",
    *,
    replace: bool = False,
    check_only: bool = False,
) -> dict[str, Any] | None:
    """Calibrated beta_sm and binned errors of one run on ``images``; reused when done, a result made from
    other images or weights refused unless ``replace``.  ``check_only`` as in :func:`run_rubbish`."""
    path = out / model_name(run) / "calibration.json"
    saved = read_json(path)  # None when missing or unreadable: then it is made again
    inputs = {"images_md5": tensor_md5(images), "model_md5": model_md5(run)}
    if isinstance(saved, dict) and _same_inputs(path, saved, inputs, replace, check_only):
        return None if check_only else saved
    if check_only:
        return None
    model = DenseAssociativeMemory.load(run, device=device)
    outputs = model_outputs(model, images)
    result = {
        "run": str(run), "model": model_name(run), "beta_sm": None, "images": len(images), **inputs,
        "accuracy": float((outputs.argmax(dim=1) == labels).double().mean()),
        "binned_error_paper_beta": confidence_binned_error(outputs, labels, PAPER_BETA_SM),
    }  # fmt: skip
    try:
        beta = calibrate_beta_sm(None, None, labels, outputs=outputs)
    except ValueError as exc:  # accuracy at chance or 100%: no beta_sm exists; say so rather than stop
        result["calibration_error"] = str(exc)
    else:
        result["beta_sm"] = beta
        result["binned_error_calibrated"] = confidence_binned_error(outputs, labels, beta)
    atomic_write_json(path, result)
    return result


def test_images(images: int, data_dir: str | None, dataset: str = "mnist") -> tuple[Tensor, Tensor]:
    """The first ``images`` test images of ``dataset`` (the runs' data set), flat, with their labels."""
    x, y = load_dataset(dataset, "test", data_dir=data_dir)
    if not 1 <= images <= len(x):
        raise InputError(f"images must be between 1 and {len(x)}, got {images}")
    return x[:images].reshape(-1, 784), y[:images]


def run_model_probes(
    run: str | os.PathLike[str],
    out: Path,
    images: Tensor,
    labels: Tensor,
    *,
    per_class: int = 100,
    seed: int = 0,
    search_options: dict[str, Any] | None = None,
    device: str = "cpu",
    converged_examples: int = 0,
    replace: bool = False,
) -> tuple[BoundaryResult, RubbishResult, dict[str, Any]]:
    """One model's probes: boundary images of ``images``, rubbish from noise, calibration; reused from ``out``.

    ``search_options`` (eps, max_steps, clip, ...) go to both searches; m is the run's training m.
    ``converged_examples``: also follow the first this many images past the crossing until C^second
    converges (``boundary_converged``), for the third image of Fig. 4's triplets.  A result in ``out``
    made otherwise is refused, or with ``replace`` made again (with a warning).
    """
    kwargs = dict(search_options or {})  # m: the run's training m (the loaded model's loss_power) unless given
    if converged_examples:
        n = converged_examples
        run_boundary(run, out, {**kwargs, "until": "converged"}, images[:n], labels[:n], device,
                     stem="boundary_converged", replace=replace)  # fmt: skip
    boundary = run_boundary(run, out, kwargs, images, labels, device, replace=replace)
    rubbish = run_rubbish(run, out, kwargs, per_class, seed, device, replace=replace)
    calibration = run_calibration(run, out, images, labels, device, replace=replace)
    return boundary, rubbish, calibration


def model_probes_done(
    run: str | os.PathLike[str],
    out: Path,
    images: Tensor,
    *,
    per_class: int,
    seed: int,
    search_options: dict[str, Any] | None = None,
    converged_examples: int = 0,
) -> bool:
    """Whether :func:`run_model_probes` would reuse every result (same settings, weights and inputs)."""
    kwargs = dict(search_options or {})  # m: the run's training m (the loaded model's loss_power) unless given
    folder, weights = out / model_name(run), model_md5(run)
    model = DenseAssociativeMemory.load(run)
    wanted = [
        (folder / "boundary", BoundarySearch(model, **kwargs), _boundary_inputs(images, weights)),
        (folder / "rubbish", RubbishSearch(model, **kwargs), _rubbish_inputs(seed, per_class, weights)),
    ]
    if converged_examples:
        search = BoundarySearch(model, **{**kwargs, "until": "converged"})
        wanted.append((folder / "boundary_converged", search, _boundary_inputs(images[:converged_examples], weights)))
    calibration = folder / "calibration.json"
    if not calibration.exists():
        return False
    cal = read_json(calibration)  # unreadable or damaged: made again
    if not isinstance(cal, dict) or cal.get("images_md5") != tensor_md5(images) or cal.get("model_md5") != weights:
        return False
    return all(_matches(path, search, inputs) for path, search, inputs in wanted)


def transfer_tables(
    runs: list[str], out: Path, images: Tensor, labels: Tensor, *, device: str = "cpu"
) -> dict[str, Any]:
    """Both transfer tables from the per-model probe outputs in ``out`` (run :func:`run_model_probes` first)."""
    models = {model_name(r): DenseAssociativeMemory.load(r, device=device) for r in runs}
    sets = {model_name(r): load_result(BoundaryResult, out / model_name(r) / "boundary").past for r in runs}
    rsets = {model_name(r): load_result(RubbishResult, out / model_name(r) / "rubbish").images for r in runs}
    betas = {model_name(r): run_calibration(r, out, images, labels, device)["beta_sm"] for r in runs}
    tables = {
        "adversarial": adversarial_table(models, sets, labels, images),
        "rubbish": rubbish_table(models, rsets),
    }
    if all(b is not None for b in betas.values()):  # else some model has no calibrated beta_sm (see its JSON)
        tables["rubbish_calibrated"] = rubbish_table(models, rsets, betas)
    else:  # a table from an earlier call would otherwise be shown beside the new ones
        for suffix in (".json", ".csv"):
            (out / f"rubbish_calibrated_transfer{suffix}").unlink(missing_ok=True)
    for stem, table in tables.items():
        save_table(table, out, f"{stem}_transfer")
    return tables


def run_transfer(
    runs: list[str],
    out: Path,
    *,
    images: int = 10000,
    per_class: int = 100,
    seed: int = 0,
    data_dir: str | None = None,
    search_options: dict[str, Any] | None = None,
    device: str = "cpu",
    dataset: str = "mnist",
    replace: bool = False,
) -> dict[str, Any]:
    """Both transfer tables for ``runs``; each model's searches run first, or are reused from ``out``."""
    x, y = test_images(images, data_dir, dataset)
    for r in runs:
        run_model_probes(r, out, x, y, per_class=per_class, seed=seed, search_options=search_options, device=device,
                         replace=replace)  # fmt: skip
    return transfer_tables(runs, out, x, y, device=device)
