"""The paper's statements, each set beside what was measured, with a verdict by a rule stated in the text.

Each check takes the :class:`Measurements` of a reproduction and returns a :class:`Claim`.  A claim whose
models were not part of the run is "not measured", never a pass.  The thresholds say what "about" means
for a statement the paper makes in words; they are printed in the report next to the verdict.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

PAPER_BETA = {"n2": 4.7, "n3": 4.6, "n20": 4.0, "n30": 26.0}
SMALL, LARGE = ("n2", "n3"), ("n20", "n30")


@dataclass
class Measurements:
    """Everything the report's verdicts read, keyed by model name (n2, n3, n20, n30)."""

    models: list[str]
    clean_error: dict[str, float] = field(default_factory=dict)  # full test set
    adversarial: dict[str, Any] | None = None  # adversarial_transfer.json
    rubbish: dict[str, Any] | None = None  # rubbish_transfer.json (beta_sm 3.2)
    rubbish_calibrated: dict[str, Any] | None = None
    calibration: dict[str, dict[str, Any]] = field(default_factory=dict)
    boundary: dict[str, dict[str, Any]] = field(default_factory=dict)  # boundary.json summaries
    rubbish_search: dict[str, dict[str, Any]] = field(default_factory=dict)  # rubbish.json summaries
    memory: dict[str, dict[str, Any]] = field(default_factory=dict)  # probes.likeness.memory_likeness
    rubbish_likeness: dict[str, float] = field(default_factory=dict)
    deformation_likeness: dict[str, float] = field(default_factory=dict)


@dataclass
class Claim:
    figure: str  # "Fig. 5", ...
    statement: str  # the paper's, in its words where possible
    measured: str
    verdict: str  # "agrees", "partly", "differs", "not measured"
    rule: str  # how the verdict was decided
    key: str = ""  # the check's name (clean_error, rubbish_large, ...): what a preset's ``limits`` refer to
    limit: str = ""  # why the run's preset does not show the statement, measured (set only when it does not agree)


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def _have(m: Measurements, *names: str) -> bool:
    return all(n in m.models for n in names)


def _in(table: dict[str, Any] | None, *names: str) -> bool:
    """The table holds rows and columns for these models (a table of an earlier run may lack some)."""
    return bool(table) and all(n in table["models"] for n in names)


def _cell(table: dict[str, Any], key: str, row: str, col: str) -> float:
    names = table["models"]
    return float(table[key][names.index(row)][names.index(col)])


def _searches(m: Measurements, *names: str) -> str:
    """How many of these models' rubbish searches reached their target: the sets hold the others too (a
    stalled search's image, at chance confidence for every judge), so the reader sees what the numbers are of."""
    rates = {n: m.rubbish_search[n]["success_rate"] for n in names if "success_rate" in m.rubbish_search.get(n, {})}
    return f"; rubbish searches that reached their target: {_per_model(rates, _pct)}" if rates else ""


def _missing(figure: str, statement: str, rule: str) -> Claim:
    return Claim(figure, statement, "the models or probes this needs are not in this run", "not measured", rule)


def _ordered(values: dict[str, float]) -> bool:
    return min(values[n] for n in LARGE) > max(values[n] for n in SMALL)


def _per_model(values: dict[str, float], fmt: Callable[[float], str] = lambda v: f"{v:.3f}") -> str:
    return ", ".join(f"{n} {fmt(v)}" for n, v in values.items())


def clean_error(m: Measurements) -> Claim:
    statement = 'Clean test errors "of the order of 1.5%" for the four models.'
    rule = "agrees if the test error of each of n2, n3, n20, n30 is at most 2.0%"
    if not all(n in m.clean_error for n in SMALL + LARGE):
        return _missing("Setup", statement, rule)
    ok = all(v <= 0.02 for v in m.clean_error.values())
    return Claim("Setup", statement, _per_model(m.clean_error, _pct), "agrees" if ok else "differs", rule)


