from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dam.errors import DivergedError
from dam.model import CheckpointError, DAMConfig, DenseAssociativeMemory, InputError
from numpy_oracle import outputs


def small_model(n: int = 3, k: int = 16, T: float = 50.0, seed: int = 0, **kw) -> DenseAssociativeMemory:
    return DenseAssociativeMemory(n, k, T, generator=torch.Generator().manual_seed(seed), **kw)


def test_accepts_flat_and_image_shapes() -> None:
    model = small_model()
    x = torch.rand(5, 1, 28, 28)
    y_img = model(x)
    y_flat = model(x.reshape(5, 784))
    assert y_img.shape == (5, 10)
    torch.testing.assert_close(y_img, y_flat)
    assert ((y_img >= -1) & (y_img <= 1)).all()
    torch.testing.assert_close(torch.tanh(model.scores(x)), y_img)


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.rand(5, 785), "shaped"),
        (torch.rand(5, 3, 28, 28), "shaped"),
        (torch.rand(784), "shaped"),
        (torch.zeros(5, 784, dtype=torch.uint8), "floating point"),
    ],
)
def test_rejects_bad_shapes_and_dtypes(bad: torch.Tensor, message: str) -> None:
    with pytest.raises(InputError, match=message):
        small_model()(bad)


def test_forward_refuses_nan_pixels() -> None:
    x = torch.rand(2, 784)
    x[0, 0] = float("inf")
    with pytest.raises(InputError, match="NaN or infinite"):
        small_model()(x)


def test_check_images_names_nan_and_range() -> None:
    model = small_model()
    x = torch.rand(3, 784)
    model.check_images(x)
    x[1, 5] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        model.check_images(x)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        model.check_images(torch.full((2, 784), 255.0))


def test_weights_are_readable() -> None:
    model = small_model(n=20, k=7, T=300.0)
    assert model.memories.shape == (7, 794)
    assert model.n == 20 and model.temperature == 300.0
    assert model.visible_memories.shape == (7, 784) and model.label_memories.shape == (7, 10)


def test_init_is_the_papers_gaussian() -> None:
    xi = small_model(k=2000).memories.detach()
    assert abs(float(xi.mean()) + 0.3) < 0.01 and abs(float(xi.std()) - 0.3) < 0.01


