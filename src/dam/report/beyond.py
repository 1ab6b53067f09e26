"""The report's "Past the paper" section: standard attacks and baselines, gradient-masking verdicts, the junk
detector and adversarial training, read from what ``dam reproduce`` wrote under OUT/beyond/.

Each part is shown when its outputs exist and says plainly when they do not (for instance without the
`attacks` extra), so the rest of the report never depends on it.
"""

from __future__ import annotations

from pathlib import Path

from dam.report.build import _e, _img, _pct, _read, _section, _table

BEYOND = "beyond"  # OUT/beyond/{baselines,attacks,detector,adversarial}


def _attacks_html(folder: Path) -> str:
    summary = _read(folder / "robustness.json")
    if summary is None:
        return '<h3>Standard attacks</h3><p>Not run (they need Foolbox: <code>pip install "dam[attacks]"</code>).</p>'
    suite, images = summary["suite"], summary["images"]
    html = (
        "<h3>Robust accuracy under standard attacks</h3>"
        f"<p>{images['count']} MNIST test images ({_e(images['how'])}, seed {images['seed']}). Attacks from Foolbox: "
        f"FGSM, PGD ({suite['pgd_steps']} steps, random start) in L-inf and L2, HopSkipJump (decision-based: labels "
        f"only, {suite['hsj_steps']} iterations, in {', '.join(suite['hsj_norms']) or 'no norm'}), and transfer of "
        f"PGD adversarials from {', '.join(summary['sources']) or 'no source model'}. {_e(summary['logits'])}. "
        "Robust accuracy is the fraction of images still classified correctly; <i>worst case</i> counts an image "
        "as robust only if every attack failed on it.</p>"
    )
    for norm in ("linf", "l2"):
        eps = suite[norm]
        header = ["model", "clean", *(f"eps {e:g}" for e in eps)]
        summary_rows, detail_rows = [], []
        for name, m in summary["models"].items():
            t = m["tables"][norm]
            summary_rows.append([name, _pct(t["clean_accuracy"]), *(_pct(a) for a in t["worst_case"])])
            detail_rows += [[name if i == 0 else "", a, *(_pct(v) for v in accs)]
                            for i, (a, accs) in enumerate(t["attacks"].items())]  # fmt: skip
        html += (
            f"<h4>{'L-inf' if norm == 'linf' else 'L2'} budgets: worst case over all attacks</h4>"
            + _table(header, summary_rows, f"robust {norm}")
            + f"<details><summary>each attack ({norm})</summary>"
            + _table(["model", "attack", *header[2:]], detail_rows, f"robust {norm} per attack", 2)
            + "</details>"
        )
    html += _img(folder / "robust_accuracy.png", "robust accuracy against budget (dotted: gradient attacks only)")
    from dam.attacks.evaluation import RobustnessTable
    from dam.attacks.masking import GradientHealth, masking_verdict

    rows = []
    for name, m in summary["models"].items():
        # re-derived from the measurements, so the verdict follows this dam's rule whenever the results were made
        health = [GradientHealth(**g) for g in m["gradient_health"]]
        m["verdict"] = masking_verdict([RobustnessTable.from_json(t) for t in m["tables"].values()], health)
        h = {g["dtype"]: g for g in m["gradient_health"]}
        bad = [_pct(h[d]["zero_fraction"] + h[d]["nonfinite_fraction"]) for d in ("float32", "float64")]
        v = m["verdict"]
        rows.append([name, *bad, "masking suspected" if v["masked"] else "no sign of masking", v["verdict"]])
    html += (
        "<h3>Gradient-masking diagnostics</h3><p>Zero or non-finite input gradients of the cross-entropy on the "
        "attack logits, and white-box (FGSM, PGD) against gradient-free robust accuracy at the same budgets, in "
        f"every norm that has a gradient-free attack (HopSkipJump: {', '.join(suite['hsj_norms']) or 'none'}; "
        f"transfer: {'L-inf and L2' if summary['sources'] else 'none'}): a gradient-free attack that does better "
        "than the gradient attacks, beyond two standard errors (at least 3 points), means the white-box numbers "
        "overstate robustness (masked gradients, or gradient attacks too weak at their step budget).</p>"
        + _table(
            ["model", "bad gradients float32", "bad gradients float64", "diagnosis", "verdict"], rows, "masking", 1
        )
    )
    return html


