"""Adversarial fine-tuning: run folders, resume, the adversarials' labels, robustness before/after."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import dam.robustness.adversarial_training as adv_mod
from dam.errors import ConfigError, InputError, RunFolderError
from dam.model import CheckpointError, DenseAssociativeMemory
from dam.probes.boundary import BoundarySearch
from dam.robustness.adversarial_training import (
    AdversarialTrainConfig,
    adversarial_finetune,
    make_adversarials,
    robustness_differs,
    robustness_report,
    robustness_summary,
)
from fakes import moved_copy, prototype_images, prototype_model

# Small enough for seconds on one core: 3 minibatches of 100 (the quick schedule's size) per epoch.
SMALL = AdversarialTrainConfig(epochs=2, fraction=0.5, train_subset=300, max_steps=40, seed=3)


@pytest.fixture(scope="module")
def base_run(tiny_reproduction: Path) -> Path:
    """A DAM_3 trained on real MNIST by the shared tiny reproduction (read only here)."""
    return tiny_reproduction / "runs" / "n3"


def _lines(folder: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if "seconds" not in k}
            for x in (folder / "metrics.jsonl").read_text().splitlines()]  # fmt: skip


def test_settings_are_validated() -> None:
    for bad, name in [({"fraction": 0}, "fraction"), ({"fraction": 1.5}, "fraction"), ({"epochs": 0}, "epochs"),
                      ({"eps": 0}, "eps"), ({"max_steps": 0}, "max_steps"), ({"lr": -1.0}, "lr"),
                      ({"momentum": 1.0}, "momentum"), ({"train_subset": 0}, "train_subset")]:  # fmt: skip
        with pytest.raises(ValueError, match=name):
            AdversarialTrainConfig(**bad)
    with pytest.raises(ValueError, match="unknown"):
        AdversarialTrainConfig.from_dict({"epochs": 1, "temperature": 3})
    with pytest.raises(ValueError, match="batch_size <= train_subset"):
        AdversarialTrainConfig(batch_size=600, train_subset=500)


def test_the_base_runs_minibatch_is_cut_to_a_smaller_train_subset() -> None:
    """A cpu-preset base (minibatches of 1000) fine-tuned on 500 images, no --batch-size given: minibatches of
    500, not a refusal of a setting the user never gave (nor a silent single minibatch of another size)."""
    from dam.training.presets import preset

    base = preset("n3", "cpu")
    settings = adv_mod.finetune_settings(base, base.epochs, 70.0, AdversarialTrainConfig(train_subset=500),
                                         torch.float32)  # fmt: skip
    assert (base.batch_size, settings.batch_size, settings.train_subset) == (1000, 500, 500)


def test_adversarials_carry_the_true_label() -> None:
    model = prototype_model(3)
    x, y = prototype_images(model, 8)
    assert torch.equal(model.predict(x), y)
    adv = make_adversarials(BoundarySearch(model, eps=0.1, max_steps=400, m=2, progress=False), x, y)
    assert len(adv.labels) >= 7, "the hand-built model's searches should mostly succeed"
    assert torch.equal(adv.labels, y[adv.source])
    # one step past the boundary: the model labels them otherwise, training labels them truly
    assert (model.predict(adv.images) != adv.labels).all()
    assert float(adv.images.min()) >= 0.0 and float(adv.images.max()) <= 1.0
    torch.testing.assert_close(adv.l2, (adv.images - x[adv.source]).norm(dim=1))
    assert model.memories.requires_grad, "the search's weight freeze is undone"


def test_robustness_summary_is_finite() -> None:
    model = prototype_model(3)
    x, y = prototype_images(model, 8)
    s = robustness_summary(BoundarySearch(model, eps=0.1, max_steps=400, m=2, progress=False), x, y)
    assert s["images"] == 8 and s["clean_error"] == 0.0 and s["success_rate"] > 0.5
    for key in ("l2_mean", "l2_median", "l2_median_all", "linf_mean", "linf_median"):
        assert math.isfinite(s[key]) and s[key] > 0, key
    assert s["linf_mean"] <= s["l2_mean"]


def test_finetune_writes_a_run_folder_and_trains_on_true_labels(base_run, tmp_path, monkeypatch) -> None:
    steps: list[tuple[torch.Tensor, torch.Tensor]] = []
    made: list[tuple[torch.Tensor, torch.Tensor]] = []
    real_step, real_make = adv_mod.minibatch_step, adv_mod.make_adversarials

    def step(model, velocity, x, y, *args):
        steps.append((x.clone(), y.clone()))
        return real_step(model, velocity, x, y, *args)

    def make(search, images, labels):
        result = real_make(search, images, labels)
        made.append((labels[result.source], result.labels))
        return result

    monkeypatch.setattr(adv_mod, "minibatch_step", step)
    monkeypatch.setattr(adv_mod, "make_adversarials", make)
    model = adversarial_finetune(base_run, tmp_path / "ft", SMALL, progress=False)
    assert len(steps) == len(made) == 6  # 2 epochs of 3 minibatches
    for (x, y), (true, used) in zip(steps, made, strict=True):
        assert torch.equal(true, used) and torch.equal(y[len(y) - len(used) :], used)
        assert len(x) == 100 + len(used)
    assert sum(len(u) for _, u in made) > 0, "no adversarial was made; the test proves nothing"

    files = sorted(
        p.name for p in (tmp_path / "ft").iterdir() if not p.name.startswith(".")
    )  # .dam.lock: the folder lock
    assert files == ["config.json", "metrics.jsonl", "model.safetensors", "train_state.safetensors"]
    config = json.loads((tmp_path / "ft" / "config.json").read_text())
    base_config = json.loads((base_run / "config.json").read_text())
    assert config["adversarial"]["fraction"] == 0.5 and config["base_run"] == str(base_run.resolve())
    assert config["base_model_md5"] == adv_mod.model_md5(base_run)
    assert config["train"]["m"] == base_config["train"]["m"] and config["train"]["ramp_epochs"] == 0
    assert config["model"]["temperature"] == base_config["model"]["temperature"]
    assert config["environment"]["torch"] and config["seed"] == 3
    lines = _lines(tmp_path / "ft")
    assert [r["epoch"] for r in lines] == [1, 2]
    assert {"loss", "train_error", "test_error", "adversarial_fraction", "adversarials_made"} <= set(lines[0])
    assert sum(r["adversarials_made"] for r in lines) == sum(len(u) for _, u in made)
    loaded = DenseAssociativeMemory.load(tmp_path / "ft")
    assert torch.equal(loaded.memories, model.memories)
    assert not torch.equal(loaded.memories, DenseAssociativeMemory.load(base_run).memories)


def test_resume_matches_uninterrupted_run(base_run, tmp_path) -> None:
    full = adversarial_finetune(base_run, tmp_path / "full", SMALL, progress=False)
    adversarial_finetune(base_run, tmp_path / "cut", SMALL, progress=False, stop_after=1)
    with pytest.raises(RunFolderError, match="--resume"):
        adversarial_finetune(base_run, tmp_path / "cut", SMALL, progress=False)
    with pytest.raises(CheckpointError, match="differ"):
        adversarial_finetune(base_run, tmp_path / "cut", AdversarialTrainConfig(fraction=0.2), resume=True)
    from dam.training import train

    with pytest.raises(CheckpointError, match="adversarial-train"):  # plain training would lose its settings
        train(None, tmp_path / "cut", resume=True, progress=False)
    resumed = adversarial_finetune(base_run, tmp_path / "cut", None, progress=False, resume=True)
    assert torch.equal(resumed.memories, full.memories)
    assert _lines(tmp_path / "cut") == _lines(tmp_path / "full")


def test_bad_base_runs_are_refused(base_run, tmp_path) -> None:
    with pytest.raises(ValueError, match="base run itself"):
        adversarial_finetune(base_run, base_run, SMALL)
    prototype_model(3).save(tmp_path / "untrained")  # weights but no training settings (no m)
    with pytest.raises(CheckpointError, match="training settings"):
        adversarial_finetune(tmp_path / "untrained", tmp_path / "out", SMALL)


def test_robustness_report_keeps_the_folder_rules_from_python(base_run, tmp_path) -> None:
    """The rules of dam adversarial-train (tests/cli/test_adversarial_train.py) hold from Python too."""
    out = tmp_path / "tuned"
    adversarial_finetune(base_run, out, replace(SMALL, epochs=1), progress=False)
    report = robustness_report(base_run, out, eval_images=30)
    written = (out / "robustness.json").read_text()
    assert robustness_report(base_run, out, eval_images=30) == report  # the same: reused, not measured again
    # another measurement is refused, the finished one kept ...
    with pytest.raises(InputError, match=r"measured otherwise .*eval_images \(30, 20\).*replace=True"):
        robustness_report(base_run, out, eval_images=20)
    assert (out / "robustness.json").read_text() == written
    # ... a folder that is not a fine-tuning of the named base run is refused, nothing written into it ...
    other = moved_copy(base_run, tmp_path / "other-base")
    with pytest.raises(ConfigError, match="not a fine-tuning of"):
        robustness_report(other, out, eval_images=30)
    with pytest.raises(ConfigError, match="not a fine-tuning of"):
        robustness_report(base_run, other, eval_images=30)
    assert not (other / "robustness.json").exists()
    # ... and replace=True measures again, also where only the search differs (never the old record handed back)
    assert robustness_report(base_run, out, eval_images=20, replace=True)["eval_images"] == 20
    with pytest.raises(InputError, match=r"search \(changed: max_steps\)"):
        robustness_report(base_run, out, eval_images=20, search_options={"max_steps": 300})
    again = robustness_report(base_run, out, eval_images=20, search_options={"max_steps": 300}, replace=True)
    assert again["search"]["max_steps"] == 300
    assert json.loads((out / "robustness.json").read_text())["search"]["max_steps"] == 300


def test_a_measurement_of_dam_0_10_counts_as_made_by_the_current_rule(base_run, tmp_path) -> None:
    record = {"eval_images": 30, "eval_seed": 0, "environment": {"dam": "0.10.0"}}  # dam 0.10 wrote no "rule"
    assert robustness_differs(record, tmp_path, base_run, eval_images=30, eval_seed=0, weights=False) == []
    older = {**record, "environment": {"dam": "0.9.0"}}
    assert [d.split(" ")[0] for d in robustness_differs(older, tmp_path, base_run, eval_images=30, eval_seed=0,
                                                        weights=False)] == ["rule"]  # fmt: skip
