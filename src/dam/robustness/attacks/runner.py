"""Attacks over run folders, with outputs on disk: what ``dam attack`` and ``dam reproduce`` call.

Per model: robust accuracy against budget (L-inf and L2) under FGSM, PGD, HopSkipJump and transfer
from the source models, the gradient-health check in float32 and float64, and the masking verdict,
written to ``OUT/models/<name>.json`` once finished and reused while the model's weights, the sources'
weights, the image subset and the settings are unchanged (each norm's part is kept on the way, so that a
killed attack resumes at the norm it was in).  The source models' attacks, whose adversarials
every model is shown, are kept in ``OUT/sources`` by the same rule.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dam.data import load_dataset
from dam.data.sources import DATASETS
from dam.environment import environment_info, resolve_device
from dam.errors import InputError, changed, is_finite_number, is_whole, plain_fields, plain_number, violated
from dam.io import atomic_write_bytes, atomic_write_json
from dam.progress import progress_lines
from dam.results import key_matches, read_json, result_key, tensor_md5
from dam.robustness.attacks.accuracy import RobustnessTable, add_to_worst_case, evaluation_subset, robust_accuracy
from dam.robustness.attacks.standard import (
    FGSM,
    LOGITS_NOTE,
    PGD,
    Attack,
    AttackResult,
    HopSkipJump,
    Transfer,
    check_budgets,
    require_foolbox,
)
from dam.robustness.masking import GradientHealth, gradient_health, masking_verdict, starvation
from dam.runs import OutputFolder, common_dataset, load_model, model_md5, model_name
from dam.workers import Job, check_workers, run_jobs

logger = logging.getLogger(__name__)
PROGRESS = progress_lines(logger)  # the default log of this module's jobs


@dataclass(frozen=True)
class AttackSuite:
    """Which attacks, budgets and images.  Budgets are in [0, 1] pixel units.

    ``images``: how many seeded test images (``seed`` picks them and seeds every attack); ``linf``, ``l2``: the
    budgets of each norm; ``pgd_steps``: Foolbox PGD's iterations; ``hsj_steps``, ``hsj_max_evals``,
    ``hsj_norms``: HopSkipJump's iterations, gradient-estimate queries and norms (0 steps: not run); the
    AutoAttack and convergence-check settings below.
    """

    images: int = 500
    seed: int = 0
    linf: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3)
    l2: tuple[float, ...] = (0.5, 1.0, 2.0, 3.0)
    pgd_steps: int = 40
    hsj_steps: int = 20
    hsj_max_evals: int = 400
    hsj_norms: tuple[str, ...] = ("linf",)  # HopSkipJump is the costly one: queries, not gradients
    # The AutoAttack protocol (dam.robustness.attacks.autoattack): "standard" (the field's standard),
    # "plus" (with restarts), "none"; aa_steps / aa_fab / square_queries below the protocol's 100 / True /
    # 5000 make a reduced run, which the report names as such.
    autoattack: str = "standard"
    aa_steps: int = 100
    aa_fab: bool = True
    square_queries: int = 5000
    # Carlini et al.'s convergence check: twice the iterations, restarts and another seed on the survivors.
    effort_check: bool = True

    @property
    def autoattack_protocol(self) -> str:
        """What ran, in words the report shows: the standard protocol, or how it was reduced."""
        if self.autoattack == "none":
            return "none"
        iterations = "APGD iterations" if not self.aa_fab else "APGD and FAB iterations"
        changed: dict[str, list[str]] = {"reduced": [], "strengthened": []}
        if self.aa_steps != 100:
            changed["reduced" if self.aa_steps < 100 else "strengthened"].append(f"{self.aa_steps} {iterations}")
        if not self.aa_fab:
            changed["reduced"].append("no FAB-T")
        if self.square_queries != 5000:
            square = f"Square {self.square_queries} queries" if self.square_queries else "no Square"
            changed["reduced" if self.square_queries < 5000 else "strengthened"].append(square)
        return f"AutoAttack {self.autoattack}" + "".join(f", {how} ({', '.join(what)})"
                                                         for how, what in changed.items() if what)  # fmt: skip

    @property
    def autoattack_cascade(self) -> str:
        """The order in which the protocol's attacks see the images, in words the report shows."""
        if self.autoattack == "none":
            return "not run"
        later = (["FAB-T"] if self.aa_fab else []) + (["Square"] if self.square_queries else [])
        if self.autoattack == "plus":
            later += ["APGD-CE, untargeted APGD-DLR and untargeted FAB with 5 restarts each"]
        steps = "; then ".join(f"{a} on the images every attack before it left" for a in later)
        return "APGD on cross-entropy and targeted APGD on the scale-invariant DLR loss, each on every image" + (
            f"; then {steps}" if steps else ""
        )

    def protocols(self, model: nn.Module, norm: str) -> list[Any]:
        if self.autoattack == "none":
            return []
        from dam.robustness.attacks.autoattack import AutoAttack

        return [AutoAttack(model, self.budgets(norm), norm=norm, version=self.autoattack, steps=self.aa_steps,
                           fab=self.aa_fab, square_queries=self.square_queries, seed=self.seed)]  # fmt: skip

    def __post_init__(self) -> None:
        # budgets in increasing order, once each: the tables, the curves and the checklist's "largest budget"
        # read them so, and an adversarial within a budget counts within every larger one
        whole = ("images", "seed", "pgd_steps", "hsj_steps", "hsj_max_evals", "aa_steps", "square_queries")
        plain_fields(self, (*whole, "aa_fab", "effort_check"))
        types = {
            **{f"{k} is an integer": is_whole(getattr(self, k)) for k in whole},
            "aa_fab is True or False": isinstance(self.aa_fab, bool),
            "effort_check is True or False": isinstance(self.effort_check, bool),
        }
        bad = [rule for rule, ok in types.items() if not ok]
        if bad:
            raise InputError(violated("attack settings", bad, self))
        for norm in ("linf", "l2"):
            values = getattr(self, norm)
            values = [values] if is_finite_number(plain_number(values)) else values  # one budget
            try:
                object.__setattr__(self, norm, tuple(sorted({float(e) for e in values})))
            except (TypeError, ValueError):
                raise InputError(f"{norm} budgets must be numbers, got {values!r}") from None
        norms = (self.hsj_norms,) if isinstance(self.hsj_norms, str) else self.hsj_norms
        if not isinstance(norms, (tuple, list)) or not all(isinstance(n, str) for n in norms):
            raise InputError(f"hsj_norms must be a tuple of norm names (linf, l2), got {self.hsj_norms!r}")
        object.__setattr__(self, "hsj_norms", tuple(norms))
        rules = {
            "autoattack in standard, plus, none": self.autoattack in ("standard", "plus", "none"),
            "aa_steps >= 1": self.aa_steps >= 1,
            "square_queries >= 0": self.square_queries >= 0,
            "0 <= seed < 2**63": 0 <= self.seed < 2**63,
            "images >= 1": self.images >= 1,
            "linf budgets given": bool(self.linf),
            "l2 budgets given": bool(self.l2),
            "pgd_steps >= 1": self.pgd_steps >= 1,
            "hsj_steps >= 0": self.hsj_steps >= 0,
            "hsj_max_evals >= 1": self.hsj_max_evals >= 1,
            "hsj_norms among linf, l2": set(self.hsj_norms) <= {"linf", "l2"},
        }
        bad = [rule for rule, ok in rules.items() if not ok]
        if bad:
            raise InputError(violated("attack settings", bad, self))
        for norm in ("linf", "l2"):  # positive (the attacks' own rule, checked here before any folder is made), and
            check_budgets(norm, self.budgets(norm), positive=True)  # at most the largest budget that limits anything

    def budgets(self, norm: str) -> list[float]:
        return list(self.linf if norm == "linf" else self.l2)

    def white_box(self, model: nn.Module, norm: str) -> list[Attack]:
        eps = self.budgets(norm)
        return [
            FGSM(model, eps, norm=norm, seed=self.seed),
            PGD(model, eps, norm=norm, steps=self.pgd_steps, seed=self.seed),
        ]

    def decision_based(self, model: nn.Module, norm: str) -> list[Attack]:
        if norm not in self.hsj_norms or self.hsj_steps == 0:
            return []
        return [HopSkipJump(model, self.budgets(norm), norm=norm, steps=self.hsj_steps,
                            initial_gradient_eval_steps=min(100, self.hsj_max_evals),
                max_gradient_eval_steps=self.hsj_max_evals, seed=self.seed)]  # fmt: skip

    # What the source attacks are, beyond their names, in the reuse keys: results made otherwise are redone.
    SOURCE_RULE = "apgd-t attacks every budget in full (dam 0.3)"
    # ... and, where there are transfers, what a failed source attack hands on (results made before are redone)
    HAND_ON_RULE = "apgd-t hands on its highest-loss iterate where it fails (dam 0.10)"
    # The same for HopSkipJump, in a model's key when it runs: before dam 0.5 its gradient estimate followed
    # Foolbox's, scaled over the batch, and was weaker the larger the batch (dam.robustness.attacks.standard).
    DECISION_RULE = "hopskipjump estimates its gradient per image and starts from any attacked image (dam 0.5)"
    # And for what a model's tables record: since dam 0.8 the images broken beyond the gradient attacks, which the
    # masking check weighs image by image; an older result is attacked again (reproduce) or refused (attack).
    TABLE_RULE = "per-image record of what gradient-free attacks broke beyond the gradient attacks (dam 0.8)"

    def transferred(self) -> list[str]:
        """The attacks whose adversarials on a source model are transferred: PGD on cross-entropy, and (with
        AutoAttack on) targeted APGD on the DLR loss.  PGD alone is starved on a large-n source as it is on a
        large-n target (measured on the quick models: DAM_30's seed-1 substitute's PGD adversarials left
        DAM_30 87% at L-inf 0.1, its worst case 70%)."""
        return ["pgd"] + (["apgd-t"] if self.autoattack != "none" else [])

    def source_attacks(self, model: nn.Module, norm: str) -> dict[str, Attack]:
        """The attacks of :meth:`transferred` on a source model, by the suffix of their transfer's name
        ("" for PGD, " (apgd-t)")."""
        attacks: dict[str, Attack] = {}
        for name in self.transferred():
            if name == "pgd":
                attacks[""] = PGD(model, self.budgets(norm), norm=norm, steps=self.pgd_steps, seed=self.seed)
            elif name == "apgd-t":
                from dam.robustness.attacks.autoattack import APGDT

                # every budget attacked in full: a larger budget's own (larger) perturbation transfers better than
                # the smallest one that fooled the source (measured: DAM_2 kept 79% against the carried-up
                # adversarials of the degree-2 network at L-inf 0.2-0.4)
                # and where it fails, its highest-loss iterate is handed on, not the clean image (HAND_ON_RULE)
                attacks[f" ({name})"] = APGDT(model, self.budgets(norm), norm=norm, steps=self.aa_steps,
                                              seed=self.seed, every_budget=True, hand_on=True)  # fmt: skip
        return attacks


