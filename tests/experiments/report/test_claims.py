"""Verdicts: the paper's numbers agree with themselves, violations differ, missing models are not a pass."""

from __future__ import annotations

from dam.experiments.report.claims import PAPER_BETA, Measurements, evaluate_claims

NAMES = ["n2", "n3", "n20", "n30"]


def _table(key: str, rows: list[list[float]]) -> dict:
    return {"models": NAMES, key: rows, "clean_error": [0.015] * 4, "examples": 10000, "beta_sm": [3.2] * 4}


def paper_like() -> Measurements:
    """What the paper reports (Fig. 5, 6 and 7), with picture statistics ordered as its figures show."""
    bins = {"error": [0.5, 0.2, float("nan"), 0.01], "count": [10, 20, 0, 9000], "edges": [0.1, 0.4, 0.7, 0.9, 1.0]}
    return Measurements(
        models=NAMES,
        clean_error=dict.fromkeys(NAMES, 0.015),
        adversarial=_table(
            "error", [[0.99, 0.6, 0.1, 0.03], [0.7, 0.99, 0.1, 0.03], [0.6, 0.6, 0.99, 0.3], [0.6, 0.6, 0.5, 0.99]]
        ),
        rubbish=_table(
            "mean_confidence",
            [[0.985, 0.9, 0.1, 0.1], [0.9, 0.98, 0.1, 0.1], [0.9, 0.9, 0.95, 0.9], [0.95, 0.95, 0.95, 0.97]],
        ),
        calibration={n: {"beta_sm": PAPER_BETA[n], "binned_error_calibrated": bins} for n in NAMES},
        boundary={n: {"l2_mean": 1.0, "success_rate": 0.999} for n in NAMES},
        memory={
            n: {"prototype_correlation": 0.2 + 0.01 * int(n[1:]), "single_class_fraction": 0.01 * int(n[1:])}
            for n in NAMES
        },
        rubbish_likeness={"n2": 0.05, "n3": 0.08, "n20": 0.5, "n30": 0.6},
        deformation_likeness={"n2": 0.02, "n3": 0.05, "n20": 0.4, "n30": 0.5},
    )


def test_the_papers_own_numbers_agree_with_every_statement():
    claims = evaluate_claims(paper_like())
    assert len(claims) == 11
    assert [c.verdict for c in claims] == ["agrees"] * 11, [(c.figure, c.verdict, c.measured) for c in claims]


def test_violations_differ():
    m = paper_like()
    m.adversarial["error"][0][3] = 0.40  # n30 fooled by the n2 set
    m.rubbish["mean_confidence"][0][2] = 0.9  # n20 confident on n2 rubbish
    m.deformation_likeness["n30"] = 0.0
    m.calibration["n20"]["beta_sm"] = 10.6
    verdicts = {c.statement[:40]: c.verdict for c in evaluate_claims(m)}
    assert sorted(verdicts.values()).count("differs") == 3
    assert "partly" in verdicts.values()  # three of four beta_sm values still match


def test_missing_models_are_not_measured_never_passed():
    m = Measurements(models=["n2", "n20"])
    claims = evaluate_claims(m)
    assert all(c.verdict == "not measured" for c in claims), [(c.figure, c.verdict) for c in claims]


def test_tables_missing_some_models_are_not_measured():
    """A table holding only some of the four models is not "every model": statements 5 and 9 are not measured
    (before dam 0.10 a table of n30 alone let statement 9 agree)."""
    m = paper_like()
    for table, key in ((m.adversarial, "error"), (m.rubbish, "mean_confidence")):
        table["models"] = ["n30"]
        table[key] = [[0.99]]
        table["clean_error"] = [0.015]
    verdicts = {c.key: c.verdict for c in evaluate_claims(m)}
    assert verdicts["adversarial_diagonal"] == "not measured" and verdicts["rubbish_large"] == "not measured"


def test_too_few_images_per_bin_is_not_measured_and_searches_are_counted():
    m = paper_like()
    m.calibration["n2"]["binned_error_calibrated"] = {"error": [0.5, 0.01], "count": [3, 997], "edges": [0, 0.5, 1]}
    m.rubbish_search = {n: {"success_rate": 0.9} for n in NAMES}
    claims = {c.key: c for c in evaluate_claims(m)}
    assert claims["confidence_bins"].verdict == "not measured"
    assert "n2: fewer than two bins with 10 images" in claims["confidence_bins"].measured
    for key in ("rubbish_pictures", "rubbish_small", "rubbish_large"):
        assert "rubbish searches that reached their target: " in claims[key].measured
        assert claims[key].verdict == "agrees"  # (said, never a change of the verdict)


def test_a_presets_limit_explains_but_never_changes_a_verdict():
    from dam.experiments.report.claims import claim_keys

    m = paper_like()
    m.clean_error["n30"] = 0.037
    limits = {"clean_error": "K = 400 models in a minute reach 2.4-3.7%", "memories": "never shown: it agrees"}
    claims = {c.key: c for c in evaluate_claims(m, limits)}
    assert list(claims) == claim_keys() and len(claims) == 11
    assert claims["clean_error"].verdict == "differs" and claims["clean_error"].limit == limits["clean_error"]
    assert claims["memories"].verdict == "agrees" and claims["memories"].limit == ""
    assert [c.verdict for c in evaluate_claims(m)] == [c.verdict for c in claims.values()]


def test_every_presets_limits_name_a_check():
    from dam.experiments.report.claims import claim_keys
    from dam.experiments.reproduce import PRESETS

    for name, plan in PRESETS.items():
        assert set(plan.limits) <= set(claim_keys()), (name, set(plan.limits) - set(claim_keys()))
        assert all(line and "\n" not in line for line in plan.limits.values())