def memories(m: Measurements) -> Claim:
    statement = "Small n learns features shared by several classes; large n learns prototypes of single digits."
    rule = (
        "agrees if both the memories' best correlation with a class-mean image and the fraction of memories "
        "whose label part is positive for exactly one class are higher for each of n20, n30 than for n2, n3; "
        "partly if one of the two is"
    )
    if not (_have(m, *SMALL, *LARGE) and all(n in m.memory for n in SMALL + LARGE)):
        return _missing("Fig. 2", statement, rule)
    corr = {n: m.memory[n]["prototype_correlation"] for n in m.models}
    single = {n: m.memory[n]["single_class_fraction"] for n in m.models}
    hits = _ordered(corr) + _ordered(single)
    measured = f"correlation with a class mean: {_per_model(corr)}; single-class memories: {_per_model(single, _pct)}"
    return Claim("Fig. 2", statement, measured, ["differs", "partly", "agrees"][hits], rule)


def rubbish_pictures(m: Measurements) -> Claim:
    statement = (
        "Rubbish images of small n are speckled noise classified with high confidence; "
        "for n = 20-30 they are recognisable digits."
    )
    rule = (
        "agrees if the rubbish images' correlation with the mean image of their target class is higher for each "
        "of n20, n30 than for n2, n3, and n2, n3 give their own rubbish at least 90% confidence (beta_sm 3.2); "
        "partly if one of the two holds"
    )
    if not (
        _have(m, *SMALL, *LARGE) and _in(m.rubbish, *SMALL) and all(n in m.rubbish_likeness for n in SMALL + LARGE)
    ):
        return _missing("Fig. 3", statement, rule)
    own = {n: _cell(m.rubbish, "mean_confidence", n, n) for n in SMALL}
    ok_conf = all(v >= 0.9 for v in own.values())
    ok_like = _ordered(m.rubbish_likeness)
    measured = (
        f"correlation with the target's class mean: {_per_model(m.rubbish_likeness)}; "
        f"own confidence: {_per_model(own, _pct)}" + _searches(m, *SMALL, *LARGE)
    )
    return Claim("Fig. 3", statement, measured, ["differs", "partly", "agrees"][ok_conf + ok_like], rule)


def boundary_pictures(m: Measurements) -> Claim:
    statement = (
        "For n = 2, 3 the image on the decision boundary is the clean image plus speckled noise; for "
        "n = 30 the deformation looks like the second-choice digit morphed into the first."
    )
    rule = (
        "agrees if the correlation of the deformation (boundary image minus clean image) with the difference of "
        "the two class-mean images (second choice minus top) is higher for n30 than for n2 and n3 (n20 shown "
        "for information; the paper describes the morph for n = 30)"
    )
    if not (_have(m, *SMALL, "n30") and all(n in m.deformation_likeness for n in (*SMALL, "n30"))):
        return _missing("Fig. 4", statement, rule)
    l2 = {n: m.boundary[n]["l2_mean"] for n in m.models if n in m.boundary}
    measured = (
        f"deformation correlation: {_per_model(m.deformation_likeness)}; mean L2 distance to the "
        f"boundary ([0, 1] pixels): {_per_model(l2, lambda v: 'n/a' if v is None else f'{v:.2f}')}"
    )
    d = m.deformation_likeness
    return Claim("Fig. 4", statement, measured, "agrees" if d["n30"] > max(d[n] for n in SMALL) else "differs", rule)


def adversarial_diagonal(m: Measurements) -> Claim:
    statement = "Each model misclassifies its own adversarial set: diagonal error rates close to 100% (about 99%)."
    rule = (
        "agrees if every diagonal entry is at least 100% minus the model's clean error minus 1 point (the "
        "paper's footnote: where the clean image is misclassified, the second choice is often the right label)"
    )
    if not (_in(m.adversarial, *SMALL, *LARGE) and _have(m, *SMALL, *LARGE)):
        return _missing("Fig. 5", statement, rule)
    t = m.adversarial
    diag = {n: _cell(t, "error", n, n) for n in t["models"]}
    clean = dict(zip(t["models"], t["clean_error"], strict=True))
    ok = all(diag[n] >= 1 - clean[n] - 0.01 for n in diag)
    measured = f"{_per_model(diag, _pct)} (clean error of the probed images: {_per_model(clean, _pct)})"
    return Claim("Fig. 5", statement, measured, "agrees" if ok else "differs", rule)