def attack_images(
    suite: AttackSuite, data_dir: str | os.PathLike[str] | None, dataset: str = "mnist"
) -> tuple[Tensor, Tensor, Tensor]:
    """The seeded test subset every model is attacked on, from the runs' data set."""
    x, y = load_dataset(dataset, "test", data_dir=data_dir)
    return evaluation_subset(x.reshape(-1, 784), y, suite.images, suite.seed)


def _made_with(suite: AttackSuite, images: Tensor, transfers: bool = True) -> dict[str, Any]:
    """The parts of every attack key that are the suite's and the images' (a model's and a source's); what a
    failed source attack hands on only where there are transfers (``transfers=False``: a model attacked without
    sources, whose result of an older dam stays valid)."""
    made = {"suite": asdict(suite), "images_md5": tensor_md5(images), "transfers": suite.transferred(),
            "source_rule": suite.SOURCE_RULE}  # fmt: skip
    return {**made, "hand_on_rule": suite.HAND_ON_RULE} if transfers else made


def _key(run: str, sources: dict[str, str], suite: AttackSuite, images: Tensor) -> dict[str, Any]:
    """What a model's attack result was made from (the package's one reuse rule, :mod:`dam.results`)."""
    decision = suite.DECISION_RULE if suite.hsj_steps and suite.hsj_norms else None
    return result_key(weights=model_md5(run), sources=sources, decision_rule=decision, table_rule=suite.TABLE_RULE,
                      **_made_with(suite, images, bool(sources)))  # fmt: skip


