"""The stages of ``dam reproduce`` that go past the paper, under OUT/beyond/:

    baselines/<name>      MLP baselines (``dam train --model mlp-relu|mlp-repu``)
    substitutes/<name>-seed<S>  the same DAM preset trained from another seed: the most similar substitute
                          model, whose adversarials are transferred to the original (Carlini et al.'s checklist)
    attacks/              standard attacks on every DAM and baseline, masking verdicts (``dam attack``)
    detector/             the junk detector: DAM_2's labels guarded by DAM_30 (``dam detect``)
    detector-agreement/   the same, also rejecting inputs on which the two disagree (``--agreement``)
    adversarial/<name>-adv  adversarially fine-tuned DAMs with before/after robustness (``dam adversarial-train``),
                          attacked like the others

Like the paper's stages, each is skipped when its outputs exist and were made from the same weights and
settings.  Without the `attacks` extra the attack stage is skipped with a log line and the report says so.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from dam.io import atomic_write_json
from dam.progress import progress_lines
from dam.results import key_matches, read_json
from dam.runs import finished_with

logger = logging.getLogger(__name__)
PROGRESS = progress_lines(logger)  # the default log of this module's jobs

DETECTOR_CLASSIFIER, DETECTOR_GUARD = "n2", "n30"  # the paper's pairing: accurate but vulnerable, and large n


def _baseline_configs(settings: dict[str, Any], seed: int) -> tuple[Any, Any]:
    from dam.baselines import MLPConfig
    from dam.training import MLPTrainConfig

    model_keys = {f.name for f in fields(MLPConfig)}
    model = MLPConfig(**{k: v for k, v in settings.items() if k in model_keys})
    train = MLPTrainConfig(**{"seed": seed, **{k: v for k, v in settings.items() if k not in model_keys}})
    return model, train


def _autoattack_available() -> bool:
    from dam.errors import MissingExtraError
    from dam.robustness.attacks.autoattack import require_autoattack

    try:
        require_autoattack()
    except MissingExtraError:
        return False
    return True


def _same_key(path: Path, key: dict[str, Any]) -> bool:
    """The package's one reuse rule (:mod:`dam.results`): the key on disk equals the key of the request."""
    return key_matches(read_json(path), key)


