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