RESULT_TENSORS = ("adversarials", "success", "distances")  # what AttackResult holds as tensors


def source_attack_results(
    source: str,
    images: Tensor,
    labels: Tensor,
    suite: AttackSuite,
    folder: Path,
    device: str = "cpu",
    log: Callable[[str], None] = PROGRESS,
) -> dict[str, dict[str, AttackResult]]:
    """The transferred attacks' results on a source model, per norm and suffix (:meth:`AttackSuite.source_attacks`).

    Each norm's results are kept in ``folder`` (``<source>-<norm>.safetensors`` with a JSON key beside it) and
    reused while the source's weights, the suite and the images are unchanged: at full size they take half an
    hour for a large-n source, which a resumed attack stage would otherwise pay again.
    """
    from safetensors.torch import load_file
    from safetensors.torch import save as st_save

    name = model_name(source)
    key = result_key(weights=model_md5(source), **_made_with(suite, images))
    model: nn.Module | None = None
    results: dict[str, dict[str, AttackResult]] = {}
    for norm in ("linf", "l2"):
        # (names spelled out: a run folder's name may hold dots, which Path.with_suffix would cut at)
        record, arrays = folder / f"{name}-{norm}.json", folder / f"{name}-{norm}.safetensors"
        saved = _saved(record)
        if key_matches(saved, key, "key") and arrays.exists():
            tensors = load_file(str(arrays))
            results[norm] = {
                r["suffix"]: AttackResult(attack=r["attack"], norm=norm, epsilons=r["epsilons"],
                                          queries_per_image=r["queries_per_image"], seconds=r["seconds"],
                                          **{t: tensors[f"{i}.{t}"] for t in RESULT_TENSORS})
                for i, r in enumerate(saved["results"])
            }  # fmt: skip
            log(f"source {name}, {norm}: reused {record}")
            continue
        if model is None:
            model = load_model(source, device=device).eval()
        results[norm] = {}
        for suffix, attack in suite.source_attacks(model, norm).items():
            results[norm][suffix] = result = attack(images, labels)
            log(f"  source {name}, {norm} {result.attack}: {result.seconds:.0f} s, its own robust accuracy "
                + ", ".join(f"{e:g}: {100 * a:.1f}%" for e, a in zip(result.epsilons, result.robust_accuracy(),
                                                                     strict=True)))  # fmt: skip
        by_suffix = list(results[norm].items())
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {f"{i}.{t}": getattr(r, t).detach().cpu().contiguous()
                   for i, (_, r) in enumerate(by_suffix) for t in RESULT_TENSORS}  # fmt: skip
        # the key goes last and is removed first: tensors never sit beside a key they were not made with
        record.unlink(missing_ok=True)
        atomic_write_bytes(arrays, st_save(tensors))
        atomic_write_json(record, {"key": key, "results": [
            {"suffix": suffix, "attack": r.attack, "epsilons": r.epsilons, "queries_per_image": r.queries_per_image,
             "seconds": r.seconds} for suffix, r in by_suffix]})  # fmt: skip
    return results


