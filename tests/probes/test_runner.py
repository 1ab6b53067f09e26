"""Per-model probe outputs on disk: a model that cannot be calibrated is recorded as such, not a crash."""

from __future__ import annotations

import pytest
import torch

from dam.errors import InputError
from dam.probes.runner import run_calibration
from fakes import prototype_images, prototype_model


def test_calibration_of_a_model_without_a_calibrated_beta_is_recorded(tmp_path):
    model = prototype_model(3)
    model.save(tmp_path / "m3")
    images, labels = prototype_images(model, count=40)
    labels = labels.clone()
    labels[:4] = (labels[:4] + 1) % 10  # 90% accuracy: a beta_sm exists
    good = run_calibration(tmp_path / "m3", tmp_path / "out", images, labels)
    assert good["beta_sm"] is not None and good["images"] == 40
    wrong = model.predict(images).add(1) % 10  # accuracy 0: no beta_sm makes mean confidence equal to it
    bad = run_calibration(tmp_path / "m3", tmp_path / "out-wrong", images, wrong)
    assert bad["beta_sm"] is None and "accuracy" in bad["calibration_error"]
    assert "binned_error_paper_beta" in bad and "binned_error_calibrated" not in bad
    # A saved calibration of other images is neither reused nor replaced silently: refused, or replaced when asked.
    with pytest.raises(InputError, match=r"other inputs \(changed: images_md5\).*--force"):
        run_calibration(tmp_path / "m3", tmp_path / "out", images[:30], labels[:30])
    again = run_calibration(tmp_path / "m3", tmp_path / "out", images[:30], labels[:30], replace=True)
    assert again["images"] == 30


def test_weights_fingerprint_ignores_how_the_file_was_written(tmp_path):
    """Saving the same weights again must not make finished probe results stale; other weights must."""
    from dam.runs import model_md5

    model = prototype_model(3)
    model.save(tmp_path / "a")
    first = model_md5(tmp_path / "a")
    model.save(tmp_path / "a", {"note": "written again"}, overwrite=True)
    assert model_md5(tmp_path / "a") == first
    with torch.no_grad():
        model.memories[0, 0] += 0.5
    model.save(tmp_path / "a", overwrite=True)
    assert model_md5(tmp_path / "a") != first
