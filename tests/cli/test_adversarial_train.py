"""``dam adversarial-train`` as a user runs it (``python -m dam`` in a subprocess): fine-tune, report, resume
with the measurement reused or refused, and one-line errors before anything trains."""

from __future__ import annotations

import json
import math
from pathlib import Path

from fakes import dam, moved_copy, one_line_error, succeeded


def test_trains_and_reports_robustness(tiny_reproduction: Path, tmp_path: Path) -> None:
    base_run = tiny_reproduction / "runs" / "n3"
    out = tmp_path / "cli"
    argv = ["adversarial-train", str(base_run), "--out", str(out), "--epochs", "1", "--fraction", "0.5",
            "--train-subset", "200", "--max-steps", "40", "--eval-images", "30", "--no-progress"]  # fmt: skip
    assert "fine-tuned" in succeeded(dam(*argv, timeout=600)).stdout
    report = json.loads((out / "robustness.json").read_text())
    assert report["eval_images"] == 30
    for key in ("base", "finetuned"):
        r = report[key]
        assert 0 <= r["test_error"] <= 1 and r["images"] == 30
        assert r["success_rate"] > 0 and math.isfinite(r["l2_mean"]) and math.isfinite(r["linf_mean"])
    assert report["base"]["model_md5"] != report["finetuned"]["model_md5"]
    # resuming the finished run: the measurement is reused, one made otherwise is never replaced in silence
    resume = ["adversarial-train", str(base_run), "--out", str(out), "--resume", "--no-progress"]
    assert "reused" in succeeded(dam(*resume, "--eval-images", "30")).stderr
    written = (out / "robustness.json").read_text()
    assert "reused" in succeeded(dam(*resume)).stderr  # a plain resume measures as the saved measurement did
    line = one_line_error(dam(*resume, "--eval-images", "500"))  # a measurement asked for otherwise is refused
    assert "eval_images (30, 500)" in line and "--remeasure" in line
    assert (out / "robustness.json").read_text() == written
    # --remeasure: measured again and replaced, with one line saying so
    result = succeeded(dam(*resume, "--epochs", "1", "--eval-images", "20", "--remeasure", timeout=600))
    assert json.loads((out / "robustness.json").read_text())["eval_images"] == 20
    assert "reused" not in result.stderr
    other = moved_copy(base_run, tmp_path / "other-base")
    line = one_line_error(dam("adversarial-train", str(other), "--out", str(out), "--resume", "--eval-images", "20"))
    assert "was fine-tuned from" in line


def test_bad_input_is_one_line(tiny_reproduction: Path, tmp_path: Path) -> None:
    base_run = tiny_reproduction / "runs" / "n3"
    line = one_line_error(dam("adversarial-train", str(base_run), "--out", str(tmp_path / "x"), "--fraction", "0"))
    assert line.startswith("dam adversarial-train: error:") and "fraction" in line
    line = one_line_error(dam("adversarial-train", str(tmp_path / "missing"), "--out", str(tmp_path / "y")))
    assert "no such run folder" in line
    for flags, message in ((["--eval-images", "20000"], "--eval-images must be between 1 and 10000"),
                           (["--data-dir", str(tmp_path / "nowhere")], "no such folder")):  # fmt: skip
        assert message in one_line_error(dam("adversarial-train", str(base_run), "--out", str(tmp_path / "z"), *flags))
    assert not (tmp_path / "z").exists()  # refused before the run folder was made or anything trained