def partial_path(folder: Path, name: str, norm: str) -> Path:
    """Where one norm of a model's attack is kept until the model's result is written (names spelled out: a
    run folder's name may hold dots)."""
    return folder / f"{name}-{norm}.partial.json"


def attack_model(
    run: str,
    images: Tensor,
    labels: Tensor,
    suite: AttackSuite,
    source_results: dict[str, dict[str, dict[str, AttackResult]]],
    device: str = "cpu",
    *,
    parts: Path | None = None,
    key: dict[str, Any] | None = None,
    log: Callable[[str], None] = PROGRESS,
) -> dict[str, Any]:
    """Everything for one model; ``source_results[norm][source][suffix]`` are a source model's attack results
    to transfer, by the suffix of :meth:`AttackSuite.source_attacks`.

    With ``parts`` (a folder) and ``key``, each norm's finished measurements are written there and reused
    when the key matches, so that a kill loses at most the norm under way (a large-n model's attack is
    an hour or more on a CPU at the cpu preset's size)."""
    name = model_name(run)
    model = load_model(run, device=device).eval()
    tables: dict[str, RobustnessTable] = {}
    starved: dict[str, list[float] | None] = {}
    effort: dict[str, dict[str, Any]] = {}
    for norm in ("linf", "l2"):
        part = None if parts is None or key is None else partial_path(parts, name, norm)
        saved = None if part is None else _saved(part)
        if saved is not None and key_matches(saved, key, "key"):
            tables[norm] = RobustnessTable.from_json(saved["table"])
            starved[norm] = saved["starved"]
            if saved.get("effort") is not None:
                effort[norm] = saved["effort"]
            log(f"  {name}, {norm}: reused {part}")
            continue
        attacks: list[Any] = [*suite.white_box(model, norm), *suite.decision_based(model, norm)]
        made_by = suite.source_attacks(model, norm)  # (describe the source attack of each transfer)
        attacks += [Transfer(model, made_by[suffix], src + suffix, result)
                    for src, by_attack in source_results.get(norm, {}).items() if src != name
                    for suffix, result in by_attack.items()]  # fmt: skip
        table, results = robust_accuracy(model, name, images, labels, attacks, suite.protocols(model, norm), log)
        tables[norm] = table
        starved[norm] = starvation(model, results.get("pgd"))
        if suite.effort_check and suite.autoattack != "none":
            from dam.robustness.attacks.autoattack import effort_check

            effort[norm], check = effort_check(model, images, labels, results["worst case"].success,
                                               suite.budgets(norm), norm=norm, steps=suite.aa_steps,
                                               seed=suite.seed)  # fmt: skip
            # what more effort broke is broken: it joins the worst case, as a column of its own
            settings = {"attack": "effort check", "gradients": True, "attacks": effort[norm]["attacks"]}
            add_to_worst_case(table, results, "effort check", check, settings, log)
        if part is not None:
            atomic_write_json(part, {"key": key, "table": table.to_json(), "starved": starved[norm],
                                     "effort": effort.get(norm)})  # fmt: skip
    health = [gradient_health(model, images, labels, dtype) for dtype in (torch.float32, torch.float64)]
    verdict = masking_verdict(list(tables.values()), health, starved)
    return {"model": name, "run": str(Path(run).resolve()), "tables": {k: t.to_json() for k, t in tables.items()},
            "gradient_health": [h.to_json() for h in health], "starvation": starved, "effort_check": effort,
            "verdict": verdict}  # fmt: skip


