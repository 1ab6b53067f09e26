"""Settings from Python, as a notebook gives them: every public config and constructor refuses a bad value with
one DamError naming it, before any compute; NumPy scalars count as numbers; a wrong settings class is named."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dam import DAMConfig, DenseAssociativeMemory, MLPConfig, MLPTrainConfig, TrainConfig, load_model, train, train_mlp
from dam.data import seeded_subset
from dam.environment import denormals_flushed_in_training, denormals_flushed_now, flush_denormals
from dam.errors import ConfigError, DamError, InputError
from dam.probes import BoundarySearch, RubbishSearch
from dam.probes.confidence import calibrate_beta_sm, confidence
from dam.progress import show_progress
from dam.robustness import Detector
from dam.robustness.attacks import APGDCE, APGDT, FGSM, PGD, AutoAttack, HopSkipJump, Square
from dam.robustness.attacks.runner import AttackSuite
from dam.training import train_many
from dam.training.presets import preset
from fakes import need_foolbox


def model(n: int = 3) -> DenseAssociativeMemory:
    m = DenseAssociativeMemory(n, 8, 50.0, generator=torch.Generator().manual_seed(0))
    m.loss_power = n
    return m


BAD = {
    "DAMConfig temperature": lambda: DAMConfig(n=2, temperature="x"),
    "DAMConfig num_pixels": lambda: DAMConfig(n=2, num_pixels=0),
    "DAMConfig num_classes": lambda: DAMConfig(n=2, num_classes=-3),
    "DAM init_std": lambda: DenseAssociativeMemory(2, 8, 50.0, init_std=-1.0),
    "DAM dtype": lambda: DenseAssociativeMemory(2, 8, 50.0, dtype=torch.float16),
    "DAM num_memories=True": lambda: DenseAssociativeMemory(2, True),
    "DAM device": lambda: DenseAssociativeMemory(2, 8, 50.0, device="gpu0"),
    "AttackSuite hsj_norms": lambda: AttackSuite(hsj_norms=None),
    "MLPConfig degree": lambda: MLPConfig(degree=1.5),
    "MLPConfig hidden": lambda: MLPConfig(hidden="a"),
    "preset unknown setting": lambda: preset("n2", "quick", foo=1),
    "AttackSuite images": lambda: AttackSuite(images=2.5),
    "AttackSuite aa_steps": lambda: AttackSuite(aa_steps=2.5),
    "AttackSuite seed": lambda: AttackSuite(seed=-1),
    "AttackSuite budgets": lambda: AttackSuite(linf=("a",)),
    "AttackSuite NaN budget": lambda: AttackSuite(linf=(float("nan"),)),
    "AutoAttack steps 0": lambda: AutoAttack(model(), [0.1], steps=0),
    "APGDCE steps < 0": lambda: APGDCE(model(), [0.1], steps=-4),
    "APGDT targets": lambda: APGDT(model(), [0.1], targets=10),
    "Square queries": lambda: Square(model(), [0.1], queries=-1),
    "AutoAttack batch_size": lambda: AutoAttack(model(), [0.1], batch_size=0),
    "FGSM batch_size 0": lambda: FGSM(model(), [0.1], batch_size=0),
    "FGSM batch_size < 0": lambda: FGSM(model(), [0.1], batch_size=-1),
    "PGD NaN step": lambda: PGD(model(), [0.1], rel_stepsize=float("nan")),
    "HopSkipJump steps": lambda: HopSkipJump(model(), [0.1], steps=1.5),
    "string budget": lambda: FGSM(model(), "0.1"),
    "BoundarySearch patience": lambda: BoundarySearch(model(), patience=0),
    "BoundarySearch bisection": lambda: BoundarySearch(model(), bisection_steps=-1),
    "BoundarySearch max_steps": lambda: BoundarySearch(model(), max_steps=2.5),
    "RubbishSearch patience": lambda: RubbishSearch(model(), patience=0),
    "RubbishSearch noise": lambda: RubbishSearch(model(), noise_std=float("nan")),
    "search on an MLP": lambda: BoundarySearch(load_model_free_mlp()),
    "Detector NaN threshold": lambda: Detector(model(), model(), float("nan")),
    "Detector text threshold": lambda: Detector(model(), model(), "a"),
    "Detector false_rejection": lambda: Detector(model(), model(), 0.5, false_rejection=2.0),
    "confidence beta_sm < 0": lambda: confidence(torch.zeros(3, 10), beta_sm=-1.0),
    "confidence NaN beta_sm": lambda: confidence(torch.zeros(3, 10), beta_sm=float("nan")),
}


def load_model_free_mlp():
    from dam.baselines import MLPClassifier

    return MLPClassifier(MLPConfig(hidden=4))


@pytest.mark.parametrize("make", BAD.values(), ids=BAD.keys())
def test_a_bad_setting_is_one_dam_error(make) -> None:
    with pytest.raises(DamError) as info:
        make()
    assert "\n" not in str(info.value)


def test_a_search_names_a_model_that_is_not_a_dam() -> None:
    with pytest.raises(InputError, match="need a DAM"):
        BoundarySearch(load_model_free_mlp())


def test_numpy_scalars_are_numbers() -> None:
    config = TrainConfig(epochs=np.int64(2), lr=np.float32(0.04), num_memories=np.int32(10))
    assert type(config.epochs) is int and type(config.lr) is float and type(config.num_memories) is int
    assert DAMConfig(n=np.int64(3), temperature=np.float32(50)).temperature == 50.0
    assert MLPConfig(degree=np.int64(2)).degree == 2
    assert AttackSuite(images=np.int64(10), linf=np.float64(0.1)).linf == (0.1,)
    assert AutoAttack(model(), 0.1).epsilons == [0.1]  # one budget, as a list of one
    assert FGSM(model(), np.float32(0.25)).epsilons == [0.25]
    assert FGSM(model(), torch.tensor([0.0, 0.5])).epsilons == [0.0, 0.5]  # 0: the clean images, allowed
    assert AttackSuite(aa_fab=np.bool_(False)).aa_fab is False
    assert Detector(model(), model(), torch.tensor(0.5)).threshold == 0.5  # e.g. from torch.quantile
    assert DenseAssociativeMemory(3, 8, torch.tensor(50.0)).config.temperature == 50.0
    assert seeded_subset(torch.rand(6, 784), torch.arange(6), np.int64(3))[0].shape == (3, 784)
    assert BoundarySearch(model(), m=np.int64(2)).m == 2
    assert FGSM(model(), [0.1], seed=-1).seed == -1  # torch takes negative seeds


def test_a_settings_object_of_another_class_is_named(tmp_path) -> None:
    with pytest.raises(ConfigError, match="MLPTrainConfig"):
        train_mlp(MLPConfig(hidden=10), TrainConfig(epochs=1), tmp_path / "a")
    with pytest.raises(ConfigError, match="TrainConfig"):
        train(MLPTrainConfig(epochs=1), tmp_path / "b")
    with pytest.raises(ConfigError, match="TrainConfig"):
        train({"n": 3}, tmp_path / "c")
    with pytest.raises(ConfigError, match="MLPConfig"):
        train_mlp(MLPTrainConfig(), MLPTrainConfig(), tmp_path / "d")
    with pytest.raises(ConfigError, match="list"):
        train_many(TrainConfig(), tmp_path / "e")
    assert not any(tmp_path.iterdir())  # refused before any folder was made


def test_inputs_that_do_not_match_are_named() -> None:
    x, y = torch.rand(6, 784), torch.arange(6)
    with pytest.raises(InputError, match="one label per image"):
        seeded_subset(x, y[:5], 3)
    with pytest.raises(InputError, match="one label per image"):
        calibrate_beta_sm(model(), x, y[:3])
    with pytest.raises(InputError, match="one label per image"):  # a list is taken, of the right length
        calibrate_beta_sm(model(), x, [0, 1, 2, 3, 4])
    with pytest.raises(InputError, match="labels must be class indices, got a dict"):
        calibrate_beta_sm(model(), x, {"a": 1})
    with pytest.raises(InputError, match=r"0\.\.9"):
        RubbishSearch(model())(torch.tensor([10]))
    with pytest.raises(InputError, match="class indices"):
        RubbishSearch(model())("ab")
    with pytest.raises(ConfigError, match="list"):
        train_many(None, None)
    assert RubbishSearch(model(), max_steps=1)([1, 2], torch.Generator().manual_seed(0)).images.shape == (2, 784)


def test_attack_labels_are_checked() -> None:
    need_foolbox()
    with pytest.raises(InputError, match=r"labels must lie in 0\.\.9"):
        FGSM(model(), [0.1])(torch.rand(6, 784), torch.arange(6) + 10)


def test_loaded_models_are_in_eval_mode_on_a_checked_device(tmp_path) -> None:
    model().save(tmp_path / "run", {"train": {"m": 3}})
    loaded = load_model(tmp_path / "run", device="auto")
    assert not loaded.training and loaded.memories.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU"):
            load_model(tmp_path / "run", device="cuda")
    with pytest.raises(InputError, match="not a device"):
        load_model(tmp_path / "run", device="gpu0")


def test_robust_accuracy_is_not_rounded_to_float32() -> None:
    from dam.robustness.attacks import AttackResult

    broken = torch.tensor([[True] * 3 + [False] * 22])
    result = AttackResult("x", "linf", [0.1], torch.zeros(1, 25, 784), broken, torch.zeros(1, 25), 1.0)
    assert result.robust_accuracy() == [1 - 3 / 25]


def test_flushing_denormals_restores_the_callers_setting() -> None:
    before = denormals_flushed_now()
    if not torch.set_flush_denormal(True):  # a CPU without flush-to-zero
        pytest.skip("this CPU does not flush denormals")
    torch.set_flush_denormal(before)
    pool = torch.full((4_000_000,), 1e-39)  # split over every thread of the pool
    try:
        for outside in (False, True):
            torch.set_flush_denormal(outside)
            with flush_denormals():
                assert denormals_flushed_now() == (outside or denormals_flushed_in_training())
            assert denormals_flushed_now() == outside
            torch.set_flush_denormal(False)
            assert int((pool * 1.0 == 0).sum()) == 0  # no thread of the pool left flushing
    finally:
        torch.set_flush_denormal(before)


def test_tqdm_disable_turns_every_default_bar_off(monkeypatch) -> None:
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert show_progress(None) is False
    assert show_progress(True) is True  # an explicit request still wins
