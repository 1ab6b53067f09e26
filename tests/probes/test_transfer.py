from __future__ import annotations

import csv
import json

import pytest
import torch

from dam.errors import InputError
from dam.probes import BoundarySearch, RubbishSearch, adversarial_table, rubbish_table, save_table
from fakes import prototype_images, prototype_model


def test_tables_from_two_models(tmp_path) -> None:
    models = {"n2": prototype_model(2), "n3": prototype_model(3)}
    clean, labels = prototype_images(models["n2"], 10)
    sets = {name: BoundarySearch(model, eps=0.1, max_steps=400, m=2)(clean).past for name, model in models.items()}
    table = adversarial_table(models, sets, labels, clean)
    assert table["models"] == ["n2", "n3"] and len(table["error"]) == 2
    # own adversarial set: the model labels (almost) every image as its second choice, i.e. wrongly
    assert table["error"][0][0] >= 0.9 and table["error"][1][1] >= 0.9
    assert all(0 <= e <= 1 for e in table["clean_error"])

    targets = torch.arange(10)
    rsets = {
        name: RubbishSearch(model, eps=0.1, max_steps=200, output_tol=0.9, m=2)(
            targets, torch.Generator().manual_seed(0)
        ).images
        for name, model in models.items()
    }
    rt = rubbish_table(models, rsets)
    assert rt["beta_sm"] == [3.2, 3.2]
    assert all(0.1 <= v <= 1 for row in rt["mean_confidence"] for v in row)
    calibrated = rubbish_table(models, rsets, {"n2": 4.7, "n3": 4.6})
    assert calibrated["beta_sm"] == [4.7, 4.6]

    json_path, csv_path = save_table(table, tmp_path, "adversarial")
    assert json.loads(json_path.read_text()) == table
    rows = list(csv.reader(csv_path.open()))
    assert rows[0][1:] == ["n2", "n3"] and rows[-1][0] == "clean test images" and len(rows) == 4
    # what a table needs, checked in one line before any model runs
    with pytest.raises(InputError, match="no set of images for n3"):
        adversarial_table(models, {"n2": sets["n2"]}, labels, clean)
    with pytest.raises(InputError, match=r"one image per label \(10\); got \{'n3': 9\}"):
        adversarial_table(models, {**sets, "n3": sets["n3"][:9]}, labels, clean)
    with pytest.raises(InputError, match="no beta_sm for n3"):
        rubbish_table(models, rsets, {"n2": 4.7})