def adversarial_small_to_large(m: Measurements) -> Claim:
    statement = "Adversarial images of n = 2 and n = 3 do not transfer to n = 30: it still classifies 97% correctly."
    rule = (
        "agrees if n30's error on each of the n2 and n3 sets is at most 5% (3% +- 2 points); partly if so but "
        "fewer than 95% of those sets' searches crossed the boundary (a failed search leaves the clean image)"
    )
    if not (_in(m.adversarial, "n2", "n3", "n30") and _have(m, "n2", "n3", "n30")):
        return _missing("Fig. 5", statement, rule)
    err = {f"{s} set": _cell(m.adversarial, "error", s, "n30") for s in SMALL}
    worst = max(err.values())
    clean = float(m.adversarial["clean_error"][m.adversarial["models"].index("n30")])
    measured = (
        f"n30's error: {_per_model(err, _pct)} (accuracy {_pct(1 - worst)} on the worse one; "
        f"n30's clean error on the same images {_pct(clean)})"
    )
    success = {s: m.boundary[s]["success_rate"] for s in SMALL if s in m.boundary}
    if success:
        measured += "; boundary searches that succeeded: " + _per_model(success, _pct)
    verdict = "differs" if worst > 0.05 else ("agrees" if min(success.values(), default=0) >= 0.95 else "partly")
    return Claim("Fig. 5", statement, measured, verdict, rule)


def adversarial_large_to_small(m: Measurements) -> Claim:
    statement = "Adversarial images of n = 30 do transfer to n = 2, 3 (a substantial fraction is misclassified)."
    rule = "agrees if n2 and n3 misclassify at least 25% of the n30 set"
    if not (_in(m.adversarial, "n2", "n3", "n30") and _have(m, "n2", "n3", "n30")):
        return _missing("Fig. 5", statement, rule)
    err = {j: _cell(m.adversarial, "error", "n30", j) for j in SMALL}
    return Claim(
        "Fig. 5",
        statement,
        "error on the n30 set: " + _per_model(err, _pct),
        "agrees" if min(err.values()) >= 0.25 else "differs",
        rule,
    )


def rubbish_small(m: Measurements) -> Claim:
    statement = (
        "Rubbish of n = 2 gets about 98.5% confidence from n = 2, high confidence from n = 3, and about "
        "10% (chance) from n = 20 and n = 30 (beta_sm = 3.2)."
    )
    rule = "agrees if n2 -> n2 >= 90%, n2 -> n3 >= 80%, and n2 -> n20, n30 <= 15%"
    if not (_in(m.rubbish, *SMALL, *LARGE) and _have(m, *SMALL, *LARGE)):
        return _missing("Fig. 6", statement, rule)
    conf = {j: _cell(m.rubbish, "mean_confidence", "n2", j) for j in m.rubbish["models"]}
    ok = conf["n2"] >= 0.9 and conf["n3"] >= 0.8 and all(conf[j] <= 0.15 for j in LARGE)
    measured = "confidence on the n2 set: " + _per_model(conf, _pct) + _searches(m, "n2")
    return Claim("Fig. 6", statement, measured, "agrees" if ok else "differs", rule)


def rubbish_large(m: Measurements) -> Claim:
    statement = 'Rubbish of n = 30 is "nice images of digits" that every model accepts "without loss in confidence".'
    rule = (
        "agrees if every model gives the n30 set at least 80% mean confidence at beta_sm = 3.2 and no model "
        "is more than 5 points below n30's own confidence"
    )
    if not (_in(m.rubbish, *SMALL, *LARGE) and _have(m, *SMALL, *LARGE)):  # "every model": all four judge
        return _missing("Fig. 6", statement, rule)
    conf = {j: _cell(m.rubbish, "mean_confidence", "n30", j) for j in m.rubbish["models"]}
    measured = "confidence on the n30 set: " + _per_model(conf, _pct) + _searches(m, "n30")
    if _in(m.rubbish_calibrated, *m.rubbish["models"]):
        calibrated = {j: _cell(m.rubbish_calibrated, "mean_confidence", "n30", j) for j in m.rubbish["models"]}
        measured += "; at each model's calibrated beta_sm: " + _per_model(calibrated, _pct)
    ok = min(conf.values()) >= 0.8 and min(conf.values()) >= conf["n30"] - 0.05
    return Claim("Fig. 6", statement, measured, "agrees" if ok else "differs", rule)