def run_beyond(
    plan: Any,
    out: Path,
    runs: list[Path],
    stages: Any,
    *,
    data_dir: str | os.PathLike[str] | None,
    device: str = "cpu",
    progress: bool | None = None,
    log: Callable[[str], None] = PROGRESS,
    workers: int = 1,
) -> None:
    """Run the past-the-paper stages of ``plan`` (a ReproducePreset) after the paper's, into OUT/beyond;
    ``workers``: models the attack stage attacks at once."""
    from dam.runs import model_md5
    from dam.training import train_mlp

    beyond = out / "beyond"
    by_name = {r.name: r for r in runs}
    baselines = []
    for name, settings in plan.baselines.items():
        run = beyond / "baselines" / name
        model_cfg, train_cfg = _baseline_configs(settings, plan.seed)

        def train(run: Path = run, m: Any = model_cfg, t: Any = train_cfg) -> None:
            train_mlp(m, t, run, data_dir=data_dir, device=device, resume=True, progress=progress)

        done = lambda run=run, m=model_cfg, t=train_cfg: finished_with(run, model=asdict(m), train=asdict(t))  # noqa: E731
        stages.run(f"train {name}", train, done)
        baselines.append(run)

    from dam.robustness.detector_sets import foolbox_available

    substitutes = []
    # A substitute serves the attack stage only: not trained where that stage will not run.
    for name in plan.substitutes if plan.attacks is not None and foolbox_available() else ():
        if name not in by_name:
            log(f"[substitute {name}] skipped: {name} is not among this reproduction's models")
            continue
        from dam.training import train as train_dam
        from dam.training.presets import preset

        config = preset(name, plan.schedule, seed=plan.seed + 1, **plan.train_overrides)
        run = beyond / "substitutes" / f"{name}-seed{config.seed}"

        def train_substitute(run: Path = run, config: Any = config) -> None:
            train_dam(config, run, data_dir=data_dir, device=device, resume=True, progress=progress)

        stages.run(f"train {run.name}", train_substitute, lambda run=run, c=config: finished_with(run, train=asdict(c)))
        substitutes.append(run)

    settings = dict(plan.adversarial or {})
    names, eval_images = settings.pop("models", []), settings.pop("eval_images", 500)
    tuned_runs: list[Path] = []  # attacked below beside the models they came from
    for name in names:
        if name not in by_name:
            log(f"[adversarial {name}] skipped: {name} is not among this reproduction's models")
            continue
        from dam.robustness.adversarial_training import (
            ROBUSTNESS_RULE,
            AdversarialTrainConfig,
            adversarial_finetune,
            robustness_report,
        )
        from dam.runs import training_m

        config = AdversarialTrainConfig.from_dict({"seed": plan.seed, **settings})
        base, tuned = by_name[name], beyond / "adversarial" / f"{name}-adv"
        key = {"base": model_md5(base), "config": settings, "eval_images": eval_images,
               "search_options": plan.search_options, "robustness_rule": ROBUSTNESS_RULE}  # fmt: skip

        def finetune(base: Path = base, tuned: Path = tuned, config: Any = config, key: dict = key) -> None:
            adversarial_finetune(base, tuned, config, data_dir=data_dir, device=device, resume=True,
                                 progress=progress)  # fmt: skip
            options = {"m": training_m(base), **plan.search_options}
            # replace: this stage's own folder, whose key.json decides what is made again
            robustness_report(base, tuned, eval_images=eval_images, eval_seed=plan.seed, data_dir=data_dir,
                              device=device, search_options=options, replace=True, progress=progress)  # fmt: skip
            atomic_write_json(tuned / "key.json", key)

        stages.run(f"adversarial {name}", finetune, lambda tuned=tuned, key=key: _same_key(tuned / "key.json", key))
        tuned_runs.append(tuned)

    if plan.attacks is not None:
        from dam.robustness.attacks.runner import AttackSuite, attacks_done, run_attacks
        from dam.robustness.attacks.standard import MissingExtraError, require_foolbox

        try:
            require_foolbox()
        except MissingExtraError as exc:
            log(f"[attacks] skipped: {exc}")
            atomic_write_json(beyond / "attacks" / "skipped.json", {"reason": str(exc)})  # the report's reason
        else:
            # the reproduction's seed picks the attacked images and seeds the attacks, as it does everything else
            settings = {k: tuple(v) if isinstance(v, list) else v for k, v in plan.attacks.items()}
            suite = AttackSuite(**{"seed": plan.seed, **settings})
            targets = [str(r) for r in [*runs, *tuned_runs, *baselines]]
            sources = [str(b) for b in [*baselines, *substitutes]]
            folder = beyond / "attacks"

            def attack() -> None:
                (folder / "skipped.json").unlink(missing_ok=True)
                # The reproduction's own folder: results made otherwise (an older dam's suite) are redone.
                run_attacks(targets, folder, suite, sources=sources, data_dir=data_dir, device=device, log=log,
                            replace=True, workers=workers)  # fmt: skip

            done = lambda: attacks_done(targets, folder, suite, sources=sources, data_dir=data_dir)  # noqa: E731
            stages.run("attacks", attack, done)

    if plan.detector is not None and {DETECTOR_CLASSIFIER, DETECTOR_GUARD} <= set(by_name):
        from dam.robustness.adaptive import ADAPTIVE_RULE
        from dam.robustness.detector import ROC_RULE, DetectorError
        from dam.robustness.detector_sets import run_detection

        classifier, guard = by_name[DETECTOR_CLASSIFIER], by_name[DETECTOR_GUARD]
        detector_settings = dict(plan.detector)
        adaptive = any(k.startswith("adaptive") for k in detector_settings)
        if adaptive and not _autoattack_available():
            log("[detector] adaptive attack skipped: it needs the reference AutoAttack (pip install 'dam[attacks]')")
            detector_settings = {k: v for k, v in detector_settings.items() if not k.startswith("adaptive")}
            adaptive = False
        for stem, agreement in (("detector", False), ("detector-agreement", True)):
            folder = beyond / stem
            key = {"classifier": model_md5(classifier), "guard": model_md5(guard), "settings": detector_settings,
                   "probes": [model_md5(r) for r in runs], "agreement": agreement,
                   "foolbox": foolbox_available(), "roc_rule": ROC_RULE}  # fmt: skip
            if adaptive:
                key["adaptive_rule"] = ADAPTIVE_RULE

            def detect(folder: Path = folder, key: dict = key, agreement: bool = agreement) -> None:
                (folder / "skipped.json").unlink(missing_ok=True)
                try:
                    run_detection(classifier, guard, folder, probes=[str(out / "probes")], seed=plan.seed,
                                  data_dir=data_dir, agreement=agreement, device=device, replace=True,
                                  **detector_settings)  # fmt: skip
                except DetectorError as exc:  # e.g. weak models that disagree on too many clean images
                    log(f"[{folder.name}] not run: {exc}")
                    (folder / "detector.json").unlink(missing_ok=True)
                    atomic_write_json(folder / "skipped.json", {"reason": str(exc)})
                atomic_write_json(folder / "key.json", key)

            stages.run(stem, detect, lambda folder=folder, key=key: _same_key(folder / "key.json", key))