def _detector_html(folder: Path) -> str:
    report = _read(folder / "detector.json")
    agreement = folder.name.endswith("agreement")
    title = "The junk detector, also rejecting disagreement" if agreement else "The junk detector (the paper's rule)"
    if report is None:
        skipped = _read(folder / "skipped.json")
        return f"<h3>{title}</h3><p>Not run{': ' + _e(skipped['reason']) if skipped else ''}.</p>"
    data = report["data"]
    rule = (" It also rejects every input on which the guard's label differs from the classifier's (score 0)."
            if report.get("agreement") else "")  # fmt: skip
    html = (
        f"<h3>{title}</h3>"
        f"<p>Classifier <code>{_e(Path(report.get('classifier', '?')).name)}</code>, guard "
        f"<code>{_e(Path(report.get('guard', '?')).name)}</code>: an input is junk when the guard's confidence "
        f"(softmax of {report['beta_sm']:g} Y) is below {report['threshold']:.4g}, the threshold that rejects at "
        f"most {_pct(report['false_rejection'])} of {data['calibration_images']} held-out clean test images (it "
        f"rejects {_pct(data['calibration_false_rejection_rate'])} of them). Measured on the other "
        f"{data['evaluation_images']} clean images, {data['noise_images']} Gaussian and uniform noise images each, "
        f"the probes' adversarial and rubbish sets, and {_e(data.get('attacks', 'no attack outputs'))}.{rule}</p>"
    )
    rows = []
    for name, r in report["sets"].items():
        rejected = 1 - r["acceptance_rate"]
        rows.append([name, r["kind"], r["count"], _pct(r["acceptance_rate"]),
                     _pct(rejected) if r["kind"] != "clean" else "-", _pct(r.get("accuracy_on_accepted")),
                     _pct(r.get("classifier_accuracy")), _pct(r.get("safe_rate")),
                     f"{r['roc']['auc']:.3f}" if "roc" in r else "-"])  # fmt: skip
    header = ["set", "kind", "images", "accepted", "rejected", "accuracy on accepted", "classifier alone", "safe",
              "ROC AUC vs clean"]  # fmt: skip
    html += _table(header, rows, folder.name, 2)
    html += "<p class='rule'>safe = rejected or classified correctly (attack sets, true labels).</p>"
    return html + _img(folder / "detector.png", "detector: ROC against clean images and guard-score histograms")


def _adversarial_html(folder: Path) -> str:
    runs = sorted(p for p in folder.glob("*/robustness.json")) if folder.is_dir() else []
    if not runs:
        return "<h3>Adversarial training</h3><p>Not run.</p>"
    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    # Scored by the boundary search it was trained against, fine-tuning is favoured; the standard attacks'
    # worst case (when the attack stage covered the fine-tuned model) is shown beside it.
    attacked = (_read(folder.parent / "attacks" / "robustness.json") or {}).get("models", {})

    def worst(name: str, norm: str) -> str:
        t = attacked.get(name, {}).get("tables", {}).get(norm)
        return " / ".join(_pct(a) for a in t["worst_case"]) if t else "-"

    rows = []
    n = "?"
    for path in runs:
        r = _read(path)
        n = r.get("eval_images", n)
        tuned = path.parent.name
        for when, label, name in (("base", "before", tuned.removesuffix("-adv")), ("finetuned", "after", tuned)):
            m = r[when]
            rows.append([tuned if when == "base" else "", label, _pct(m.get("test_error")),
                         _pct(m.get("success_rate")), num(m.get("l2_median")), num(m.get("l2_median_all")),
                         num(m.get("linf_median")), worst(name, "linf"), worst(name, "l2")])  # fmt: skip
    html = (
        "<h3>Adversarial training</h3><p>The extension the paper proposes: the trained DAM is trained further "
        "with its own update rule on clean images plus images one step past its decision boundary (made on the "
        "current model, labelled with the true class). Robustness is the distance the boundary search must move "
        f"a test image to change its label (larger is more robust), on {n} seeded test images.</p>"
    )
    suite = (_read(folder.parent / "attacks" / "robustness.json") or {}).get("suite", {})
    budgets = {norm: "/".join(f"{e:g}" for e in suite.get(norm, [])) for norm in ("linf", "l2")}
    header = ["model", "", "test error", "boundary found", "median L2 (found)", "median L2 (all; not found = far)",
              "median L-inf (found)", f"worst-case robust acc., L-inf {budgets['linf']}",
              f"L2 {budgets['l2']}"]  # fmt: skip
    return html + _table(header, rows, "adversarial training", 2)


def beyond_section(out: Path) -> str:
    """The whole section, or an empty string when OUT/beyond does not exist (older reproductions)."""
    folder = out / BEYOND
    if not folder.is_dir():
        return ""
    body = (
        _attacks_html(folder / "attacks")
        + _detector_html(folder / "detector")
        + (_detector_html(folder / "detector-agreement") if (folder / "detector-agreement").is_dir() else "")
        + _adversarial_html(folder / "adversarial")
    )
    return _section("beyond", "Past the paper: standard attacks, gradient masking, the detector", body, [], None)
