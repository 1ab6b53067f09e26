"""The probe commands as a user runs them (``python -m dam`` in a subprocess): boundary, rubbish, calibrate,
transfer and figures, their reuse of finished results, and their refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fakes import dam, one_line_error, prototype_model, succeeded, tiny_mnist


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("probes")
    data = tiny_mnist(root / "mnist")
    runs = []
    for n in (2, 3):
        folder = root / f"dam{n}"
        prototype_model(n).save(folder, {"train": {"m": n}})  # the searches use the run's training m
        runs.append(str(folder))
    return data, runs


def test_transfer_writes_tables_and_reuses_results(setup, tmp_path) -> None:
    data, runs = setup
    out = tmp_path / "out"
    argv = ["transfer", *runs, "--out", str(out), "--images", "20", "--per-class", "2", "--data-dir", str(data),
            "--max-steps", "60", "--no-progress"]  # fmt: skip
    text = succeeded(dam(*argv)).stdout
    assert "adversarial transfer" in text and "rubbish_calibrated" in text
    for stem in ("adversarial_transfer", "rubbish_transfer", "rubbish_calibrated_transfer"):
        table = json.loads((out / f"{stem}.json").read_text())
        assert table["models"] == ["dam2", "dam3"]
        assert (out / f"{stem}.csv").exists()
    for name in ("dam2", "dam3"):
        for f in ("boundary.safetensors", "boundary.json", "rubbish.safetensors", "rubbish.json", "calibration.json"):
            assert (out / name / f).exists()
    stamp = (out / "dam2" / "boundary.safetensors").stat().st_mtime_ns
    succeeded(dam(*argv))  # a second run reuses every finished per-model result
    assert (out / "dam2" / "boundary.safetensors").stat().st_mtime_ns == stamp
    calibration = out / "dam2" / "calibration.json"
    made = json.loads(calibration.read_text())
    calibration.write_text(calibration.read_text()[:10])  # torn (a kill mid-write of an older dam, a full disk)
    succeeded(dam(*argv))  # made again, not a traceback
    assert json.loads(calibration.read_text())["beta_sm"] == made["beta_sm"]


def test_boundary_and_rubbish_commands(setup, tmp_path) -> None:
    data, runs = setup
    out = tmp_path / "o"
    common = ["--out", str(out), "--max-steps", "50", "--no-progress"]
    succeeded(dam("boundary", runs[0], "--images", "8", "--data-dir", str(data), *common))
    printed = succeeded(dam("rubbish", runs[0], "--per-class", "1", *common)).stdout  # from noise: no --data-dir
    summary = json.loads((out / "dam2" / "rubbish.json").read_text())
    assert summary["search"]["max_steps"] == 50 and summary["per_class"] == 1
    assert "success" in printed
    # the same --out with other settings is refused rather than silently reusing the old result
    line = one_line_error(dam("rubbish", runs[0], "--per-class", "1", *common[:-3], "--max-steps", "51",
                              "--no-progress"))  # fmt: skip
    assert "other search settings" in line
    # other inputs (the seed): refused too, the finished result kept; --force replaces it
    before = (out / "dam2" / "rubbish.json").read_text()
    line = one_line_error(dam("rubbish", runs[0], "--per-class", "1", "--seed", "3", *common))
    assert "other inputs (changed: seed)" in line and "--force" in line
    assert (out / "dam2" / "rubbish.json").read_text() == before
    succeeded(dam("rubbish", runs[0], "--per-class", "1", "--seed", "3", "--force", *common))
    assert json.loads((out / "dam2" / "rubbish.json").read_text())["seed"] == 3


@pytest.mark.parametrize(
    ("command", "sizes", "other"),
    [
        ("rubbish", ["--per-class", "1", "--max-steps", "20", "--no-progress"], ["--seed", "3"]),
        ("boundary", ["--images", "4", "--max-steps", "20", "--no-progress"], ["--images", "5"]),
        ("calibrate", ["--images", "20"], ["--images", "21"]),
    ],
)
def test_a_refusal_on_a_later_run_comes_before_any_result(setup, tmp_path, command, sizes, other) -> None:
    data, runs = setup
    common = [*sizes, "--out", str(tmp_path / "o"), *([] if command == "rubbish" else ["--data-dir", str(data)])]
    succeeded(dam(command, runs[1], *common))
    line = one_line_error(dam(command, runs[0], runs[1], *common, *other))  # dam3's result: made from other inputs ...
    assert "other inputs" in line
    assert not (tmp_path / "o" / "dam2").exists()  # ... and nothing was made for dam2 before that was found


def test_probe_command_on_missing_run_is_one_line(tmp_path) -> None:
    assert "no such run folder" in one_line_error(dam("boundary", str(tmp_path / "nope"), "--out", str(tmp_path / "o")))


def test_probes_refuse_before_making_their_folder(setup, tmp_path) -> None:
    data, runs = setup
    mlp = tmp_path / "mlp"
    mlp.mkdir()
    (mlp / "config.json").write_text('{"kind": "mlp"}')
    twin = tmp_path / "b" / "dam2"
    shutil.copytree(runs[0], twin)
    out = tmp_path / "o"
    for argv, message in (
        (["rubbish", runs[0], str(mlp)], "holds a baseline (mlp), not a DAM"),
        (["rubbish", runs[0], str(twin)], "two runs are named dam2"),
        (["boundary", runs[0], "--images", "20000"], "between 1 and 10000, got 20000: the MNIST test set"),
        (["rubbish", runs[0], "--float64"], "unrecognized arguments: --float64"),  # rubbish always is float64
        (["rubbish", runs[0], "--data-dir", str(data)], "unrecognized arguments: --data-dir"),  # it reads no data
    ):
        line = one_line_error(dam(*argv, "--out", str(out), *(["--data-dir", str(data)] if argv[0] == "boundary"
                                                             else [])))  # fmt: skip
        assert message in line
    junk = tmp_path / "junk"
    junk.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):  # fmt: skip
        (junk / name).write_bytes(b"not an IDX file")
    for command in ("boundary", "calibrate"):  # the data are read before the output folder is made
        assert "magic" in one_line_error(dam(command, runs[0], "--out", str(out), "--data-dir", str(junk)))
    assert not out.exists()


def test_figures_without_probe_outputs_say_so(setup, tmp_path) -> None:
    _, runs = setup
    err = succeeded(dam("figures", runs[0], "--out", str(tmp_path / "empty"))).stderr
    assert "holds no probe outputs of dam2: only their memories are drawn" in err


def test_figures_are_written_as_png(setup, tmp_path) -> None:
    data, runs = setup
    out = tmp_path / "out"
    argv = ["transfer", *runs, "--out", str(out), "--images", "12", "--per-class", "1", "--data-dir", str(data),
            "--max-steps", "60", "--no-progress"]  # fmt: skip
    succeeded(dam(*argv))
    succeeded(dam("figures", *runs, "--out", str(out)))
    names = sorted(p.name for p in (out / "figures").iterdir())
    expected = {"memories_dam2.png", "rubbish_dam2.png", "boundary_dam3.png", "adversarial_transfer.png",
                "rubbish_transfer.png", "rubbish_calibrated_transfer.png", "confidence_bins.png"}  # fmt: skip
    assert expected <= set(names)
    for name in names:
        raw = (out / "figures" / name).read_bytes()
        assert raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) > 5000
    # one of the two runs: its own pictures, not the two-model transfer tables drawn again as if they were its
    shutil.rmtree(out / "figures")
    err = succeeded(dam("figures", runs[0], "--out", str(out))).stderr
    names = {p.name for p in (out / "figures").iterdir()}
    assert "memories_dam2.png" in names and "adversarial_transfer.png" not in names
    assert "not of the runs given: not drawn" in err
    # a damaged probe output is one line naming the file, not a traceback
    (out / "adversarial_transfer.json").write_text("[1, 2]")
    line = one_line_error(dam("figures", *runs, "--out", str(out)))
    assert str(out / "adversarial_transfer.json") in line and "not a JSON object" in line
    (out / "dam2" / "calibration.json").write_text('{"beta_sm": ')
    line = one_line_error(dam("figures", runs[0], "--out", str(out)))
    assert str(out / "dam2" / "calibration.json") in line and "not valid JSON" in line


def test_boundary_with_no_crossing_writes_null_not_nan(setup, tmp_path) -> None:
    """One step is too few to cross: the mean distance does not exist, and says so (no NaN in JSON or text)."""
    data, runs = setup
    out = tmp_path / "o"
    argv = ["boundary", runs[0], "--images", "4", "--out", str(out), "--data-dir", str(data), "--max-steps", "1",
            "--eps", "1e-6", "--no-progress"]  # fmt: skip
    printed = succeeded(dam(*argv)).stdout
    assert "n/a (no search crossed the boundary)" in printed and "nan" not in printed.lower()
    text = (out / "dam2" / "boundary.json").read_text()
    assert "NaN" not in text
    summary = json.loads(text)
    assert summary["success_rate"] == 0 and summary["l2_mean"] is None and summary["linf_mean"] is None


def test_an_unfinished_run_is_noted(setup, tmp_path) -> None:
    """A run killed (or still training) before its planned epochs is measured, with a note that it is a checkpoint."""
    from dam.training import TrainConfig, train

    data, _ = setup
    config = TrainConfig(n=3, m=3, num_memories=16, temperature_start=200.0, temperature_end=200.0, epochs=3,
                         batch_size=100, train_subset=200)  # fmt: skip
    train(config, tmp_path / "cut", data_dir=data, progress=False, stop_after=1)
    argv = ["calibrate", str(tmp_path / "cut"), "--images", "20", "--out", str(tmp_path / "o"), "--data-dir", str(data)]
    assert "is unfinished (1 of 3 epochs done)" in succeeded(dam(*argv)).stderr
