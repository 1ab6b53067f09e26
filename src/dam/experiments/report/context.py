"""The data of the report's page: the measurements of a reproduction folder (for the verdicts) and, per
section, the plain values its template shows (strings, numbers, lists and dicts; never HTML).

It reads only what ``dam reproduce`` wrote (OUT/reproduce.json, stages.json, runs/, probes/, beyond/).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dam.experiments.report.claims import Claim, Measurements
from dam.experiments.report.formatting import (
    VERDICT_CLASS,
    ReportDataError,
    Verdict,
    claim,
    figure,
    fmt,
    fmt_or,
    pct,
    read_json,
    reading,
    require_numbers,
    table,
    text,
)
from dam.experiments.report.past_paper import past_paper_context


def _is_name(value: Any) -> bool:
    """A model name usable as a folder name under runs/ and probes/ (a crafted reproduce.json could name
    anything: a path elsewhere is no model of this reproduction)."""
    return isinstance(value, str) and value not in ("", ".", "..") and Path(value).name == value


def gather(out: Path) -> Measurements:
    """Measurements of a reproduction folder, computing the picture-statistics from the saved probe results."""
    from dam.model import DenseAssociativeMemory
    from dam.probes.boundary import BoundaryResult
    from dam.probes.likeness import class_means, deformation_likeness, image_likeness, memory_likeness
    from dam.probes.rubbish import RubbishResult
    from dam.probes.runner import load_result

    with reading(out / "reproduce.json"):
        meta = read_json(out / "reproduce.json") or {}
        # Models still training (or never started) have no weights yet: their claims come out "not measured".
        names = (meta.get("preset") or {}).get("models", [])
        models = [n for n in names if _is_name(n) and (out / "runs" / n / "model.safetensors").exists()]
        data_dir = (meta.get("data") or {}).get("folder")
    probes = out / "probes"
    m = Measurements(models=models)
    m.adversarial = _transfer_table(probes / "adversarial_transfer.json")
    m.rubbish = _transfer_table(probes / "rubbish_transfer.json")
    m.rubbish_calibrated = _transfer_table(probes / "rubbish_calibrated_transfer.json")
    if not models:
        return m
    from dam.data import load_dataset

    with reading(out / "reproduce.json", "data.folder"):
        x, y = load_dataset("mnist", "test", data_dir=data_dir)
    means = class_means(x, y)
    for name in models:
        with reading(out / "runs" / name / "evaluation.json"):
            evaluation = read_json(out / "runs" / name / "evaluation.json")
            if evaluation:
                require_numbers(evaluation, "error")
                m.clean_error[name] = evaluation["error"]
        m.memory[name] = memory_likeness(DenseAssociativeMemory.load(out / "runs" / name), means)
        folder = probes / name
        if (cal := read_json(folder / "calibration.json")) is not None:
            with reading(folder / "calibration.json"):
                require_numbers(cal, "beta_sm", none_ok=True)
                require_numbers(cal.get("binned_error_calibrated") or {}, "error", none_ok=True)  # empty bins
                require_numbers(cal.get("binned_error_calibrated") or {}, "count")
            m.calibration[name] = cal
        if (summary := read_json(folder / "boundary.json")) is not None:
            with reading(folder / "boundary.json"):
                require_numbers(summary, "success_rate")
                require_numbers(summary, "l2_mean", none_ok=True)  # None: no search crossed
            m.boundary[name] = summary
            r = load_result(BoundaryResult, folder / "boundary")
            ok = r.success.bool()
            if ok.any():
                m.deformation_likeness[name] = deformation_likeness(
                    r.clean[ok], r.boundary[ok], r.top[ok], r.second[ok], means
                )
        if (summary := read_json(folder / "rubbish.json")) is not None:
            m.rubbish_search[name] = summary
            r = load_result(RubbishResult, folder / "rubbish")
            m.rubbish_likeness[name] = image_likeness(r.images, r.targets, means)
    return m


def _transfer_table(path: Path) -> dict[str, Any] | None:
    """A transfer table (or None), checked: the verdicts compute with its numbers."""
    t = read_json(path)
    if t is not None:
        with reading(path):
            require_numbers(t, "error", "mean_confidence", "clean_error")
            if not isinstance(t["models"], list):
                raise ReportDataError(f"'models': expected a list, found {t['models']!r}")
    return t


def _transfer_rows(t: dict[str, Any], key: str) -> list[list[str]]:
    return [[f"{text(name)} set", *(pct(v) for v in row)] for name, row in zip(t["models"], t[key], strict=True)]


def _claims(claims: list[Claim], figure_name: str) -> list[dict[str, str]]:
    return [claim(c) for c in claims if c.figure == figure_name]


def _setup(out: Path, m: Measurements, meta: dict[str, Any], stages: dict[str, Any]) -> dict[str, Any]:
    from dam.io import read_jsonl
    from dam.runs import read_run_config

    config_rows = []
    for name in m.models:
        with reading(out / "runs" / name / "config.json"):
            t = read_run_config(out / "runs" / name).get("train", {})
            row = [name, t.get("n"), t.get("m"), t.get("num_memories"),
                   f"{text(t.get('temperature_start'))} -> {text(t.get('temperature_end'))}", t.get("epochs"),
                   t.get("batch_size"), t.get("lr"), t.get("lr_decay"), t.get("momentum")]  # fmt: skip
        with reading(out / "runs" / name / "evaluation.json"):
            row.append(pct(m.clean_error[name]) if name in m.clean_error else "-")
        with reading(out / "runs" / name / "metrics.jsonl"):
            seconds = sum(r.get("seconds", 0) for r in read_jsonl(out / "runs" / name / "metrics.jsonl"))
            row.append(fmt(seconds / 60, ".1f"))
        config_rows.append(row)
    header = ["model", "n", "m", "K", "T", "epochs", "batch", "eps0", "f", "p", "test error", "training minutes"]
    preset = meta.get("preset") or {}
    data = meta.get("data") or {}
    with reading(out / "reproduce.json"):
        meta_rows = [
            ["preset", preset.get("name")],
            ["seed", preset.get("seed")],
            ["test images probed", preset.get("images")],
            ["rubbish images per class", preset.get("per_class")],
            ["device (of the last run; per stage below)", meta.get("device")],
            ["data folder", data.get("folder")],
        ]
        meta_rows += [[f"MD5 {text(k)}", v] for k, v in (data.get("md5") or {}).items()]
        meta_rows += [[k, v] for k, v in (meta.get("environment") or {}).items() if v is not None]
    with reading(out / "stages.json"):
        stage_rows = [
            [k, fmt(v["seconds"], ".1f"), "reused its earlier outputs" if v.get("reused") else "ran",
             v.get("finished_at", ""), v.get("device", "")]
            for k, v in sorted(stages.items(), key=lambda kv: kv[1].get("finished_at", ""))
        ]  # fmt: skip
        stage_rows.append(["total of the stages", fmt(sum(v["seconds"] for v in stages.values()), ".1f"), "", "", ""])
    return {
        "models": table(header, config_rows, "models"),
        "run": table(["", "value"], meta_rows, "run", 2),
        "stages": table(["stage", "seconds", "when last needed", "finished at", "device"], stage_rows, "stages", 1),
    }


def _fig2(m: Measurements, figs: Path) -> dict[str, Any]:
    rows = [
        [n, fmt(m.memory[n]["prototype_correlation"], ".3f"), pct(m.memory[n]["single_class_fraction"])]
        for n in m.models
        if n in m.memory
    ]
    header = ["model", "best correlation with a class-mean image", "single-class memories"]
    return {
        "table": table(header, rows, "memories"),
        "figures": [figure(figs / f"memories_{n}.png", f"memories of {n}") for n in m.models],
    }


def _fig3(out: Path, m: Measurements, figs: Path) -> dict[str, Any]:
    rows = []
    for n, s in m.rubbish_search.items():
        with reading(out / "probes" / n / "rubbish.json"):
            rows.append([n, pct(s["success_rate"]), pct(s["stalled_rate"]), pct(s["stuck_rate"]),
                         fmt_or(m.rubbish_likeness.get(n), ".3f")])  # fmt: skip
    header = ["model", "reached target", "stalled (zero gradient)", "stuck", "correlation with target mean"]
    return {
        "table": table(header, rows, "rubbish searches"),
        "figures": [figure(figs / f"rubbish_{n}.png", f"rubbish images of {n}") for n in m.models],
    }


def _fig4(out: Path, m: Measurements, figs: Path) -> dict[str, Any]:
    rows = []
    for n, s in m.boundary.items():
        with reading(out / "probes" / n / "boundary.json"):
            steps = s.get("crossing_step_median")
            rows.append([n, pct(s["success_rate"]), pct(s["stalled_rate"]), fmt_or(s["l2_mean"], ".2f"),
                         fmt_or(s["linf_mean"], ".3f"), "-" if steps is None else fmt(steps, ".0f"),
                         fmt_or(m.deformation_likeness.get(n), ".3f")])  # fmt: skip
    header = ["model", "boundary found", "stalled", "mean L2", "mean Linf", "median steps", "deformation correlation"]
    return {
        "table": table(header, rows, "boundary searches"),
        "figures": [figure(figs / f"boundary_{n}.png", f"decision-boundary triplets of {n}") for n in m.models],
    }


def _fig5(out: Path, m: Measurements, figs: Path) -> dict[str, Any]:
    t = m.adversarial
    if not t:
        return {"table": None, "examples": None, "figure": figure(figs / "adversarial_transfer.png", "Fig. 5")}
    with reading(out / "probes" / "adversarial_transfer.json"):
        rows = [*_transfer_rows(t, "error"), ["clean test images", *(pct(v) for v in t["clean_error"])]]
        return {
            "table": table(["set made by \\ classified by", *t["models"]], rows, "adversarial transfer"),
            "examples": text(t["examples"]),
            "figure": figure(figs / "adversarial_transfer.png", "adversarial transfer: error rates"),
        }


def _fig6(out: Path, m: Measurements, figs: Path) -> dict[str, Any]:
    tables = []
    for key, t, stem in (
        ("beta_sm = 3.2", m.rubbish, "rubbish_transfer"),
        ("each model's calibrated beta_sm", m.rubbish_calibrated, "rubbish_calibrated_transfer"),
    ):
        if t:
            with reading(out / "probes" / f"{stem}.json"):
                header = ["set made by \\ classified by", *t["models"]]
                rows = _transfer_rows(t, "mean_confidence")
            tables.append(
                {
                    "key": key,
                    "table": table(header, rows, f"rubbish transfer {key}"),
                    "figure": figure(figs / f"{stem}.png", f"rubbish transfer, {key}"),
                }
            )
    return {
        "tables": tables,
        # Without any table the figure is still asked for: the browser check then reports it missing.
        "missing": None if m.rubbish else figure(figs / "rubbish_transfer.png", "Fig. 6"),
        "no_calibrated": bool(m.rubbish) and not m.rubbish_calibrated,
    }


def _fig7(out: Path, m: Measurements, figs: Path) -> dict[str, Any]:
    rows = []
    for n, c in m.calibration.items():
        with reading(out / "probes" / n / "calibration.json"):
            beta = c.get("beta_sm")
            shown = fmt(beta, ".2f") if beta is not None else f"none: {text(c.get('calibration_error'))}"
            rows.append([n, shown, fmt(c["accuracy"], ".4f"), c.get("images", "")])
    return {
        "table": table(["model", "calibrated beta_sm", "accuracy", "images"], rows, "calibration"),
        "figure": figure(figs / "confidence_bins.png", "error rate per confidence bin"),
    }


SUMMARY_HEADER = ["figure", "verdict", "paper", "measured", "why it differs here"]


def report_context(out: Path, m: Measurements, claims: list[Claim]) -> dict[str, Any]:
    """Every value the page template shows, as plain data."""
    with reading(out / "reproduce.json"):
        meta = read_json(out / "reproduce.json") or {}
        preset = meta.get("preset") or {}
        name, description = preset.get("name"), preset.get("description", "")
    with reading(out / "stages.json"):
        stages = read_json(out / "stages.json") or {}
        if not isinstance(stages, dict):
            raise TypeError("expected an object of stages")
    figs = out / "probes" / "figures"
    counts = {v: sum(c.verdict == v for c in claims) for v in VERDICT_CLASS}
    setup = _setup(out, m, meta, stages)
    summary_rows = [[c.figure, Verdict(c.verdict), c.statement, c.measured, c.limit] for c in claims]
    return {
        "preset": {"name": text(name), "description": text(description), "quick": name == "quick"},
        "counts": {
            "agrees": counts["agrees"],
            "partly": counts["partly"],
            "differs": counts["differs"],
            "not_measured": counts["not measured"],
            "total": len(claims),
            "limited": sum(bool(c.limit) for c in claims),
        },
        "setup": {**setup, "claims": _claims(claims, "Setup")},
        "summary": {"table": table(SUMMARY_HEADER, summary_rows, "verdicts", 5)},
        "fig2": {**_fig2(m, figs), "claims": _claims(claims, "Fig. 2")},
        "fig3": {**_fig3(out, m, figs), "claims": _claims(claims, "Fig. 3")},
        "fig4": {**_fig4(out, m, figs), "claims": _claims(claims, "Fig. 4")},
        "fig5": {**_fig5(out, m, figs), "claims": _claims(claims, "Fig. 5")},
        "fig6": {**_fig6(out, m, figs), "claims": _claims(claims, "Fig. 6")},
        "fig7": {**_fig7(out, m, figs), "claims": _claims(claims, "Fig. 7")},
        "past_paper": past_paper_context(out, meta),
    }
