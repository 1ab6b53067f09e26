"""The data of the report's "Past the paper" section: standard attacks and baselines, gradient-masking
verdicts, the junk detector and adversarial training, read from what ``dam reproduce`` wrote under OUT/beyond/.

Each part is shown when its outputs exist and says plainly when they do not (for instance without the
`attacks` extra), so the rest of the report never depends on it. The prose is in the template
``templates/past_paper.html``; this module gives it plain values only.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from dam.experiments.past_paper import DETECTOR_CLASSIFIER, DETECTOR_GUARD
from dam.experiments.report.formatting import (
    figure,
    fmt,
    fmt_or,
    joined,
    number,
    pct,
    read_json,
    reading,
    table,
    text,
)

BEYOND = "beyond"  # OUT/beyond/{baselines,attacks,detector,adversarial}


def _attacks(folder: Path) -> dict[str, Any] | None:
    path = folder / "robustness.json"
    summary = read_json(path)
    if summary is None:
        return None
    with reading(path):
        return _attacks_context(folder, summary)


def _model_order(name: str) -> tuple[int, int, str]:
    """The DAMs by n, then their fine-tuned versions, then the baselines (a name's own order otherwise)."""
    match = re.fullmatch(r"n(\d+)(-adv)?", name)
    return (1 if match.group(2) else 0, int(match.group(1)), name) if match else (2, 0, name)


def _margin(count: Any) -> str:
    """Two standard errors of a share at 50%, in points, on ``count`` images ("?" where it is not a count)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        return "?"
    return f"{100 / math.sqrt(count):.0f}"


GLANCE_BUDGETS = {"linf": 0.1, "l2": 2.0}  # the budgets the report's first lines quote, where the suite has them


def _at_a_glance(summary: dict[str, Any], norm: str) -> str:
    """Every attacked model's worst-case robust accuracy at one budget of ``norm`` (the usual MNIST one where the
    suite ran it, else its middle budget), for the report's first lines."""
    budgets = [number(e) for e in summary["suite"][norm]]
    if not budgets:
        return ""
    eps = GLANCE_BUDGETS[norm] if GLANCE_BUDGETS[norm] in budgets else budgets[len(budgets) // 2]
    i = budgets.index(eps)
    cells = [f"{name} {pct(m['tables'][norm]['worst_case'][i])}" for name, m in sorted(summary["models"].items(),
             key=lambda item: _model_order(item[0])) if norm in m["tables"]]  # fmt: skip
    return f"at {'L-inf' if norm == 'linf' else 'L2'} {fmt(eps, 'g')}, " + ", ".join(cells) if cells else ""


def _attacks_context(folder: Path, summary: dict[str, Any]) -> dict[str, Any]:
    from dam.robustness.attacks.accuracy import RobustnessTable
    from dam.robustness.masking import GradientHealth, ce_dlr_gap, masking_verdict

    suite, images = summary["suite"], summary["images"]
    tables = {name: {norm: RobustnessTable.from_json(t) for norm, t in m["tables"].items()}
              for name, m in summary["models"].items()}  # fmt: skip
    # re-derived from the measurements, so the verdict follows this dam's rule whenever the results were made
    verdicts = {name: masking_verdict(list(tables[name].values()), [GradientHealth(**g) for g in m["gradient_health"]],
                                      m.get("starvation"))
                for name, m in summary["models"].items()}  # fmt: skip
    norms = []
    for norm in ("linf", "l2"):
        header = ["model", "clean", *(f"eps {fmt(e, 'g')}" for e in suite[norm])]
        summary_rows, detail_rows, gap_rows = [], [], []
        for name, m in summary["models"].items():
            t = m["tables"][norm]
            summary_rows.append([name, pct(t["clean_accuracy"]), *(pct(a) for a in t["worst_case"])])
            gap = ce_dlr_gap(tables[name][norm])
            if gap is not None:
                gap_rows.append([name, *(f"{100 * g:+.1f}" for g in gap)])
            # an attack run on the survivors of those before it saw only them: what it broke beyond them, not a
            # robust accuracy (the images it never attacked would count as robust)
            extra = t.get("extra_broken", {})
            for i, (a, accs) in enumerate(t["attacks"].items()):
                points = [100 * number(v) for v in extra.get(a, [])]
                cells = [f"-{p:.1f} pts" if p else "0.0 pts" for p in points] if a in extra else [pct(v) for v in accs]
                detail_rows.append([name if i == 0 else "", a, *cells])
        norms.append(
            {
                "norm": norm,
                "title": "L-inf" if norm == "linf" else "L2",
                "summary": table(header, summary_rows, f"robust {norm}"),
                "gap": table(
                    ["cross-entropy minus DLR (points)", *header[2:]],
                    gap_rows or [["-", *("-" for _ in suite[norm])]],
                    f"ce-dlr gap {norm}",
                ),
                "detail": table(["model", "attack", *header[2:]], detail_rows, f"robust {norm} per attack", 2),
            }
        )
    rows = []
    for name, m in summary["models"].items():
        v = verdicts[name]
        h = {g["dtype"]: g for g in m["gradient_health"]}
        bad = [pct(number(h[d]["zero_fraction"]) + number(h[d]["nonfinite_fraction"])) if d in h else "-"
               for d in ("float32", "float64")]  # fmt: skip
        # a cross-entropy-versus-DLR gap alone flags the model too, but is not masking of every gradient attack
        diagnosis = ("masking suspected" if v["gaps"] or v["bad_gradients"]
                     else "cross-entropy attacks fall short" if v["ce_dlr_gaps"] else "no sign of masking")  # fmt: skip
        rows.append([name, *bad, diagnosis, v["verdict"]])
    header = ["model", "bad gradients float32", "bad gradients float64", "diagnosis", "verdict"]
    effort_rows = []
    for name, m in summary["models"].items():
        for norm, check in (m.get("effort_check") or {}).items():
            points = [number(p) for p in check["extra_broken_points"]]
            converged = "yes" if max(points, default=0.0) < 1 else "no"
            effort_rows.append([name, norm, *(f"{p:.1f}" for p in points), converged, text(check["seconds"])])
    width = max(len(suite["linf"]), len(suite["l2"]))
    effort = table(["model", "norm", *(f"budget {i + 1}" for i in range(width)), "under 1 point", "seconds"],
                   effort_rows, "effort check", 2) if effort_rows else None  # fmt: skip
    glance = "; ".join(filter(None, (_at_a_glance(summary, norm) for norm in ("linf", "l2"))))
    hsj_norms = suite["hsj_norms"] if suite["hsj_steps"] else []  # hsj_steps 0: HopSkipJump did not run
    autoattack = suite.get("autoattack", "none") != "none"
    return {
        "checklist": _checklist(summary, tables, verdicts),
        "glance": glance,
        "margin": _margin(images["count"]),
        "effort": effort,
        "count": text(images["count"]),
        # (the record names its count and seed as `count` and `seed`: the page gives their values)
        "how": text(images["how"]).replace("`count`", text(images["count"])).replace("`seed`", text(images["seed"])),
        "seed": text(images["seed"]),
        "pgd_steps": text(suite["pgd_steps"]),
        "hsj_steps": text(suite["hsj_steps"]),
        "hsj_norms": joined(hsj_norms, "no norm"),
        "hsj_norms_run": bool(hsj_norms),
        "hsj_norms_checked": joined(hsj_norms, "none"),
        "dataset": text(images.get("dataset", "MNIST")),
        "sources": joined(summary["sources"], "no source model"),
        "transfer_norms": "L-inf and L2" if summary["sources"] else "none",
        "square_norms": "L-inf and L2" if autoattack and suite.get("square_queries") else "none",
        "fab_ran": autoattack and bool(suite.get("aa_fab")),
        "logits": text(summary["logits"]),
        "protocol": text(summary.get("protocol", "AutoAttack not run (results of an older dam)")),
        "cascade": text(summary.get("cascade", "the order of its attacks not recorded (results of an older dam)")),
        "published": table(
            ["model (MNIST, L-inf 0.3)", "AutoAttack robust accuracy"],
            [
                ["Madry et al. 2018, PGD adversarial training", "88.50%"],
                ["TRADES (Zhang et al. 2019)", "92.81%"],
                ["Gowal et al. 2020", "96.34%"],
            ],
            "published",
            2,
        ),
        "norms": norms,
        "figure": figure(
            folder / "robust_accuracy.png",
            "robust accuracy against budget (dotted: the gradient attacks' worst case)",
        ),
        "masking": table(header, rows, "masking", 1),
    }


def substitute_of(name: str, sources: list[str]) -> str | None:
    """The source model that is ``name``'s most similar substitute: the same preset trained from another seed
    (run folders named ``NAME-seedS`` by ``dam reproduce``)."""
    return next((s for s in sources if s.startswith(f"{name}-seed")), None)


def _checklist(summary: dict[str, Any], tables: dict[str, dict[str, Any]], verdicts: dict[str, Any]) -> dict[str, Any]:
    """Carlini et al., "On Evaluating Adversarial Robustness" (2019): the checks behind a robustness claim, each
    with what this run measured (``tables``, ``verdicts``: each model's robustness tables and masking verdict).
    A check that did not run says so; none is counted as passed by default."""
    from dam.robustness.masking import ce_dlr_gap, describe_gap, noise_level, one_step_gap

    models, suite, sources = summary["models"], summary["suite"], summary["sources"]
    rows = []
    # Unbounded attacks must win: accuracy falls to 0% as the budget grows.
    for norm, title in (("linf", "L-inf"), ("l2", "L2")):
        largest = fmt(suite[norm][-1], "g")
        above = {n: number(m["tables"][norm]["worst_case"][-1]) for n, m in models.items()}
        above = {n: a for n, a in above.items() if a > 0}
        evidence = f"every model at 0% at eps {largest}"
        if above:
            left = ", ".join(f"{n} {pct(a)}" for n, a in above.items())
            evidence = f"at eps {largest}, the largest budget run: {left}; the curve has not reached 0% there"
        rows.append([f"accuracy falls to 0% as the {title} budget grows", "no" if above else "yes", evidence])
    # Success grows with the budget, measured on the attacks that run every budget on their own (FGSM, PGD) before
    # the carrying up that makes every reported curve fall.
    carried = [(count, n, t.norm, attack, eps)
               for n in models for t in tables[n].values() for attack, counts in t.carried_up.items()
               for count, eps in zip(counts, t.epsilons, strict=True)]  # fmt: skip
    check = (
        "each attack that runs every budget on its own breaks, within a larger budget, what it broke within a smaller"
    )
    if not carried:
        rows.append([check, "not run", "not measured: results of dam 0.12 or older, or no such attack ran"])
    else:
        count, n, norm, attack, eps = max(carried, key=lambda c: c[0])
        cells = sum(1 for c in carried if c[0])
        evidence = (f"at {cells} budget(s) of an attack on a model, images it broke within a smaller budget and not "
                    f"within that one (most: {attack}, {count} of {n}'s images at {norm} eps {eps:g}); they count as "
                    "broken within the larger budget" if cells else "no image broken within a smaller budget and "
                    "not within a larger one")  # fmt: skip
        rows.append([check, "no (carried up)" if cells else "yes", evidence])
    # More effort no longer changes the result.
    check = "twice the iterations, restarts and another seed move the worst case by under 1 point"
    effort = [
        (max((number(p) for p in c["extra_broken_points"]), default=0.0), n, norm)
        for n, m in models.items()
        for norm, c in (m.get("effort_check") or {}).items()
    ]
    if effort:
        points, n, norm = max(effort)
        rows.append([check, "yes" if points < 1 else "no", f"largest change {points:.1f} points ({n}, {norm})"])
    else:
        why = (
            "it needs the AutoAttack protocol, which did not run"
            if suite.get("autoattack") == "none"
            else "it is off in this preset"
        )
        rows.append([check, "not run", f"the convergence check did not run: {why}"])
    # The rest from each model's masking verdict and cross-entropy-versus-DLR gap.
    gaps = {}
    for n in models:
        per_norm = [max(g) for t in tables[n].values() if (g := ce_dlr_gap(t)) is not None]
        if per_norm:
            gaps[n] = max(per_norm)
    beaten = []
    for n, v in verdicts.items():
        if v["gaps"]:  # the largest gap of the model, not the first found
            beaten.append(f"{n}: {describe_gap(max(v['gaps'], key=lambda g: g['white_box'] - g['black_box']))}")
    unchecked = sorted({norm for v in verdicts.values() for norm in v.get("unchecked", [])})
    # Any image a gradient-free attack broke that every gradient attack left is a miss of the gradient attacks
    # (Carlini et al.): "yes" only where there is none; fewer than the masking threshold: "no (within noise)", named.
    beyond = [(round(share * t.images), n, t.norm, kind, eps)
              for n in models for t in tables[n].values() for kind, shares in t.beyond_gradients.items()
              for share, eps in zip(shares, t.epsilons, strict=True) if round(share * t.images)]  # fmt: skip
    if beaten:
        evidence = "; ".join(beaten)
    elif beyond:
        count, n, norm, kind, eps = max(beyond, key=lambda b: b[0])
        evidence = (f"no gap beyond two standard errors, but at {len(beyond)} budget(s) a gradient-free attack broke "
                    f"images that every gradient attack left (most: {kind}, {count} image(s) of {n} at {norm} eps "
                    f"{eps:g}); counted in the worst case")  # fmt: skip
    elif len(unchecked) < 2:
        evidence = "no image broken by a gradient-free attack that every gradient attack left"
    else:
        evidence = ""
    # results of dam 0.7 and older keep no per-image record: compared by robust accuracy only
    legacy = sorted(n for n, v in verdicts.items() if v["compared_by_accuracy"])
    if legacy:
        evidence += f"; {', '.join(legacy)} compared by robust accuracy only (no per-image record: dam 0.7 or older)"
    if unchecked:
        evidence += f"; not checked in {' and '.join(unchecked)}: no gradient-free attack ran there"
    if beaten or beyond:
        holds = "no" if beaten else "no (within noise)"
    else:
        holds = "not run" if len(unchecked) == 2 else "partly checked" if unchecked or legacy else "yes"
    evidence = evidence.removeprefix("; ")
    rows.append(["gradient-free attacks (Square, HopSkipJump, transfer) do no better than gradient attacks", holds,
                 evidence])  # fmt: skip
    # Iterations on a loss do at least as well as one step on it (Carlini et al.): FGSM against PGD and APGD-CE.
    steps = [(gap[i], n, t, i) for n in models for t in tables[n].values() if (gap := one_step_gap(t)) is not None
             for i in range(len(gap))]  # fmt: skip
    check = "iterative attacks do at least as well as one step on the same loss (PGD, APGD-CE against FGSM)"
    if not steps:
        rows.append([check, "not run", "needs FGSM and PGD or APGD-CE"])
    else:
        worse = [step for step in steps if step[0] > 0]  # budgets where one step did better
        if not worse:
            rows.append([check, "yes", "FGSM never left fewer images robust than PGD or APGD-CE"])
        else:
            # the most telling case: the largest gap beyond its own noise level (a gap at a robust accuracy near 0
            # is less noisy than one near 50%)
            excess = lambda s: s[0] - noise_level(s[2].attacks["fgsm"][s[3]] + s[0], s[2].images)  # noqa: E731
            gap, n, t, i = max(worse, key=excess)
            fgsm = t.attacks["fgsm"][i]
            where = (f"most telling: {n} {t.norm} eps {t.epsilons[i]:g}, FGSM {100 * fgsm:.1f}% against the best "
                     f"iterative {100 * (fgsm + gap):.1f}%")  # fmt: skip
            why = ("; the cross-entropy attacks fall short of the DLR attack on this model too (see its diagnosis)"
                   if verdicts[n]["ce_overstates"] else "")  # fmt: skip
            holds = "no" if excess((gap, n, t, i)) > 0 else "no (within noise)"
            rows.append([check, holds, f"{where} ({100 * gap:.1f} points{why}); {len(worse)} budget(s) in all"])
    # counted where the transfer ran, in every norm: a substitute among the sources is not yet an attack
    have = {n: s for n in models if (s := substitute_of(n, sources))
            and all(f"transfer:{s}" in {a.split(" (")[0] for a in t.attacks} for t in tables[n].values())}  # fmt: skip
    missing = [n for n in models if n not in have]
    evidence = "; ".join(f"{n} attacked with the adversarials of {s}" for n, s in have.items())
    if have and missing:
        evidence += f"; no transfer from a substitute for {', '.join(missing)}"
    rows.append(["transfer from the most similar substitute (same n, another seed)", "yes" if have else "not run",
                 evidence or f"transfer sources here: {joined(sources, 'none')}"])  # fmt: skip
    evidence = ", ".join(f"{n} {100 * g:+.1f}" for n, g in gaps.items())
    rows.append(["cross-entropy against DLR loss, per model (points; positive: cross-entropy overstates robustness)",
                 "reported" if gaps else "not run", evidence or "needs the AutoAttack protocol"])  # fmt: skip
    strongest = [f"{n} {norm}: {s['attack'] if s['weakest'] else 'every attack tied'}"
                 for n, v in verdicts.items() for norm, s in v["strongest"].items() if s]  # fmt: skip
    # (information, not a check that could fail: which attack the worst case owes most to)
    rows.append(["the strongest attack, per model and norm", "reported" if strongest else "not run",
                 "; ".join(strongest) or "fewer than two attacks per norm"])  # fmt: skip
    return table(["check (Carlini et al. 2019)", "holds", "evidence"], rows, "checklist", 3)


def _detector(folder: Path, not_run: str) -> dict[str, Any]:
    agreement = folder.name.endswith("agreement")
    title = "The junk detector, also rejecting disagreement" if agreement else "The junk detector (the paper's rule)"
    path = folder / "detector.json"
    report = read_json(path)
    if report is None:
        with reading(folder / "skipped.json"):
            skipped = read_json(folder / "skipped.json")
            reason = text(skipped["reason"]) if skipped else not_run
        return {"title": title, "result": None, "skipped": reason}
    with reading(path):
        data = report["data"]
        rows = []
        for name, r in report["sets"].items():
            rejected = 1 - number(r["acceptance_rate"])
            rows.append([name, r["kind"], r["count"], pct(r["acceptance_rate"]),
                         pct(rejected) if r["kind"] != "clean" else "-", pct(r.get("accuracy_on_accepted")),
                         pct(r.get("classifier_accuracy")), pct(r.get("safe_rate")),
                         fmt(r["roc"]["auc"], ".3f") if "roc" in r else "-"])  # fmt: skip
        header = ["set", "kind", "images", "accepted", "rejected", "accuracy on accepted", "classifier alone", "safe",
                  "ROC AUC vs clean"]  # fmt: skip
        result = {
            "classifier": Path(report.get("classifier", "?")).name,
            "guard": Path(report.get("guard", "?")).name,
            "beta_sm": fmt(report["beta_sm"], "g"),
            "threshold": fmt(report["threshold"], ".4g"),
            "false_rejection": pct(report["false_rejection"]),
            "calibration_images": text(data["calibration_images"]),
            "calibration_rate": pct(data["calibration_false_rejection_rate"]),
            "evaluation_images": text(data["evaluation_images"]),
            "noise_images": text(data["noise_images"]),
            "attacks": text(data.get("attacks", "no attack outputs")),
            "agreement": bool(report.get("agreement")),
            "table": table(header, rows, folder.name, 2),
            "figure": figure(folder / "detector.png", "detector: ROC against clean images and guard-score histograms"),
            "adaptive": _adaptive(report.get("adaptive"), folder.name),
        }
    return {"title": title, "result": result, "skipped": None}


def _adaptive(adaptive: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    """The adaptive attack's rows: per budget the safe rate when the attacker knows the guard, beside the
    non-adaptive attack (the same APGD on the classifier alone), the per-image worst case of both (the detector's
    robustness) and the classifier without a guard."""
    if not adaptive:
        return None
    from dam.robustness.adaptive import unsafe_only_through

    rows = []
    for budget, b in adaptive["budgets"].items():
        na = b["non_adaptive"]
        seconds = f"{number(b['seconds']) + number(na['seconds']):.0f}"
        rows.append([budget, pct(b.get("worst_case_safe_rate")), pct(b["classifier_robust_accuracy"]),
                     pct(na["safe_rate"]), pct(b["safe_rate"]), pct(b["rejection_rate"]),
                     unsafe_only_through(b.get("unsafe_by")),
                     fmt(b["roc"]["auc"], ".3f") if b.get("roc") else "-", seconds,
                     fmt(b["queries_per_image"], ".0f")])  # fmt: skip
    header = ["budget", "detector, worst case of both: safe", "classifier alone: robust",
              "detector, non-adaptive attack: safe", "detector, adaptive: safe", "adaptive: rejected",
              "images unsafe only through", "ROC AUC of the adaptive set", "seconds", "queries per image"]  # fmt: skip
    return {"images": text(adaptive["images"]), "table": table(header, rows, f"{name} adaptive", 1)}


def _adversarial(folder: Path) -> dict[str, Any] | None:
    runs = sorted(p for p in folder.glob("*/robustness.json")) if folder.is_dir() else []
    if not runs:
        return None
    # Scored by the boundary search it was trained against, fine-tuning is favoured; the standard attacks'
    # worst case (when the attack stage covered the fine-tuned model) is shown beside it.
    attacks_path = folder.parent / "attacks" / "robustness.json"
    with reading(attacks_path):
        attacks = read_json(attacks_path) or {}
        attacked = attacks.get("models", {})
        suite = attacks.get("suite", {})
        budgets = {norm: "/".join(fmt(e, "g") for e in suite.get(norm, [])) for norm in ("linf", "l2")}

    def worst(name: str, norm: str) -> str:
        with reading(attacks_path):
            t = attacked.get(name, {}).get("tables", {}).get(norm)
            return " / ".join(pct(a) for a in t["worst_case"]) if t else "-"

    rows, counts = [], []
    for path in runs:
        r = read_json(path)
        with reading(path):
            counts.append(str(r.get("eval_images", "?")))
            tuned = path.parent.name
            for when, label, name in (("base", "before", tuned.removesuffix("-adv")), ("finetuned", "after", tuned)):
                m = r[when]
                rows.append([tuned if when == "base" else "", label, pct(m.get("test_error")),
                             pct(m.get("success_rate")), fmt_or(m.get("l2_median"), ".3f"),
                             fmt_or(m.get("l2_median_all"), ".3f"), fmt_or(m.get("linf_median"), ".3f"),
                             worst(name, "linf"), worst(name, "l2")])  # fmt: skip
    header = ["model", "", "test error", "boundary found", "median L2 (found)",
              "median L2 (all; not found = far, misclassified = 0)",
              "median L-inf (found)", f"worst-case robust acc., L-inf {budgets['linf']}",
              f"L2 {budgets['l2']}"]  # fmt: skip
    return {"images": text(" / ".join(dict.fromkeys(counts))), "table": table(header, rows, "adversarial training", 2)}


def past_paper_context(out: Path, record: dict[str, Any]) -> dict[str, Any] | None:
    """The section's values, or None when OUT/beyond does not exist and the last run did not stop before it
    (older reproductions): the page then has no such section.  ``record``: OUT/reproduce.json."""
    folder = Path(out) / BEYOND
    paper_only = record.get("paper_only") is True
    if not folder.is_dir() and not paper_only:
        return None
    preset = record.get("preset") or {}

    def not_run(stage: str) -> str:
        """Why a part has no outputs, when it wrote no reason of its own."""
        settings = preset.get(stage, {})  # None leaves a stage out; {} runs it with its defaults
        if settings is None or (stage == "adversarial" and not settings.get("models")):
            return "not part of this preset"
        pair = {DETECTOR_CLASSIFIER, DETECTOR_GUARD}
        if stage == "detector" and "models" in preset and not pair <= set(preset["models"]):
            return f"it needs {DETECTOR_CLASSIFIER} and {DETECTOR_GUARD} among the models"
        if paper_only:
            return "this reproduction stopped after the paper's stages (--paper-only)"
        return "not finished in this folder (run the same dam reproduce again)"

    with reading(folder / "attacks" / "skipped.json"):
        skipped = read_json(folder / "attacks" / "skipped.json")
        attacks_not_run = text(skipped["reason"]) if skipped else not_run("attacks")
    detectors = [_detector(folder / "detector", not_run("detector"))]
    if (folder / "detector-agreement").is_dir():
        detectors.append(_detector(folder / "detector-agreement", not_run("detector")))
    return {
        "paper_only": paper_only,
        "attacks": _attacks(folder / "attacks"),
        "attacks_not_run": attacks_not_run,
        "detectors": detectors,
        "adversarial": _adversarial(folder / "adversarial"),
        "adversarial_not_run": not_run("adversarial"),
    }
