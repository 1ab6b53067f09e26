from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from dam.cli import main
from dam.errors import CheckpointError, InputError
from dam.robustness.detector import (
    JUNK,
    Detector,
    detector_figure,
    evaluate_detector,
    noise_images,
    score_roc,
    threshold_for,
)
from fakes import prototype_model

PNG = b"\x89PNG\r\n\x1a\n"


class ScoreGuard(nn.Module):
    """Y = (x_0, 0, ..., 0): for x_0 >= 0 the confidence rises with pixel 0, so tests choose scores by pixel."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))  # model_outputs reads the device and dtype off a parameter

    def forward(self, x: Tensor) -> Tensor:
        x = x.reshape(len(x), -1)
        return torch.cat([x[:, :1], torch.zeros(len(x), 9, dtype=x.dtype)], dim=1)


class PixelClassifier(nn.Module):
    """Labels each image by round(9 * pixel 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        x = x.reshape(len(x), -1)
        return nn.functional.one_hot((9 * x[:, 1]).round().long(), 10).to(x.dtype)


def images_with(scores: Tensor, labels: Tensor | None = None) -> Tensor:
    x = torch.zeros(len(scores), 784, dtype=torch.float64)
    x[:, 0] = scores
    if labels is not None:
        x[:, 1] = labels / 9
    return x


def fake_detector(threshold: float = 0.0) -> Detector:
    return Detector(PixelClassifier().double(), ScoreGuard().double(), threshold)


# (b) threshold selection


@pytest.mark.parametrize("target", [0.0, 0.01, 0.05, 0.1, 0.29, 0.5, 0.99])
def test_threshold_rejects_exactly_the_target_on_distinct_scores(target: float) -> None:
    scores = torch.rand(100, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    detector = Detector.calibrate(PixelClassifier().double(), ScoreGuard().double(), images_with(scores), target)
    rejected = int((~detector.accept(images_with(scores))).sum())
    assert rejected == round(target * 100)  # 0.29 * 100 is 28.999...: still 29 of 100 may go
    assert detector.false_rejection == target
    # the largest such threshold: the next score up would reject one image too many
    z = detector.guard_scores(images_with(scores))
    above = z[z > detector.threshold]
    if len(above):
        assert int((z < above.min()).sum()) > target * 100


@pytest.mark.parametrize("target", [0.05, 0.1, 0.15, 0.3, 0.5])
def test_threshold_never_exceeds_the_target_with_ties(target: float) -> None:
    scores = torch.randint(0, 8, (200,), generator=torch.Generator().manual_seed(2)).double()
    threshold = threshold_for(scores, target)
    assert float((scores < threshold).double().mean()) <= target
    above = scores[scores > threshold]
    if len(above):
        assert float((scores < above.min()).double().mean()) > target, "a higher threshold was allowed"


def test_threshold_ties_at_the_bottom_reject_nothing() -> None:
    scores = torch.tensor([0.1] * 10 + [0.5, 0.9], dtype=torch.float64)
    assert threshold_for(scores, 0.5) == 0.1  # any threshold above 0.1 rejects 10 of 12
    assert threshold_for(scores, 0.9) == 0.5
    assert threshold_for(torch.tensor([0.3]), 0.5) == pytest.approx(0.3)


@pytest.mark.parametrize("target", [1.0, 1.5, -0.1, float("nan")])
def test_calibrate_rejects_bad_rates(target: float) -> None:
    with pytest.raises(ValueError, match=r"false rejection rate must be in \[0, 1\)"):
        Detector.calibrate(PixelClassifier(), ScoreGuard(), torch.rand(10, 784), target)


def test_calibrate_needs_images() -> None:
    with pytest.raises(ValueError, match="no clean images"):
        Detector.calibrate(PixelClassifier(), ScoreGuard(), torch.rand(0, 784))


def test_fit_is_calibrate_in_scikit_learn_style() -> None:
    x = torch.rand(200, 784, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    calibrated = Detector.calibrate(PixelClassifier().double(), ScoreGuard().double(), x, 0.1)
    fitted = Detector(PixelClassifier().double(), ScoreGuard().double(), false_rejection=0.1)
    assert fitted.fit(x) is fitted and fitted.threshold == calibrated.threshold > 0
    assert torch.equal(fitted.predict(x), calibrated.predict(x)) and int((fitted.predict(x) == -1).sum()) <= 20
    # as scikit-learn: a detector not fitted refuses to predict (it would accept everything), fit defaults to 5%
    unfitted = Detector(PixelClassifier().double(), ScoreGuard().double())
    with pytest.raises(InputError, match=r"no threshold yet: fit\(clean_images\) first"):
        unfitted.predict(x)
    from dam.robustness.adaptive import AdaptiveDetectorAttack, DetectorSystem, junk_scale_for

    for use in (lambda: DetectorSystem(unfitted), lambda: junk_scale_for(unfitted, x),
                lambda: AdaptiveDetectorAttack(unfitted, [0.1]), lambda: unfitted.save("never.json")):  # fmt: skip
        with pytest.raises(InputError, match="no threshold yet"):
            use()
    assert unfitted.fit(x).false_rejection == 0.05 and int((unfitted.predict(x) == -1).sum()) <= 10
    with pytest.raises(InputError, match=r"must be a number in \[0, 1\), got a Tensor$"):  # fit(x, y): labels
        unfitted.fit(x, torch.arange(200) % 10)


# (c) predict


def test_predict_gives_classifier_labels_or_junk() -> None:
    g = torch.Generator().manual_seed(3)
    scores, labels = torch.rand(50, generator=g, dtype=torch.float64), torch.randint(0, 10, (50,), generator=g)
    x = images_with(scores, labels)
    detector = fake_detector()
    detector.threshold = float(detector.guard_scores(x).median())
    accepted = detector.accept(x)
    assert accepted.dtype == torch.bool and 0 < int(accepted.sum()) < 50
    predicted = detector.predict(x)
    assert JUNK == -1 and predicted.dtype == torch.long
    assert torch.equal(predicted[~accepted], torch.full_like(predicted[~accepted], -1))
    assert torch.equal(predicted[accepted], labels[accepted])
    assert torch.equal(accepted, scores >= scores.median())  # the score is monotone in pixel 0


def test_agreement_mode_also_rejects_disagreement() -> None:
    # ScoreGuard always says class 0; the classifier says 0 on the first 30 images only
    g = torch.Generator().manual_seed(4)
    scores = 0.5 + 0.5 * torch.rand(40, generator=g, dtype=torch.float64)
    labels = torch.cat([torch.zeros(30, dtype=torch.long), torch.randint(1, 10, (10,), generator=g)])
    x = images_with(scores, labels)
    plain = Detector.calibrate(PixelClassifier().double(), ScoreGuard().double(), x, 0.3)
    agree = Detector.calibrate(PixelClassifier().double(), ScoreGuard().double(), x, 0.3, agreement=True)
    assert plain.accept(x)[30:].any()
    assert not agree.accept(x)[30:].any()  # every disagreement rejected, whatever the guard's confidence
    assert float((~agree.accept(x)).double().mean()) <= 0.3
    assert agree.settings()["agreement"] is True
    with pytest.raises(ValueError, match=r"disagree on 25\.0%"):
        Detector.calibrate(PixelClassifier().double(), ScoreGuard().double(), x, 0.2, agreement=True)


def test_guard_score_is_the_papers_confidence() -> None:
    model = prototype_model(n=3, temperature=100.0)
    x = torch.rand(7, 784)
    z = Detector(model, model, 0.5, beta_sm=4.0).guard_scores(x)
    expected = torch.softmax(4.0 * model(x).double(), dim=1).amax(dim=1)
    torch.testing.assert_close(z, expected)


def test_noise_images() -> None:
    g = torch.Generator().manual_seed(0)
    for kind in ("uniform", "gaussian"):
        x = noise_images(500, kind, g)
        assert x.shape == (500, 784) and x.dtype == torch.float32
        assert float(x.min()) >= 0 and float(x.max()) <= 1
        assert abs(float(x.mean()) - 0.5) < 0.01
    assert float((noise_images(500, "gaussian", g) == 0).double().mean()) == pytest.approx(0.0228, abs=0.004)
    with pytest.raises(ValueError, match="gaussian"):
        noise_images(3, "salt")  # type: ignore[arg-type]


# (d) evaluation


def test_evaluate_separated_and_identical_sets(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(4)
    labels = torch.randint(0, 10, (600,), generator=g)
    clean = images_with(0.5 + 0.5 * torch.rand(600, generator=g, dtype=torch.float64), labels)
    junk = images_with(0.4 * torch.rand(300, generator=g, dtype=torch.float64))
    alike = images_with(0.5 + 0.5 * torch.rand(600, generator=g, dtype=torch.float64), labels)
    hopeless = images_with(torch.zeros(20, dtype=torch.float64), labels[:20])
    detector = fake_detector()
    detector.threshold = threshold_for(detector.guard_scores(clean), 0.05)
    wrong = (labels + 1) % 10
    sets = {"clean": (clean, labels), "junk": (junk, None), "alike": (alike, wrong), "hopeless": (hopeless, None)}
    report = evaluate_detector(detector, sets)
    json.dumps(report, allow_nan=False)  # plain JSON: no tensors, no NaN
    s = report["sets"]
    assert s["clean"]["kind"] == "clean" and s["clean"]["false_rejection_rate"] == pytest.approx(0.05)
    assert s["clean"]["accuracy_on_accepted"] == 1.0 and "roc" not in s["clean"]
    assert s["junk"]["kind"] == "junk" and s["junk"]["junk_detection_rate"] == 1.0
    assert s["junk"]["roc"]["auc"] == 1.0
    assert s["junk"]["roc"]["operating_point"] == {"fpr": pytest.approx(0.05), "tpr": 1.0}
    alike = s["alike"]
    assert alike["kind"] == "attack" and abs(alike["roc"]["auc"] - 0.5) < 0.05
    assert alike["accuracy_on_accepted"] == 0.0
    assert alike["safe_rate"] == pytest.approx(1 - alike["acceptance_rate"])  # wrong when accepted: only rejection
    assert s["hopeless"]["acceptance_rate"] == 0.0
    for r in s.values():
        assert sum(r["histogram"]) == r["count"]
        assert "roc" not in r or len(r["roc"]["fpr"]) <= 200
    assert len(report["histogram_edges"]) == len(s["clean"]["histogram"]) + 1
    # an attack set's ROC is of its images that fool the classifier, what the guard must catch: half of this
    # set is labelled right (not fooling, scored like clean images), half wrong (scored as junk)
    right = images_with(0.5 + 0.5 * torch.rand(100, generator=g, dtype=torch.float64), labels[:100])
    mixed_images = torch.cat([right, junk[:100]])
    mixed_labels = torch.cat([labels[:100], (labels[100:200] + 1) % 10])
    mixed = evaluate_detector(detector, {"clean": (clean, labels), "mixed": (mixed_images, mixed_labels)})["sets"]
    classifier_says = detector.decide(mixed_images)[2]
    fooled = classifier_says != mixed_labels
    assert mixed["mixed"]["fooling"] == int(fooled.sum()) and 0 < mixed["mixed"]["fooling"] < 200
    scores = detector.decide(mixed_images)[0][fooled]
    assert mixed["mixed"]["roc"]["auc"] == pytest.approx(score_roc(detector.decide(clean)[0], scores)["auc"])
    nothing = evaluate_detector(Detector(detector.classifier, detector.guard, 2.0), {"clean": (clean, labels)})
    assert nothing["sets"]["clean"]["accuracy_on_accepted"] is None
    path = detector_figure(report, tmp_path / "figure.png")
    assert path.read_bytes().startswith(PNG)


def test_figure_draws_the_adaptive_attacks_roc_per_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dam.plotting

    drawn = []
    monkeypatch.setattr(dam.plotting, "save_figure", lambda fig, path: drawn.append(fig) or Path(path))
    roc = {"fpr": [0.0, 0.05, 1.0], "tpr": [0.0, 0.7, 1.0], "auc": 0.9, "operating_point": {"fpr": 0.05, "tpr": 0.7}}
    report = {"threshold": 0.5, "beta_sm": 4.0, "clean": "clean", "histogram_edges": [0.0, 0.5, 1.0],
              "sets": {"clean": {"histogram": [1, 9]}},
              "adaptive": {"budgets": {"linf 0.3": {"roc": roc}, "l2 2": {"roc": None}}}}  # fmt: skip
    detector_figure(report, tmp_path / "figure.png")
    roc_ax = drawn[0].axes[0]
    curves = {line.get_label(): line for line in roc_ax.get_lines() if not line.get_label().startswith("_")}
    assert list(curves) == ["adaptive linf 0.3 (AUC 0.900)"]  # no curve where no image fooled the classifier
    assert curves["adaptive linf 0.3 (AUC 0.900)"].get_linestyle() == "--"
    assert list(curves["adaptive linf 0.3 (AUC 0.900)"].get_ydata()) == [0.0, 0.7, 1.0]
    assert "adaptive" in roc_ax.get_title()
    del report["adaptive"]
    detector_figure(report, tmp_path / "figure.png")
    assert "adaptive" not in drawn[1].axes[0].get_title()


def test_evaluate_subsamples_long_roc_curves() -> None:
    g = torch.Generator().manual_seed(5)
    detector = fake_detector()
    clean, other = (images_with(torch.rand(3000, generator=g, dtype=torch.float64)) for _ in range(2))
    roc = evaluate_detector(detector, {"clean": (clean, None), "other": (other, None)})["sets"]["other"]["roc"]
    assert 100 < len(roc["fpr"]) <= 200 and roc["fpr"][0] == 0.0 and roc["fpr"][-1] == 1.0 == roc["tpr"][-1]


def test_evaluate_needs_a_clean_set_and_images() -> None:
    detector = fake_detector()
    with pytest.raises(ValueError, match="no clean set"):
        evaluate_detector(detector, {"noise": (torch.rand(5, 784), None)})
    with pytest.raises(ValueError, match="no images in set"):
        evaluate_detector(detector, {"clean": (torch.rand(5, 784), None), "empty": (torch.rand(0, 784), None)})


def test_save_and_load(tmp_path: Path) -> None:
    model = prototype_model(n=3, temperature=100.0)
    model.save(tmp_path / "run")
    detector = Detector(model, model, 0.25, beta_sm=5.0, false_rejection=0.1, agreement=True)
    path = detector.save(tmp_path / "detector.json", classifier_run=tmp_path / "run", guard_run=tmp_path / "run")
    loaded = Detector.load(path)
    assert loaded.settings() == {"threshold": 0.25, "beta_sm": 5.0, "false_rejection": 0.1, "agreement": True}
    x = torch.rand(20, 784)
    assert torch.equal(loaded.predict(x), detector.predict(x))
    with pytest.raises(ValueError, match="classifier, guard"):
        Detector.load(detector.save(tmp_path / "settings.json"))
    with pytest.raises(CheckpointError, match="missing; no detector was saved there"):
        Detector.load(tmp_path / "nothing.json")
    (tmp_path / "torn.json").write_text('{"threshold": 0.2')
    with pytest.raises(CheckpointError, match="not valid JSON"):
        Detector.load(tmp_path / "torn.json")


# (a) a small DAM trained on real MNIST as the guard


def test_calibrated_detector_on_real_digits_and_noise(tiny_reproduction: Path, mnist_dir: Path) -> None:
    from dam.probes.runner import test_images
    from dam.runs import load_model

    x, _ = test_images(2000, str(mnist_dir))
    order = torch.randperm(2000, generator=torch.Generator().manual_seed(0))
    held, evaluation = x[order[:1000]], x[order[1000:]]
    runs = tiny_reproduction / "runs"  # K = 40, 3 epochs: weak (n2 ~12% accurate), but n20 is already a guard
    detector = Detector.calibrate(load_model(runs / "n2"), load_model(runs / "n20"), held, 0.05)
    assert float((~detector.accept(held)).double().mean()) <= 0.05
    assert 0.9 <= float(detector.accept(evaluation).double().mean()) <= 0.99
    g = torch.Generator().manual_seed(0)
    for kind in ("uniform", "gaussian"):
        assert float(detector.accept(noise_images(500, kind, g)).double().mean()) < 0.1, kind


# (e) the command


def test_detect_command(tiny_reproduction: Path, mnist_dir: Path, tmp_path: Path, capsys) -> None:
    runs, out = tiny_reproduction / "runs", tmp_path / "detector"
    argv = ["detect", "--classifier", str(runs / "n2"), "--guard", str(runs / "n20"), "--images", "400",
            "--noise", "200", "--probes", str(tiny_reproduction / "probes"), "--out", str(out),
            "--attack-images", "40", "--attack-eps", "0.1,0.3", "--data-dir", str(mnist_dir)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "threshold" in printed and "uniform noise" in printed and "rubbish n30" in printed
    report = json.loads((out / "detector.json").read_text())
    assert (out / "detector.png").read_bytes().startswith(PNG)
    assert report["data"]["calibration_images"] == report["data"]["evaluation_images"] == 200
    assert report["data"]["calibration_false_rejection_rate"] <= 0.05
    assert report["guard"] == str((runs / "n20").resolve()) and report["false_rejection"] == 0.05
    sets = report["sets"]
    assert {"clean", "gaussian noise", "uniform noise", "rubbish n2", "rubbish n30"} <= set(sets)
    assert sets["clean"]["count"] == 200 and sets["uniform noise"]["count"] == 200
    used = {u["set"] for u in report["probes"]["used"]}
    skipped = {s["file"] for s in report["probes"]["skipped"]}
    assert {name for name in sets if name.startswith(("adversarial ", "rubbish "))} == used
    assert {"PGD eps 0.1", "PGD eps 0.3"} <= set(sets) and sets["PGD eps 0.3"]["kind"] == "attack"
    assert len(used) + len(skipped) == 8  # a boundary and a rubbish result for each of the four models
    for name in used:
        assert sets[name]["kind"] == ("junk" if name.startswith("rubbish") else "attack")
    assert Detector.load(out / "detector.json").threshold == report["threshold"]
    # (the tiny models disagree too often for the n2 + n20 pair; a model always agrees with itself)
    same = ["--classifier", str(runs / "n20"), "--agreement", "--noise", "20", "--out", str(tmp_path / "agree"),
            "--attack-eps", ""]  # '' : no attack sets  # fmt: skip
    no_attack_images = [a for i, a in enumerate(argv) if "--attack-images" not in argv[max(i - 1, 0) : i + 1]]
    assert main([*no_attack_images, *same]) == 0
    agree = json.loads((tmp_path / "agree" / "detector.json").read_text())
    assert not any(name.startswith("PGD") for name in agree["sets"])
    assert agree["agreement"] is True and Detector.load(tmp_path / "agree" / "detector.json").agreement


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--false-rejection", "1.5"], "false rejection rate must be in [0, 1)"),
        (["--beta-sm", "0"], "argument --beta-sm: must be positive"),
        (["--noise", "-1"], "argument --noise: must be 0 or more"),
        (["--probes", "/nonexistent/probes"], "--probes /nonexistent/probes: no such folder"),
        (["--adaptive-steps", "7"], "--adaptive-steps: settings of the adaptive attack; give --adaptive"),
    ],
)
def test_detect_bad_arguments_are_one_line(extra: list[str], message: str, tmp_path: Path, capsys) -> None:
    argv = ["detect", "--classifier", "x", "--guard", "y", "--out", str(tmp_path), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith(("usage:", " "))]
    assert message in err and "Traceback" not in err and len(lines) == 1


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--attack-eps", "", "--attack-images", "5"], "--attack-images: no effect with --attack-eps ''"),
        (["--attack-images", "11"], "--attack-images 11: more than the 10 evaluation images of --images 20"),
        (["--adaptive", "--adaptive-images", "11"], "--adaptive-images 11: more than the 10 evaluation images"),
        (["--probes", "NOTPROBES"], "holds no boundary or rubbish results"),
    ],
)
def test_detect_flags_without_their_effect_are_refused(extra, message, tmp_path: Path, capsys) -> None:
    """A count given on the command line is used as given or refused, never cut silently; a --probes folder
    without probe results is named, not skipped."""
    model = prototype_model(n=3, temperature=100.0)
    model.save(tmp_path / "guard")
    (tmp_path / "notprobes" / "sub").mkdir(parents=True)
    extra = [str(tmp_path / "notprobes") if e == "NOTPROBES" else e for e in extra]
    argv = ["detect", "--classifier", str(tmp_path / "guard"), "--guard", str(tmp_path / "guard"), "--images", "20",
            "--out", str(tmp_path / "out"), *extra]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_detect_missing_run_folder_is_one_line(tmp_path: Path, capsys) -> None:
    model = prototype_model(n=3, temperature=100.0)
    model.save(tmp_path / "guard")
    argv = ["detect", "--classifier", str(tmp_path / "missing"), "--guard", str(tmp_path / "guard"),
            "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no such run folder" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    argv = ["detect", "--classifier", str(tmp_path / "guard"), "--guard", str(tmp_path / "guard"), "--images", "1",
            "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 2
    assert "--images must be between 2 and 10000 (half calibrates, half evaluates), got 1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_run_detection_keeps_the_commands_folder_rules(tiny_reproduction: Path, mnist_dir: Path, tmp_path: Path,
                                                       caplog) -> None:  # fmt: skip
    # The Python job, as the README offers it: locked, never into a run folder, never a finished result replaced
    # silently (what `dam detect` refuses, run_detection refuses, since the command only calls it).
    import logging

    from dam.errors import RunFolderError, RunLockedError
    from dam.robustness.detector_sets import run_detection
    from dam.runs import OutputFolder

    runs, out = tiny_reproduction / "runs", tmp_path / "detector"
    small = dict(images=100, noise=20, attack_images=0, data_dir=mnist_dir)
    with pytest.raises(RunFolderError, match="holds a training run"):
        run_detection(runs / "n2", runs / "n20", runs / "n30", **small)
    assert not (runs / "n30" / "detector.json").exists()
    with OutputFolder(out).lock(), pytest.raises(RunLockedError, match="another dam process"):
        run_detection(runs / "n2", runs / "n20", out, **small)
    first = run_detection(runs / "n2", runs / "n20", out, **small)
    with pytest.raises(InputError, match="holds a detector's results"):
        run_detection(runs / "n2", runs / "n20", out, **{**small, "images": 200})
    assert json.loads((out / "detector.json").read_text())["data"]["images"] == first["data"]["images"] == 100
    with caplog.at_level(logging.WARNING, logger="dam.robustness.detector_sets"):
        run_detection(runs / "n2", runs / "n20", out, **{**small, "images": 200}, replace=True)
    assert "replacing the detector's results" in caplog.text
    assert json.loads((out / "detector.json").read_text())["data"]["images"] == 200
