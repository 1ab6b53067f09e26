from __future__ import annotations

import math

import pytest
import torch

from dam.probes import PAPER_BETA_SM, calibrate_beta_sm, confidence, confidence_binned_error


def test_papers_beta_gives_0985_for_a_clean_output() -> None:
    y = -torch.ones(1, 10)
    y[0, 4] = 1.0
    z = float(confidence(y, PAPER_BETA_SM))
    assert z == pytest.approx(math.exp(3.2) / (math.exp(3.2) + 9 * math.exp(-3.2)))
    assert abs(z - 0.985) < 0.001


def test_calibration_meets_accuracy() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (3000,), generator=g)
    outputs = torch.rand(3000, 10, generator=g) * 2 - 1
    outputs[torch.arange(3000), labels] += 0.6  # mostly right, not always
    outputs = outputs.clamp(-1, 1)
    accuracy = float((outputs.argmax(1) == labels).double().mean())
    beta = calibrate_beta_sm(None, None, labels, outputs=outputs)
    assert abs(float(confidence(outputs, beta).mean()) - accuracy) < 1e-3
    with pytest.raises(ValueError, match="accuracy"):
        calibrate_beta_sm(None, None, outputs.argmax(1), outputs=outputs)  # 100% accurate: no such beta


def test_binned_error_counts_everything() -> None:
    g = torch.Generator().manual_seed(1)
    outputs = torch.rand(500, 10, generator=g) * 2 - 1
    labels = torch.randint(0, 10, (500,), generator=g)
    table = confidence_binned_error(outputs, labels, beta_sm=5.0)
    assert sum(table["count"]) == 500 and len(table["error"]) == len(table["edges"]) - 1


def test_outputs_as_a_model_returns_them_and_bad_ones(recwarn) -> None:
    from dam.errors import InputError
    from fakes import prototype_images, prototype_model

    model = prototype_model(3)
    x, y = prototype_images(model, 40)
    y[:6] = (y[:6] + 1) % 10  # some wrong, so that a beta_sm meets the accuracy
    outputs = model(x)  # carries gradient history, as a notebook user's would
    assert outputs.requires_grad
    beta = calibrate_beta_sm(None, None, y.tolist(), outputs=outputs)  # labels as a list: one per image
    table = confidence_binned_error(outputs, y, beta)
    assert sum(table["count"]) == 40 and not [w for w in recwarn if "requires_grad" in str(w.message)]
    with pytest.raises(InputError, match=r"40 images \(or outputs\) and labels of shape \(3,\)"):
        confidence_binned_error(outputs, y[:3], beta)
    broken = outputs.detach().clone()
    broken[0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN or infinite"):  # never a NaN confidence
        confidence(broken)
    with pytest.raises(InputError, match=r"shape \(images, classes\)"):
        confidence(outputs[0])