def calibrated_beta(m: Measurements) -> Claim:
    statement = "beta_sm with mean confidence = accuracy: 4.7 (n = 2), 4.6 (n = 3), 4 (n = 20), 26 (n = 30)."
    rule = "agrees if every model's value is within 25% of the paper's; partly if some are"
    if not all(n in m.calibration for n in PAPER_BETA):
        return _missing("Fig. 7", statement, rule)
    have = [n for n in PAPER_BETA if m.calibration[n].get("beta_sm") is not None]
    if not have:
        return Claim("Fig. 7", statement, "no model could be calibrated", "differs", rule)
    ours = {n: m.calibration[n]["beta_sm"] for n in have}
    close = [abs(ours[n] / PAPER_BETA[n] - 1) <= 0.25 for n in have]
    verdict = "agrees" if all(close) and len(have) == len(PAPER_BETA) else ("partly" if any(close) else "differs")
    measured = _per_model(ours, lambda v: f"{v:.2f}")
    if len(have) < len(PAPER_BETA):
        measured += "; no calibrated value for " + ", ".join(n for n in PAPER_BETA if n not in have)
    return Claim("Fig. 7", statement, measured, verdict, rule)


def confidence_bins(m: Measurements) -> Claim:
    statement = "Test images binned by confidence: the error rate falls as the confidence rises."
    rule = (
        "agrees if, for every model, the most confident bin has a lower error than the least confident one "
        "(bins of the calibrated confidence holding at least 10 images; not measured where a model has fewer "
        "than two such bins)"
    )
    if not all(n in m.calibration for n in SMALL + LARGE):
        return _missing("Fig. 7", statement, rule)
    parts, ok, few = [], True, []
    for name, cal in m.calibration.items():
        if cal.get("beta_sm") is None:
            ok = False
            parts.append(f"{name}: no calibrated beta_sm ({cal.get('calibration_error', 'unknown reason')})")
            continue
        binned = cal["binned_error_calibrated"]
        bins = [(e, c) for e, c in zip(binned["error"], binned["count"], strict=True) if c >= 10]
        if len(bins) < 2:  # too few images to compare two bins: no evidence either way
            few.append(name)
            parts.append(f"{name}: fewer than two bins with 10 images")
            continue
        lo, hi = bins[0][0], bins[-1][0]
        ok = ok and hi < lo
        parts.append(f"{name} {_pct(lo)} -> {_pct(hi)}")
    verdict = "differs" if not ok else "not measured" if few else "agrees"
    return Claim("Fig. 7", statement, "error, least -> most confident bin: " + ", ".join(parts), verdict, rule)


CHECKS: tuple[Callable[[Measurements], Claim], ...] = (
    clean_error,
    memories,
    rubbish_pictures,
    boundary_pictures,
    adversarial_diagonal,
    adversarial_small_to_large,
    adversarial_large_to_small,
    rubbish_small,
    rubbish_large,
    calibrated_beta,
    confidence_bins,
)


def claim_keys() -> list[str]:
    """The name of every check, in the report's order."""
    return [check.__name__ for check in CHECKS]


def evaluate_claims(m: Measurements, limits: dict[str, str] | None = None) -> list[Claim]:
    """Every check's claim.  ``limits`` (claim key -> one line) says, measured, why a preset's models do not
    show a statement; it is attached to that claim when it does not agree, and never changes a verdict."""
    claims = [replace(check(m), key=check.__name__) for check in CHECKS]
    limits = limits or {}
    return [replace(c, limit=limits[c.key]) if c.key in limits and c.verdict != "agrees" else c for c in claims]
