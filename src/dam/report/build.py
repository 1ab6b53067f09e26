"""The reproduction report: one self-contained HTML page (figures embedded as PNG data) with, per figure of
the paper, the picture, the measured table, the paper's statement and a verdict; JSON/CSV tables and PNGs
are copied beside it.

It reads only what ``dam reproduce`` wrote (OUT/reproduce.json, stages.json, runs/, probes/), so it can be
rebuilt at any time with ``dam report OUT``.
"""

from __future__ import annotations

import base64
import html
import json
import shutil
from pathlib import Path
from typing import Any

from dam.report.claims import Claim, Measurements, evaluate_claims

VERDICT_CLASS = {"agrees": "ok", "partly": "partly", "differs": "bad", "not measured": "na"}


def _read(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def gather(out: Path) -> Measurements:
    """Measurements of a reproduction folder, computing the picture-statistics from the saved probe results."""
    from dam.data import load_dataset
    from dam.model import DenseAssociativeMemory
    from dam.probes.boundary import BoundaryResult
    from dam.probes.likeness import class_means, deformation_likeness, image_likeness, memory_likeness
    from dam.probes.rubbish import RubbishResult
    from dam.probes.runner import load_result

    meta = _read(out / "reproduce.json") or {}
    # Models still training (or never started) have no weights yet: their claims come out "not measured".
    names = (meta.get("preset") or {}).get("models", [])
    models = [n for n in names if (out / "runs" / n / "model.safetensors").exists()]
    probes = out / "probes"
    m = Measurements(models=models)
    m.adversarial = _read(probes / "adversarial_transfer.json")
    m.rubbish = _read(probes / "rubbish_transfer.json")
    m.rubbish_calibrated = _read(probes / "rubbish_calibrated_transfer.json")
    data_dir = (meta.get("data") or {}).get("folder")
    x, y = load_dataset("mnist", "test", data_dir=data_dir)
    means = class_means(x, y)
    for name in models:
        evaluation = _read(out / "runs" / name / "evaluation.json")
        if evaluation:
            m.clean_error[name] = evaluation["error"]
        m.memory[name] = memory_likeness(DenseAssociativeMemory.load(out / "runs" / name), means)
        folder = probes / name
        if (cal := _read(folder / "calibration.json")) is not None:
            m.calibration[name] = cal
        if (summary := _read(folder / "boundary.json")) is not None:
            m.boundary[name] = summary
            r = load_result(BoundaryResult, folder / "boundary")
            ok = r.success.bool()
            if ok.any():
                m.deformation_likeness[name] = deformation_likeness(
                    r.clean[ok], r.boundary[ok], r.top[ok], r.second[ok], means
                )
        if (summary := _read(folder / "rubbish.json")) is not None:
            m.rubbish_search[name] = summary
            r = load_result(RubbishResult, folder / "rubbish")
            m.rubbish_likeness[name] = image_likeness(r.images, r.targets, means)
    return m


# -- HTML ------------------------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f3f3f3; } td.text, th.text { text-align: left; }
.verdict { font-weight: 600; padding: 0.1em 0.5em; border-radius: 0.3em; white-space: nowrap; }
.ok { background: #d9f2d9; color: #185c18; } .bad { background: #f8d7d7; color: #8a1c1c; }
.partly { background: #fdf0cc; color: #6b5200; } .na { background: #e8e8e8; color: #555; }
.claim { background: #fafafa; border-left: 4px solid #bbb; padding: 0.5em 0.9em; margin: 0.8em 0; }
.rule { color: #666; font-size: 0.85em; } figure { margin: 1em 0; } figcaption { color: #555; font-size: 0.9em; }
.grid { display: grid; grid-template-columns: 1fr 1fr; gap: 0.5em 1.2em; }
img { max-width: 100%; border: 1px solid #eee; } .meta td { text-align: left; } code { font-size: 0.9em; }
"""

# Runs in the browser: marks the page incomplete if an image failed to decode or a required table is empty.
# `dam report --check` (headless Chromium) reads the mark.
CHECK_JS = """
window.addEventListener('load', function () {
  var problems = [];
  document.querySelectorAll('img').forEach(function (img) {
    if (!img.complete || img.naturalWidth === 0 || img.getBoundingClientRect().height < 20)
      problems.push('image not rendered: ' + (img.alt || img.src.slice(0, 40)));
  });
  document.querySelectorAll('table[data-required]').forEach(function (t) {
    if (t.querySelectorAll('tbody tr').length === 0) problems.push('empty table: ' + t.dataset.required);
  });
  document.querySelectorAll('section[data-figure]').forEach(function (s) {
    if (s.querySelectorAll('img').length === 0) problems.push('no figure in section ' + s.id);
  });
  document.body.setAttribute('data-render-check', problems.length ? problems.join(' | ') : 'ok');
  document.body.setAttribute('data-page-height', String(document.documentElement.scrollHeight));
});
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _img(path: Path, alt: str) -> str:
    if not path.exists():
        # Left broken on purpose, so that the browser check reports it rather than the page hiding it.
        return f'<img alt="{_e(alt)}" src="missing:{_e(path.name)}">'
    data = base64.b64encode(path.read_bytes()).decode()
    image = f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'
    return f"<figure>{image}<figcaption>{_e(alt)}</figcaption></figure>"


def _grid(items: Any) -> str:
    return '<div class="grid">' + "".join(items) + "</div>"


class Verdict(str):
    """A table cell shown as a coloured verdict badge."""


def _cell(value: Any) -> str:
    if isinstance(value, Verdict):
        return f'<span class="verdict {VERDICT_CLASS[str(value)]}">{_e(value)}</span>'
    return _e(value)


def _table(header: list[str], rows: list[list[Any]], name: str, text_cols: int = 1) -> str:
    head = "".join(f'<th class="{"text" if i < text_cols else ""}">{_e(h)}</th>' for i, h in enumerate(header))
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{"text" if i < text_cols else ""}">{_cell(c)}</td>' for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f'<table data-required="{_e(name)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _claims_html(claims: list[Claim]) -> str:
    return "".join(
        f'<div class="claim"><span class="verdict {VERDICT_CLASS[c.verdict]}">{_e(c.verdict)}</span> '
        f"<b>Paper:</b> {_e(c.statement)}<br><b>Measured:</b> {_e(c.measured)}"
        f'<div class="rule">Verdict rule: {_e(c.rule)}</div></div>'
        for c in claims
    )


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _transfer_rows(table: dict[str, Any], key: str) -> list[list[Any]]:
    return [[f"{name} set", *(_pct(v) for v in row)] for name, row in zip(table["models"], table[key], strict=True)]


def _section(sid: str, title: str, body: str, claims: list[Claim], figure: str | None) -> str:
    relevant = [c for c in claims if c.figure == figure] if figure else []
    attr = ' data-figure="1"' if sid.startswith("fig") else ""  # the browser check demands a figure here
    return f'<section id="{sid}"{attr}><h2>{_e(title)}</h2>{_claims_html(relevant)}{body}</section>'


def render(out: Path, m: Measurements, claims: list[Claim]) -> str:
    meta = _read(out / "reproduce.json") or {}
    stages = _read(out / "stages.json") or {}
    preset = meta.get("preset", {})
    figs = out / "probes" / "figures"
    models = m.models
    env = meta.get("environment", {})

    verdicts = {v: sum(c.verdict == v for c in claims) for v in VERDICT_CLASS}
    parts = [
        f"<h1>Dense Associative Memory is Robust to Adversarial Inputs: reproduction</h1>"
        f"<p>Krotov &amp; Hopfield (2018), redone by <code>dam reproduce --preset {_e(preset.get('name'))}</code>. "
        f"{_e(preset.get('description', ''))}</p>"
        f"<p><b>{verdicts['agrees']}</b> of the paper's {len(claims)} checked statements agree, "
        f"{verdicts['partly']} partly, {verdicts['differs']} differ, {verdicts['not measured']} not measured.</p>"
    ]
    if preset.get("name") == "quick":
        parts.append(
            "<p class='claim'>The <code>quick</code> preset trains small models (K = 400, 30 epochs) and probes "
            "1,000 test images: effects that need the paper's fully trained models (calibrated beta_sm values, "
            "exact transfer rates) can differ here; run <code>--preset cpu</code> for the full-size result.</p>"
        )
    # Header: configuration, versions, seed, data, wall times.
    from dam.io import read_jsonl
    from dam.training import read_run_config

    config_rows = []
    for name in models:
        t = read_run_config(out / "runs" / name).get("train", {})
        config_rows.append(
            [
                name,
                t.get("n"),
                t.get("m"),
                t.get("num_memories"),
                f"{t.get('temperature_start')} -> {t.get('temperature_end')}",
                t.get("epochs"),
                t.get("batch_size"),
                t.get("lr"),
                t.get("lr_decay"),
                t.get("momentum"),
                _pct(m.clean_error[name]) if name in m.clean_error else "-",
                f"{sum(r.get('seconds', 0) for r in read_jsonl(out / 'runs' / name / 'metrics.jsonl')) / 60:.1f}",
            ]
        )
    parts.append(
        _section(
            "setup",
            "Setup",
            "<h3>Models</h3>"
            + _table(
                ["model", "n", "m", "K", "T", "epochs", "batch", "eps0", "f", "p", "test error", "training minutes"],
                config_rows,
                "models",
            ),
            claims,
            "Setup",
        )
    )
    meta_rows = [
        ["preset", preset.get("name")],
        ["seed", preset.get("seed")],
        ["test images probed", preset.get("images")],
        ["rubbish images per class", preset.get("per_class")],
        ["device", meta.get("device")],
        ["data folder", (meta.get("data") or {}).get("folder")],
    ]
    meta_rows += [[f"MD5 {k}", v] for k, v in ((meta.get("data") or {}).get("md5") or {}).items()]
    meta_rows += [[k, v] for k, v in env.items() if v is not None]
    stage_rows = [
        [k, f"{v['seconds']:.1f}", "reused its earlier outputs" if v.get("reused") else "ran", v.get("finished_at", "")]
        for k, v in sorted(stages.items(), key=lambda kv: kv[1].get("finished_at", ""))
    ]
    total = sum(v["seconds"] for v in stages.values())
    stage_rows.append(["total of the stages", f"{total:.1f}", "", ""])
    parts[-1] = parts[-1].replace(
        "</section>",
        "<h3>Run</h3>"
        + _table(["", "value"], meta_rows, "run", 2)
        + "<h3>Wall time per stage</h3>"
        + _table(["stage", "seconds", "when last needed", "finished at"], stage_rows, "stages", 1)
        + "</section>",
    )
    parts.append(
        _section(
            "summary",
            "All verdicts",
            _table(
                ["figure", "verdict", "paper", "measured"],
                [[c.figure, Verdict(c.verdict), c.statement, c.measured] for c in claims],
                "verdicts",
                4,
            ),
            [],
            None,
        )
    )

    # Fig. 2
    mem_rows = [
        [n, f"{m.memory[n]['prototype_correlation']:.3f}", _pct(m.memory[n]["single_class_fraction"])]
        for n in models
        if n in m.memory
    ]
    body = _table(
        ["model", "best correlation with a class-mean image", "single-class memories"], mem_rows, "memories"
    ) + _grid(_img(figs / f"memories_{n}.png", f"memories of {n}") for n in models)
    parts.append(_section("fig2", "Fig. 2: the memories", body, claims, "Fig. 2"))

    # Fig. 3
    rows = [
        [
            n,
            _pct(s["success_rate"]),
            _pct(s["stalled_rate"]),
            _pct(s["stuck_rate"]),
            f"{m.rubbish_likeness.get(n, float('nan')):.3f}",
        ]
        for n, s in m.rubbish_search.items()
    ]
    body = _table(
        ["model", "reached target", "stalled (zero gradient)", "stuck", "correlation with target mean"],
        rows,
        "rubbish searches",
    ) + _grid(_img(figs / f"rubbish_{n}.png", f"rubbish images of {n}") for n in models)
    parts.append(_section("fig3", "Fig. 3: rubbish images from noise", body, claims, "Fig. 3"))

    # Fig. 4
    rows = [
        [
            n,
            _pct(s["success_rate"]),
            _pct(s["stalled_rate"]),
            f"{s['l2_mean']:.2f}",
            f"{s['linf_mean']:.3f}",
            "-" if s.get("crossing_step_median") is None else f"{s['crossing_step_median']:.0f}",
            f"{m.deformation_likeness.get(n, float('nan')):.3f}",
        ]
        for n, s in m.boundary.items()
    ]
    body = _table(
        ["model", "boundary found", "stalled", "mean L2", "mean Linf", "median steps", "deformation correlation"],
        rows,
        "boundary searches",
    ) + _grid(_img(figs / f"boundary_{n}.png", f"decision-boundary triplets of {n}") for n in models)
    parts.append(_section("fig4", "Fig. 4: images on the decision boundary", body, claims, "Fig. 4"))

    # Fig. 5
    body = ""
    if m.adversarial:
        t = m.adversarial
        body = _table(
            ["set made by \\ classified by", *t["models"]],
            [*_transfer_rows(t, "error"), ["clean test images", *(_pct(v) for v in t["clean_error"])]],
            "adversarial transfer",
        )
        body += f"<p>{t['examples']} test images per set.</p>" + _img(
            figs / "adversarial_transfer.png", "adversarial transfer: error rates"
        )
    else:
        body = "<p>No adversarial transfer table was found.</p>" + _img(figs / "adversarial_transfer.png", "Fig. 5")
    parts.append(_section("fig5", "Fig. 5: adversarial transfer", body, claims, "Fig. 5"))

    # Fig. 6
    body = ""
    for key, table, stem in (
        ("beta_sm = 3.2", m.rubbish, "rubbish_transfer"),
        ("each model's calibrated beta_sm", m.rubbish_calibrated, "rubbish_calibrated_transfer"),
    ):
        if table:
            body += (
                f"<h3>Mean confidence, {key}</h3>"
                + _table(
                    ["set made by \\ classified by", *table["models"]],
                    _transfer_rows(table, "mean_confidence"),
                    f"rubbish transfer {key}",
                )
                + _img(figs / f"{stem}.png", f"rubbish transfer, {key}")
            )
    if not m.rubbish:
        body += "<p>No rubbish transfer table was found.</p>" + _img(figs / "rubbish_transfer.png", "Fig. 6")
    elif not m.rubbish_calibrated:
        body += "<p>No table at calibrated beta_sm: some model has no calibrated value (see Fig. 7).</p>"
    parts.append(_section("fig6", "Fig. 6: rubbish transfer", body, claims, "Fig. 6"))

    # Fig. 7
    rows = [
        [
            n,
            f"{c['beta_sm']:.2f}" if c.get("beta_sm") is not None else f"none: {c.get('calibration_error')}",
            f"{c['accuracy']:.4f}",
            c.get("images", ""),
        ]
        for n, c in m.calibration.items()
    ]
    body = _table(["model", "calibrated beta_sm", "accuracy", "images"], rows, "calibration")
    body += _img(figs / "confidence_bins.png", "error rate per confidence bin")
    parts.append(_section("fig7", "Fig. 7: confidence", body, claims, "Fig. 7"))

    from dam.report.beyond import beyond_section

    parts.append(beyond_section(out))

    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>dam reproduction ({_e(preset.get('name'))})</title><style>{CSS}</style>"
        f"<script>{CHECK_JS}</script></head><body>{''.join(parts)}"
        "<p class='rule'>Written by dam; tables as JSON and CSV in tables/, figures as PNG in figures/.</p>"
        "</body></html>"
    )


def build_report(out: str | Path) -> Path:
    """Write OUT/report/index.html (plus tables/ and figures/ beside it) from a reproduction folder."""
    from dam.io import atomic_write_bytes, atomic_write_json

    out = Path(out)
    m = gather(out)
    claims = evaluate_claims(m)
    report = out / "report"
    copies = [("tables", "probes", "*_transfer.*"), ("figures", "probes", "figures/*.png"),
              ("tables", "beyond/attacks", "*.csv"), ("tables", "beyond/attacks", "robustness.json"),
              ("figures", "beyond/attacks", "*.png"), ("tables", "beyond/detector", "detector.json"),
              ("figures", "beyond/detector", "*.png")]  # fmt: skip
    for path in (out / "beyond" / "detector-agreement").glob("detector.*"):
        (report / "tables").mkdir(parents=True, exist_ok=True)
        (report / "figures").mkdir(parents=True, exist_ok=True)
        sub = "figures" if path.suffix == ".png" else "tables"
        shutil.copy2(path, report / sub / f"detector-agreement{path.suffix}")
    for sub, folder, pattern in copies:
        (report / sub).mkdir(parents=True, exist_ok=True)
        for path in (out / folder).glob(pattern):
            shutil.copy2(path, report / sub / path.name)
    for path in (out / "beyond" / "adversarial").glob("*/robustness.json"):
        shutil.copy2(path, report / "tables" / f"adversarial_training_{path.parent.name}.json")
    atomic_write_json(report / "claims.json", [vars(c) for c in claims])
    atomic_write_bytes(report / "index.html", render(out, m, claims).encode())
    return report / "index.html"