def test_invalid_config_is_rejected() -> None:
    for kwargs in ({"n": 1}, {"n": 3, "temperature": 0.0}, {"n": 3, "num_memories": 0}):
        with pytest.raises(ValueError):
            DenseAssociativeMemory(**kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n, T", [(40, 30.0), (40, 1000.0), (30, 30.0), (2, 30.0), (2, 1000.0)])
def test_extreme_arguments_stay_finite_and_accurate(dtype: torch.dtype, n: int, T: float) -> None:
    """|argument| up to 794 (all pixels and weights at +-1) with n up to 40 and T from 30 to 1000."""
    k = 8
    model = DenseAssociativeMemory(n, k, T, dtype=dtype)
    xi = torch.ones(k, 794, dtype=torch.float64)
    xi[:, 784:] = -1.0  # every label weight -1: h = 784 + 10 = 794 at its largest
    xi[::2, 784 + 3] = 1.0  # some memories vote for class 3, keeping the gaps of the classes distinct
    xi[1::4, :392] = -1.0  # and some memories see half the image with the opposite sign
    with torch.no_grad():
        model.memories.copy_(xi)
    x = torch.stack([torch.ones(784), torch.zeros(784), torch.full((784,), 0.5)]).to(dtype)
    s = model.scores(x)
    y = model(x)
    assert torch.isfinite(s).all() and torch.isfinite(y).all()
    expected = outputs(xi.numpy(), x.double().numpy(), n, T)
    np.testing.assert_allclose(y.detach().double().numpy(), expected, rtol=1e-5, atol=1e-6)
    # gradients are finite too (zero where tanh saturates)
    xg = x.clone().requires_grad_(True)
    model(xg).sum().backward()
    assert torch.isfinite(xg.grad).all() and torch.isfinite(model.memories.grad).all()


def test_predict_batches_like_forward() -> None:
    model = small_model()
    x = torch.rand(23, 784)
    assert torch.equal(model.predict(x, batch_size=5), model(x).argmax(dim=1))


def test_save_load_roundtrip(tmp_path) -> None:
    model = small_model(n=20, T=321.0)
    model.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = DenseAssociativeMemory.load(tmp_path)
    assert loaded.config == model.config
    assert torch.equal(loaded.memories, model.memories)
    x = torch.rand(4, 784)
    torch.testing.assert_close(loaded(x), model(x))


def test_checkpoint_has_no_pickle(tmp_path) -> None:
    small_model().save(tmp_path)
    raw = (tmp_path / "model.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])
    assert set(header) == {"memories", "__metadata__"}
    assert b"\x80\x04" not in raw[:16]  # no pickle protocol marker at the start


def test_load_errors_are_clear(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="no such run folder"):
        DenseAssociativeMemory.load(tmp_path / "nope")
    small_model().save(tmp_path)
    weights = tmp_path / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        DenseAssociativeMemory.load(tmp_path)
    weights.write_bytes(good)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(CheckpointError, match="version 99"):
        DenseAssociativeMemory.load(tmp_path)
    config["model"]["num_memories"] = 17
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="shape"):
        DenseAssociativeMemory.load(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="JSON"):
        DenseAssociativeMemory.load(tmp_path)
    weights.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        DenseAssociativeMemory.load(tmp_path)


def test_nan_weights_are_refused(tmp_path) -> None:
    model = small_model()
    with torch.no_grad():
        model.memories[0, 0] = math.nan
    model.save(tmp_path)
    with pytest.raises(CheckpointError, match="NaN"):
        DenseAssociativeMemory.load(tmp_path)


def test_compiled_kernel_matches_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """The torch.compile path (used for real training) computes the same values and gradients."""
    # T such that the scores are far from zero (T = 200 left them near 1e-36, which any kernel matches)
    model = small_model(n=20, k=64, T=1.5)
    with torch.no_grad():
        model.memories.mul_(0.2).add_(0.1)
    x = torch.rand(32, 784)

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        model.memories.grad = None
        s = model.scores(x)
        (s * torch.linspace(-1, 1, 10)).sum().backward()
        return s.detach().clone(), model.memories.grad.clone()

    monkeypatch.setenv("DAM_COMPILE", "0")
    eager = run()
    monkeypatch.setenv("DAM_COMPILE", "1")
    import dam.model

    compiled = run()
    assert not dam.model.compile_failed(), "torch.compile failed; the fast path is not being tested"
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(compiled[1], eager[1], rtol=1e-4, atol=1e-6)


def test_compiled_kernel_serves_every_batch_size_an_attack_shrinks_to(monkeypatch: pytest.MonkeyPatch) -> None:
    """Attacks run the compiled kernels on the images still standing: batches of every size, some not a
    multiple of the backward's block, one of a single image.  Scores and input gradients equal the eager ones."""
    model = small_model(n=30, k=64, T=1.5)  # scores of 1e3 to 1e11: far from zero
    with torch.no_grad():
        model.memories.mul_(0.2).add_(0.1)

    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.clone().requires_grad_(True)
        s = model.scores(x)
        (grad,) = torch.autograd.grad((s * torch.linspace(-1, 1, 10)).sum(), x)
        return s.detach(), grad

    import dam.model

    for batch in (60, 37, 100, 1, 13):
        x = torch.rand(batch, 784, generator=torch.Generator().manual_seed(batch))
        monkeypatch.setenv("DAM_COMPILE", "0")
        eager = run(x)
        monkeypatch.setenv("DAM_COMPILE", "1")
        compiled = run(x)
        assert not dam.model.compile_failed(), "torch.compile failed; the fast path is not being tested"
        torch.testing.assert_close(compiled[0], eager[0], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(compiled[1], eager[1], rtol=1e-4, atol=1e-6)


def test_non_finite_weights_are_named_not_blamed_on_the_images() -> None:
    """A model whose memories an overflowing training step left NaN says so; its images are not at fault."""
    model = DenseAssociativeMemory(3, 20)
    with torch.no_grad():
        model.memories[0, 0] = float("nan")
    with pytest.raises(DivergedError, match="memories hold NaN or infinity"):  # a FloatingPointError too
        model(torch.rand(2, 784))


def test_save_never_replaces_a_saved_model_silently(tmp_path) -> None:
    from dam.errors import RunFolderError

    first, second = small_model(n=3), small_model(n=20)
    first.save(tmp_path / "run", {"train": {"m": 3}})
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    with pytest.raises(RunFolderError, match=r"holds a saved model already.*overwrite=True"):
        second.save(tmp_path / "run")
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before  # untouched
    second.save(tmp_path / "run", overwrite=True)
    assert DenseAssociativeMemory.load(tmp_path / "run").config == second.config


def test_built_from_its_config_as_the_baselines_are() -> None:
    config = DAMConfig(n=20, num_memories=30, temperature=100.0)
    assert DenseAssociativeMemory(config, generator=torch.Generator().manual_seed(0)).config == config
    with pytest.raises(InputError, match="a DAMConfig or the sizes"):
        DenseAssociativeMemory(config, 16, 50.0)  # never silently one or the other
    assert DenseAssociativeMemory(3).config == DAMConfig(n=3, num_memories=2000, temperature=540.0)