def _attack_and_write(
    run: str,
    images: Tensor,
    labels: Tensor,
    suite: AttackSuite,
    source_results: dict[str, dict[str, dict[str, AttackResult]]],
    device: str,
    out: Path,
    key: dict[str, Any],
    log: Callable[[str], None] = PROGRESS,
) -> dict[str, Any]:
    """One model's whole attack, written to ``OUT/models/<name>.json`` (its partial files then removed)."""
    name = model_name(run)
    log(f"attack {name}: {len(images)} images ...")
    result = {**attack_model(run, images, labels, suite, source_results, device, parts=out / "models", key=key,
                             log=log), "key": key}  # fmt: skip
    atomic_write_json(out / "models" / f"{name}.json", result)
    for norm in ("linf", "l2"):
        partial_path(out / "models", name, norm).unlink(missing_ok=True)
    log(f"  {result['verdict']['verdict']}")  # (the verdict begins with the model's name)
    return result


def _saved(path: Path) -> dict[str, Any] | None:
    saved = read_json(path)
    return saved if isinstance(saved, dict) else None


def attacks_done(
    runs: list[str],
    out: str | os.PathLike[str],
    suite: AttackSuite,
    *,
    sources: list[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> bool:
    """Whether :func:`run_attacks` would reuse every model's result (and only rewrite the summary)."""
    out = Path(out)
    if not (out / "robustness.json").exists():
        return False
    images = attack_images(suite, data_dir, common_dataset(runs))[0]
    source_md5 = {model_name(s): model_md5(s) for s in sources or []}
    for run in runs:
        saved = _saved(out / "models" / f"{model_name(run)}.json")
        if not key_matches(saved, _key(run, source_md5, suite, images), "key"):
            return False
    return True


def check_sources(runs: list[str], sources: list[str]) -> None:
    """Refuse a transfer source that would be skipped in silence: one named as an attacked run but another model
    (a model's transfers are named by its source's folder name, and a model is not its own source), or one whose
    only target would be itself."""
    attacked = {model_name(r): r for r in runs}
    for source in sources:
        name = model_name(source)
        if name in attacked and model_md5(source) != model_md5(attacked[name]):
            raise InputError(f"transfer source {source} and attacked run {attacked[name]} are both named {name} but "
                             "are different models; give one of them another folder name")  # fmt: skip
        if set(attacked) == {name}:
            raise InputError(f"transfer source {source}: the only model attacked is {name} itself, and a model is "
                             "not its own transfer source")  # fmt: skip


def run_attacks(
    runs: list[str],
    out: str | os.PathLike[str],
    suite: AttackSuite,
    *,
    sources: list[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    log: Callable[[str], None] = PROGRESS,
    replace: bool = False,
    workers: int = 1,
) -> dict[str, Any]:
    """Attack every run (transfer from every source) and write OUT/robustness.json, CSVs and the figure.

    ``workers``: models (and sources) attacked at once, each in its own process with its share of the cores
    (:func:`dam.workers.run_jobs`); 1 attacks them here, one after another.

    Finished models are reused from ``OUT/models`` when their key (weights, sources, suite, images) matches.
    A finished model made otherwise is refused before any attack, or with ``replace`` (the CLI's
    ``--force``, a pipeline's own folder) attacked again with a warning.  ``out`` is locked while it is written
    (a second writer is refused), and a training run's folder is refused.
    """
    require_foolbox()
    check_workers(workers)
    if not isinstance(suite, AttackSuite):
        raise InputError(f"suite must be an AttackSuite (e.g. AttackSuite(images=100)), got a {type(suite).__name__}")
    runs = [runs] if isinstance(runs, (str, os.PathLike)) else list(runs)  # one run folder given as itself
    sources = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources or [])
    device = str(resolve_device(device))  # a bad device: one line, before the folder is made
    for run in [*runs, *sources]:  # a typo or damaged weights fail at once, before data are read
        load_model(run)
    check_sources(runs, sources)
    folder = OutputFolder(out, "attack output folder")
    folder.check_results()
    with folder.lock():
        return _attack_into(runs, Path(out), suite, sources, data_dir, device, log, replace, workers)


def _attack_into(
    runs: list[str], out: Path, suite: AttackSuite, sources: list[str], data_dir: str | os.PathLike[str] | None,
    device: str, log: Callable[[str], None], replace: bool, workers: int,
) -> dict[str, Any]:  # fmt: skip
    """run_attacks' work, in its locked folder."""
    images, labels, index = attack_images(suite, data_dir, common_dataset(runs))
    (out / "models").mkdir(parents=True, exist_ok=True)  # (after the data are read: a missing data set leaves none)
    source_md5 = {model_name(s): model_md5(s) for s in sources}
    keys = {run: _key(run, source_md5, suite, images) for run in runs}
    for run, key in keys.items():  # never a finished result replaced silently; checked before any attack
        path = out / "models" / f"{model_name(run)}.json"
        saved = _saved(path)
        if saved is not None and not key_matches(saved, key, "key"):
            now, before = result_key(**key), saved.get("key") or {}
            how = f"other settings or inputs ({changed(sorted(k for k in now if before.get(k) != now[k]))})"
            if not replace:
                raise InputError(f"{path} holds a finished attack made with {how}; use another --out, "
                                 "or --force (replace=True) to replace it")  # fmt: skip
            logger.warning("replacing %s, made with %s", path, how)
    models: dict[str, Any] = {}
    todo = []
    for run in runs:
        name = model_name(run)
        path = out / "models" / f"{name}.json"
        saved = _saved(path)
        if key_matches(saved, keys[run], "key"):
            log(f"attack {name}: reused {path}")
            # The verdict is re-derived from the saved measurements, so a refined rule applies to old results.
            tables = [RobustnessTable.from_json(t) for t in saved["tables"].values()]
            health = [GradientHealth(**h) for h in saved["gradient_health"]]
            saved["verdict"] = masking_verdict(tables, health, saved.get("starvation"))
            models[name] = saved
        else:
            todo.append(run)
    if todo:  # the sources' attacks are made (or reused) only when some model needs them
        source_results: dict[str, dict[str, dict[str, AttackResult]]] = {norm: {} for norm in ("linf", "l2")}
        made = run_jobs([Job(source_attack_results, (src, images, labels, suite, out / "sources", device))
                         for src in sources], workers, log)  # fmt: skip
        for src, by_norm in zip(sources, made, strict=True):
            for norm, by_suffix in by_norm.items():
                source_results[norm][model_name(src)] = by_suffix
        done = run_jobs([Job(_attack_and_write, (run, images, labels, suite, source_results, device, out, keys[run]))
                         for run in todo], workers, log)  # fmt: skip
        models.update((model_name(run), result) for run, result in zip(todo, done, strict=True))
        models = {model_name(run): models[model_name(run)] for run in runs}  # in the order asked for
    spec = DATASETS[common_dataset(runs)]
    summary = {
        "suite": asdict(suite),
        "images": {
            "count": len(images),
            "seed": suite.seed,
            "test_indices_md5": tensor_md5(index),
            "dataset": spec.title,
            "how": f"the first `count` of torch.randperm({spec.sizes['test']}) seeded with `seed`, "
            f"{spec.title} test set",
        },
        "logits": LOGITS_NOTE,
        "protocol": suite.autoattack_protocol,
        "cascade": suite.autoattack_cascade,
        "sources": sorted(source_md5),
        "environment": environment_info(),
        "models": models,
    }
    atomic_write_json(out / "robustness.json", summary)
    for name, model in models.items():
        atomic_write_json(out / "models" / f"{name}.robustbench.json",
                          robustbench_record(model, suite, common_dataset(runs), len(images)))  # fmt: skip
    write_tables(summary, out)
    from dam.robustness.attacks.figures import robust_accuracy_figure

    robust_accuracy_figure(summary, out / "robust_accuracy.png")
    return summary


def robustbench_record(model: dict[str, Any], suite: AttackSuite, dataset: str, count: int) -> dict[str, Any]:
    """One model's result in the shape of a RobustBench entry: per threat model the budgets, the number of
    test images, clean accuracy, robust accuracy per attack and the worst case, and the library versions."""
    from importlib import metadata

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    threat = {"linf": "Linf", "l2": "L2"}
    return {
        "model": model["model"],
        "dataset": dataset,
        "n_examples": count,
        "test_subset": f"first {count} of a permutation of the test set seeded with {suite.seed}",
        "protocol": suite.autoattack_protocol,
        # not a RobustBench entry's number: stricter (every attack of the suite, not AutoAttack's alone) and on a
        # seeded random subset rather than the first images of the test set
        "robust_accuracy_is": "the worst case per image over every attack run (AutoAttack's and the others)",
        "threat_models": {
            threat[norm]: {
                "eps": t["epsilons"],
                "clean_accuracy": t["clean_accuracy"],
                "robust_accuracy": dict(zip((f"{e:g}" for e in t["epsilons"]), t["worst_case"], strict=True)),
                # an attack that saw only the survivors of those before it has no robust accuracy of its own
                # (the images it never saw would count as robust): what it added to the worst case instead
                "per_attack": {
                    a: dict(zip((f"{e:g}" for e in t["epsilons"]), accs, strict=True))
                    for a, accs in t["attacks"].items()
                    if a not in t.get("extra_broken", {})
                },
                "broken_on_survivors": {
                    a: dict(zip((f"{e:g}" for e in t["epsilons"]), shares, strict=True))
                    for a, shares in t.get("extra_broken", {}).items()
                },
            }
            for norm, t in model["tables"].items()
        },
        "libraries": {
            "dam": environment_info()["dam"],
            **{d: version(d) for d in ("torch", "pyautoattack", "foolbox")},
        },
    }


def write_tables(summary: dict[str, Any], out: Path) -> None:
    """robust_accuracy_<norm>.csv (model, attack, measure, clean accuracy, one column per budget; the measure is the
    robust accuracy, or for an attack run on the survivors of those before it the share it broke beyond them) and
    masking.csv (one verdict per model)."""
    import csv
    import io

    for norm in ("linf", "l2"):
        buf = io.StringIO()
        w = csv.writer(buf)
        eps = summary["suite"][norm]
        w.writerow(["model", "attack", "measure", "clean", *[f"eps={e:g}" for e in eps]])
        for name, m in summary["models"].items():
            t = m["tables"][norm]
            extra = t.get("extra_broken", {})
            for attack, accs in {**t["attacks"], "worst case": t["worst_case"]}.items():
                # an attack on the survivors of those before it: the share it broke beyond them, not a robust
                # accuracy (the images it never attacked would count as robust)
                measure, values = ("broken beyond the attacks before", extra[attack]) if attack in extra else (
                    "robust accuracy", accs)  # fmt: skip
                w.writerow([name, attack, measure, f"{t['clean_accuracy']:.4f}", *[f"{a:.4f}" for a in values]])
        atomic_write_bytes(out / f"robust_accuracy_{norm}.csv", buf.getvalue().encode())
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        [
            "model",
            "zero_grad_float32",
            "zero_grad_float64",
            "nonfinite_float32",
            "nonfinite_float64",
            "masking_suspected",
            "ce_overstates",
            "verdict",
        ]
    )
    for name, m in summary["models"].items():
        h = {g["dtype"]: g for g in m["gradient_health"]}
        zero, nonfinite = [h[d]["zero_fraction"] for d in h], [h[d]["nonfinite_fraction"] for d in h]
        w.writerow([name, *zero, *nonfinite, m["verdict"]["masking_suspected"], m["verdict"]["ce_overstates"],
                    m["verdict"]["verdict"]])  # fmt: skip
    atomic_write_bytes(out / "masking.csv", buf.getvalue().encode())
