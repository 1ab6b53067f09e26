"""The input rule of DenseAssociativeMemory.scores and MLPClassifier.forward: finite pixels in [-10, 10].

Non-finite pixels are called non-finite, finite ones out of range with their range (never "infinite" for
3e38), and scores are never NaN: finite within the accepted range, or an InputError.
"""

from __future__ import annotations

import pytest
import torch

from dam.baselines import MLPClassifier, MLPConfig
from dam.errors import InputError
from dam.model import ACCEPTED_PIXELS, DenseAssociativeMemory


def dam(n: int = 3, k: int = 16, T: float = 50.0, dtype: torch.dtype = torch.float32) -> DenseAssociativeMemory:
    return DenseAssociativeMemory(n, k, T, generator=torch.Generator().manual_seed(0), dtype=dtype)


def mlp(degree: int = 1) -> MLPClassifier:
    return MLPClassifier(MLPConfig(degree=degree, hidden=32), generator=torch.Generator().manual_seed(0))


def classifiers() -> list:
    return [dam(), dam(n=30, k=50, T=540.0), mlp(), mlp(degree=29)]


def images_with(value: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    x = torch.rand(3, 784, generator=torch.Generator().manual_seed(1)).to(dtype)
    x[1, 100] = value
    return x


@pytest.mark.parametrize("model", classifiers(), ids=["dam3", "dam30", "relu", "repu29"])
@pytest.mark.parametrize(
    "value, shown",
    [(1e15, "1e+15]"), (-1e15, "[-1e+15,"), (3e38, "3e+38]"), (11.0, "11]"), (255.0, "255]"), (-10.5, "[-10.5,")],
)
def test_finite_pixels_outside_the_range_are_named_with_their_range(model, value: float, shown: str) -> None:
    with pytest.raises(InputError, match=r"pixels must lie in \[-10, 10\]") as info:
        model(images_with(value))
    message = str(info.value)
    assert shown in message and "got values in" in message
    assert "NaN" not in message and "infinite" not in message and "\n" not in message


@pytest.mark.parametrize("model", classifiers(), ids=["dam3", "dam30", "relu", "repu29"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_pixels_are_called_non_finite(model, value: float) -> None:
    with pytest.raises(InputError, match="NaN or infinite pixels"):
        model(images_with(value))


def test_float64_pixels_beyond_float32_are_out_of_range_not_infinite() -> None:
    """1e300 would be inf once cast to the float32 model; its range is reported as it was given."""
    for model in (dam(), mlp()):
        with pytest.raises(InputError, match=r"1e\+300\]"):
            model(images_with(1e300, torch.float64))
        with pytest.raises(InputError, match=r"1e\+300\]"):
            model.check_images(images_with(1e300, torch.float64))


def test_check_images_stays_strict() -> None:
    for model in (dam(), mlp()):
        model.check_images(torch.rand(2, 784))
        for value, message in ((1.5, r"\[0, 1\]; got values in \[.*, 1.5\]"), (3e38, "3e\\+38"), (-0.5, r"\[0, 1\]")):
            with pytest.raises(InputError, match=message):
                model.check_images(images_with(value))
        with pytest.raises(InputError, match="NaN or infinite"):
            model.check_images(images_with(float("nan")))
        model(images_with(1.5))  # accepted by the forward pass: within the margin


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dam30_scores_are_finite_at_the_edges_of_the_accepted_range(dtype: torch.dtype) -> None:
    """n = 30 with every pixel at -10 or 10 and memories at +-1 (the training clip): F_n's arguments reach
    794 * 19 / T, whose 30th power overflows float32; the model computes in float64 and the result is finite."""
    low, high = ACCEPTED_PIXELS
    model = dam(n=30, k=50, T=540.0, dtype=dtype)
    with torch.no_grad():
        model.memories.copy_(torch.sign(model.memories))
        model.memories[:25] = 1.0  # memories aligned with the all-high image: the largest arguments
    x = torch.full((4, 784), high, dtype=dtype)
    x[1] = low
    x[2, ::2] = low
    x[3] = torch.rand(784, dtype=dtype)
    s = model.scores(x)
    assert s.dtype == dtype and torch.isfinite(s).all()
    assert s[0].abs().max() > 1e30  # really in the regime where float32 powers overflow
    assert torch.isfinite(model(x)).all()
    grad_x = x.clone().requires_grad_(True)
    model.scores(grad_x).sum().backward()  # the backward pass of accepted input runs


def test_scores_that_overflow_raise_instead_of_nan() -> None:
    """Extreme settings (n = 200, T = 1) overflow even float64 for ordinary images: InputError, not NaN."""
    model = dam(n=200, k=8, T=1.0, dtype=torch.float64)
    with torch.no_grad():
        model.memories.fill_(1.0)
    with pytest.raises(InputError, match=r"overflow.*pixels in \[1, 1\].*n = 200"):
        model.scores(torch.ones(2, 784, dtype=torch.float64))


def test_mlp_logits_that_overflow_raise_instead_of_nan() -> None:
    model = mlp(degree=29)
    with torch.no_grad():
        model.hidden.weight.fill_(1.0)
    with pytest.raises(InputError, match=r"logits overflow.*pixels in \[1, 1\]"):
        model(torch.ones(2, 784))


def test_empty_batches_still_work() -> None:
    assert dam().scores(torch.empty(0, 784)).shape == (0, 10)
    assert mlp()(torch.empty(0, 784)).shape == (0, 10)
