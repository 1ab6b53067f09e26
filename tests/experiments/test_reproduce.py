"""``dam reproduce`` end to end on real MNIST with tiny models: every stage, the report, resume, refusals."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from dam.cli import main
from dam.experiments.report import build_report
from dam.experiments.reproduce import MODELS, reproduce
from fakes import TINY_REPRODUCTION as TINY

PROBE_FILES = ("boundary.json", "boundary.safetensors", "rubbish.json", "rubbish.safetensors", "calibration.json")


@pytest.fixture
def reproduction(tiny_reproduction: Path) -> Path:
    return tiny_reproduction


def test_every_stage_writes_its_outputs(reproduction: Path):
    out = reproduction
    for name in MODELS:
        assert (out / "runs" / name / "model.safetensors").exists()
        assert json.loads((out / "runs" / name / "evaluation.json").read_text())["examples"] == 10000
        for f in PROBE_FILES:
            assert (out / "probes" / name / f).exists(), (name, f)
    for stem in ("adversarial_transfer", "rubbish_transfer", "rubbish_calibrated_transfer"):
        assert (out / "report" / "tables" / f"{stem}.json").exists()
        assert (out / "report" / "tables" / f"{stem}.csv").exists()
    stages = json.loads((out / "stages.json").read_text())
    beyond = {"train mlp-relu", "attacks", "detector", "detector-agreement", "adversarial n2"}
    expected = {"data", "transfer tables", "figures", "report", *beyond} | {
        f"{s} {n}" for s in ("train", "probes") for n in MODELS
    }
    assert expected <= set(stages)
    meta = json.loads((out / "reproduce.json").read_text())
    assert meta["preset"]["name"] == "tiny" and meta["preset"]["seed"] == 0
    md5 = meta["data"]["md5"]
    assert len(md5) == 4 and all(len(v) == 32 for v in md5.values()), md5
    assert meta["environment"]["torch"]


def test_report_holds_every_section_figure_and_verdict(reproduction: Path):
    page = (reproduction / "report" / "index.html").read_text()
    for section in ("setup", "summary", "fig2", "fig3", "fig4", "fig5", "fig6", "fig7", "beyond"):
        assert f'id="{section}"' in page
    # 4 memories + 4 rubbish + 4 boundary + 3 heat maps + 1 confidence figure, robust accuracy, detector
    # the tiny n2 and n30 disagree on too many clean images for the agreement detector: said, not drawn
    assert page.count("data:image/png;base64,") == 19 and "disagree on" in page  # robust accuracy twice
    # first the robustness answer (every attacked model at the usual budgets) and the verdicts; the run's record last
    glance = page.index("is large-n robustness real?")
    assert glance < page.index('id="summary"') < page.index('id="setup"') < page.index('id="record"')
    assert re.search(r"at L-inf 0\.1, n2 \d+\.\d%, n3 ", page[glance:])
    for table in ("robust linf", "robust l2", "masking", "detector", "adversarial training"):
        assert f'data-required="{table}"' in page
    assert "missing:" not in page
    # the attack protocol that ran (named when reduced), the CE-versus-DLR gap and the published results for scale
    assert "AutoAttack standard, reduced" in page and "cross-entropy minus DLR" in page and "96.34%" in page
    assert 'data-required="effort check"' in page  # Carlini et al.'s convergence check, measured and shown
    # ... and in the per-attack table as what it broke beyond the other attacks, not as a robust accuracy
    assert re.search(r'effort check \(on survivors\)</td>(<td class="">-?\d+\.\d pts</td>)+</tr>', page)
    # the checklist, with the transfer from the substitute (n30 trained again from seed 1)
    assert 'data-required="checklist"' in page and "n30 attacked with the adversarials of n30-seed1" in page
    robustness = json.loads((reproduction / "beyond" / "attacks" / "robustness.json").read_text())
    assert "n30-seed1" in robustness["sources"]
    assert any(k.startswith("transfer:n30-seed1") for k in robustness["models"]["n30"]["tables"]["linf"]["attacks"])
    # the detector attacked by an attacker who knows the guard (its table), or said to be not run
    assert 'data-required="detector adaptive"' in page or "disagree on" in page
    worst = json.loads((reproduction / "beyond" / "detector" / "detector.json").read_text())["adaptive"]["budgets"]
    assert "detector, worst case of both: safe" in page  # the headline: safe under both attacks, image by image
    assert all(0 <= b["worst_case_safe_rate"] <= min(b["safe_rate"], b["non_adaptive"]["safe_rate"])
               for b in worst.values())  # fmt: skip
    # a preset's limit explains a verdict that differs, escaped like every value
    assert "40 memories trained for 3 epochs on 5,000 images &lt;tiny&gt;" in page
    claims = json.loads((reproduction / "report" / "claims.json").read_text())
    assert len(claims) == 11
    setup = next(c for c in claims if c["key"] == "clean_error")
    assert setup["verdict"] == "differs" and setup["limit"].startswith("40 memories")
    assert {c["verdict"] for c in claims} <= {"agrees", "partly", "differs", "not measured"}
    # All four models were run: a claim is "not measured" only where its measurement is truly missing
    # (these tiny models' boundary searches may all fail, and then Fig. 4 has no deformations to judge; their
    # confidences may crowd into one bin, and then Fig. 7's bins cannot be compared).
    failed = [
        n
        for n in MODELS
        if json.loads((reproduction / "probes" / n / "boundary.json").read_text())["success_rate"] == 0
    ]
    for c in claims:
        too_few = c["key"] == "confidence_bins" and "fewer than two bins with 10 images" in c["measured"]
        assert (c["verdict"] == "not measured") == ((c["figure"] == "Fig. 4" and bool(failed)) or too_few), c
    assert len(list((reproduction / "report" / "figures").glob("*.png"))) == 18


def test_paper_only_stops_after_the_papers_stages_and_says_so(tiny_paper_only: Path, reproduction: Path):
    stages = json.loads((tiny_paper_only / "stages.json").read_text())
    assert set(stages) == {"data", "transfer tables", "figures", "report"} | {
        f"{s} {n}" for s in ("train", "probes") for n in MODELS
    }
    assert not (tiny_paper_only / "beyond").exists()
    assert json.loads((tiny_paper_only / "reproduce.json").read_text())["paper_only"] is True
    page = (tiny_paper_only / "report" / "index.html").read_text()
    assert "was last run with <code>--paper-only</code>" in page and "makes no robustness claim" in page
    # the standard attacks, the detector (its agreement variant only where its folder exists), adversarial training
    assert page.count("Not run: this reproduction stopped after the paper&#39;s stages (--paper-only).") == 3
    assert "robust linf" not in page and len(json.loads((tiny_paper_only / "report" / "claims.json").read_text())) == 11
    assert "is large-n robustness real?" not in page  # no answer without the attacks
    assert all(v["device"] == "cpu" for v in stages.values())  # recorded per stage: a folder may change device
    # The same command without it, in the same folder, reused the paper's stages and added the rest.
    full = json.loads((reproduction / "stages.json").read_text())
    for name in MODELS:
        assert full[f"train {name}"]["seconds"] == stages[f"train {name}"]["seconds"]
        assert full[f"probes {name}"]["seconds"] == stages[f"probes {name}"]["seconds"]
    assert {"attacks", "detector", "train mlp-relu", "adversarial n2"} <= set(full)
    assert json.loads((reproduction / "reproduce.json").read_text())["paper_only"] is False
    assert "--paper-only" not in (reproduction / "report" / "index.html").read_text()


def test_other_settings_of_the_preset_are_refused_where_a_stage_used_them(
    tiny_paper_only: Path, mnist_dir: Path, tmp_path: Path
):
    """A folder holds one preset's results: settings that differ from the saved ones are refused before any work,
    except those of the stages past the paper where none has begun (a --paper-only folder, then a newer dam)."""
    out = tmp_path / "copy"
    shutil.copytree(tiny_paper_only, out)
    meta = json.loads((out / "reproduce.json").read_text())
    saved_attacks = {**meta["preset"]["attacks"], "images": 999}
    (out / "reproduce.json").write_text(json.dumps({**meta, "preset": {**meta["preset"], "attacks": saved_attacks}}))
    run = dict(data_dir=mnist_dir, progress=False, check=False, log=lambda line: None)
    reproduce(TINY, out, paper_only=True, **run)  # nothing ran with those settings: accepted, all reused
    stages = json.loads((out / "stages.json").read_text())
    assert all(stages[f"{s} {n}"]["reused"] for s in ("train", "probes") for n in MODELS)
    (out / "beyond").mkdir()  # a stage past the paper has begun: its settings now count
    meta = json.loads((out / "reproduce.json").read_text())
    (out / "reproduce.json").write_text(json.dumps({**meta, "preset": {**meta["preset"], "attacks": saved_attacks}}))
    with pytest.raises(ValueError, match=r"other settings of preset 'tiny' \(changed: attacks\); use another --out"):
        reproduce(TINY, out, paper_only=True, **run)
    (out / "reproduce.json").write_text(json.dumps({**meta, "preset": {**meta["preset"], "images": 61}}))
    with pytest.raises(ValueError, match=r"\(changed: images\)"):
        reproduce(TINY, out, paper_only=True, **run)


def test_a_part_past_the_paper_without_outputs_says_why(tiny_paper_only: Path, tmp_path: Path):
    """A full run killed in the stages past the paper (or one that then ran --paper-only) leaves some of them
    without outputs: the report names the real reason for each, never the missing-extra one."""
    out = tmp_path / "partial"
    shutil.copytree(tiny_paper_only, out)
    (out / "beyond" / "baselines" / "mlp-relu").mkdir(parents=True)  # killed while training the first baseline
    meta = json.loads((out / "reproduce.json").read_text())
    for paper_only, reason in ((True, "stopped after the paper&#39;s stages (--paper-only)"),
                               (False, "not finished in this folder (run the same dam reproduce again)")):  # fmt: skip
        (out / "reproduce.json").write_text(json.dumps({**meta, "paper_only": paper_only}))
        page = build_report(out).read_text()
        assert page.count(f"Not run: {'this reproduction ' if paper_only else ''}{reason}.") == 3, paper_only
        assert "Foolbox" not in page.split('id="beyond"')[1]
        assert ("last run with <code>--paper-only</code>" in page) == paper_only
    # Without Foolbox the attack stage says so in its folder; a preset without a stage says that.
    (out / "beyond" / "attacks").mkdir()
    (out / "beyond" / "attacks" / "skipped.json").write_text(json.dumps({"reason": "the standard attacks need <X>"}))
    (out / "reproduce.json").write_text(json.dumps({**meta, "preset": {**meta["preset"], "adversarial": None}}))
    page = build_report(out).read_text()
    assert "Not run: the standard attacks need &lt;X&gt;." in page and "Not run: not part of this preset." in page


def test_second_run_reuses_every_finished_stage_and_redoes_only_what_is_missing(reproduction: Path, mnist_dir: Path):
    for f in ("rubbish.json", "rubbish.safetensors"):
        (reproduction / "probes" / "n3" / f).unlink()
    before = json.loads((reproduction / "stages.json").read_text())
    # A reproduction begun by an older dam, which recorded no past-the-paper settings, is continued.
    meta = json.loads((reproduction / "reproduce.json").read_text())
    for key in ("baselines", "attacks", "detector", "adversarial"):
        del meta["preset"][key]
    (reproduction / "reproduce.json").write_text(json.dumps(meta))
    reproduce(TINY, reproduction, data_dir=mnist_dir, progress=False, check=False, log=lambda line: None)
    stages = json.loads((reproduction / "stages.json").read_text())
    assert stages["probes n3"]["reused"] is False and stages["probes n3"] != before["probes n3"]
    for name in MODELS:
        assert stages[f"train {name}"]["reused"] is True
        assert stages[f"train {name}"]["seconds"] == before[f"train {name}"]["seconds"]
    assert all(stages[f"probes {n}"]["reused"] for n in MODELS if n != "n3")
    assert all(stages[s]["reused"] for s in ("train mlp-relu", "detector", "detector-agreement", "adversarial n2"))
    assert (reproduction / "probes" / "n3" / "rubbish.safetensors").exists()


def test_another_preset_in_the_same_folder_is_refused(reproduction: Path):
    with pytest.raises(ValueError, match="preset 'tiny'"):
        reproduce("quick", reproduction, check=False, log=lambda line: None)


def test_cli_report_rebuilds_and_refuses_other_folders(reproduction: Path, tmp_path: Path, capsys):
    (reproduction / "report" / "index.html").unlink()
    assert main(["report", str(reproduction)]) == 0
    assert (reproduction / "report" / "index.html").exists()
    assert main(["report", str(tmp_path)]) == 2
    assert "not a folder written by dam reproduce" in capsys.readouterr().err
    assert main(["report", str(reproduction), "--screenshot", str(tmp_path / "s.png")]) == 2
    assert "give --check too" in capsys.readouterr().err
    from dam.runs import OutputFolder

    with OutputFolder(reproduction).lock():  # as a running reproduce holds it
        assert main(["report", str(reproduction)]) == 2
    assert "another dam process is writing this reproduction folder" in capsys.readouterr().err


def test_changed_data_is_refused(reproduction: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch):
    import dam.experiments.reproduce as rep

    real = rep.data_checksums(mnist_dir)
    other = {**real, "md5": {k: "0" * 32 for k in real["md5"]}}
    monkeypatch.setattr(rep, "data_checksums", lambda data_dir: other)
    with pytest.raises(ValueError, match="differ"):
        reproduce(TINY, reproduction, data_dir=mnist_dir, check=False, log=lambda line: None)


def test_finished_epochs_reads_progress(reproduction: Path, tmp_path: Path):
    from dam.runs import finished_epochs

    assert finished_epochs(reproduction / "runs" / "n2") == (3, 3)
    assert finished_epochs(tmp_path) is None


def test_cli_reproduce_reports_a_wrong_folder_in_one_line(reproduction: Path, capsys):
    assert main(["reproduce", "--preset", "quick", "--out", str(reproduction), "--no-check", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "preset 'tiny'" in err and "Traceback" not in err


def test_a_training_run_folder_is_not_taken_for_a_reproduction(reproduction: Path, capsys):
    run = reproduction / "runs" / "n2"
    before = sorted(p.name for p in run.iterdir())
    assert main(["reproduce", "--preset", "quick", "--out", str(run), "--no-check", "--no-progress"]) == 2
    assert "holds a training run, not a reproduction" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == before


def test_cli_reproduce_reports_a_damaged_record_in_one_line(tmp_path: Path, capsys):
    (tmp_path / "reproduce.json").write_text('{"preset": ')  # torn by hand: dam writes it atomically
    assert main(["reproduce", "--preset", "quick", "--out", str(tmp_path), "--no-check", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "reproduce.json: not valid JSON" in err and len(err.strip().splitlines()) == 1


def test_a_folder_of_other_files_is_refused_before_its_md5s_are_recorded(tmp_path: Path, mnist_dir: Path, capsys):
    junk = tmp_path / "junk" / "mnist"
    junk.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):  # fmt: skip
        (junk / name).write_bytes(b"not an IDX file")
    out = tmp_path / "r"
    argv = ["reproduce", "--preset", "quick", "--out", str(out), "--no-check", "--no-progress"]
    assert main([*argv, "--data-dir", str(junk.parent)]) == 2
    assert "magic" in capsys.readouterr().err
    record = json.loads((out / "reproduce.json").read_text()) if (out / "reproduce.json").exists() else {}
    assert "md5" not in json.dumps(record)  # the junk's MD5s were never recorded: the folder is still usable


def test_running_again_reads_the_data_it_started_with(reproduction: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("DAM_DATA_DIR", raising=False)  # no data anywhere but where the run started
    reproduce(TINY, reproduction, check=False, log=lambda line: None)
    stages = json.loads((reproduction / "stages.json").read_text())
    assert all(stages[f"train {n}"]["reused"] for n in MODELS)


def test_a_skipped_browser_check_says_so(reproduction: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """Without Chromium the check is skipped (unless --check asks for it), with one line saying so."""
    import dam.experiments.report.browser

    monkeypatch.setattr(dam.experiments.report.browser, "find_chromium", lambda: None)
    lines: list[str] = []
    reproduce(TINY, reproduction, data_dir=mnist_dir, progress=False, log=lines.append)
    assert "[browser check] skipped: no Chromium found (--check requires it)" in lines


def test_past_the_paper_stages_write_their_outputs(reproduction: Path):
    beyond = reproduction / "beyond"
    assert (beyond / "baselines" / "mlp-relu" / "model.safetensors").exists()
    robustness = json.loads((beyond / "attacks" / "robustness.json").read_text())
    assert set(robustness["models"]) == {*MODELS, "n2-adv", "mlp-relu"}  # the fine-tuned model is attacked too
    # sources: the baseline and n30's substitute (the same preset from seed 1), not attacked itself
    assert robustness["sources"] == ["mlp-relu", "n30-seed1"] and robustness["images"]["count"] == 16
    assert (beyond / "substitutes" / "n30-seed1" / "model.safetensors").exists()
    n30 = robustness["models"]["n30"]["tables"]["linf"]["attacks"]
    assert {"fgsm", "pgd", "hopskipjump", "transfer:mlp-relu", "transfer:n30-seed1", "apgd-ce", "apgd-t"} <= set(n30)
    assert robustness["protocol"].startswith("AutoAttack standard, reduced")  # the tiny preset's reduction is named
    assert (beyond / "attacks" / "models" / "n30.robustbench.json").exists()
    detector = json.loads((beyond / "detector" / "detector.json").read_text())
    assert detector["classifier"].endswith("n2") and detector["guard"].endswith("n30")
    assert {"clean", "gaussian noise", "uniform noise"} <= set(detector["sets"])
    adaptive = detector["adaptive"]["budgets"]["linf 0.3"]  # the paper's rule: the adaptive attack ran
    assert adaptive["count"] == 10 and 0 <= adaptive["safe_rate"] <= 1 and "safe_rate" in adaptive["non_adaptive"]
    adversarial = json.loads((beyond / "adversarial" / "n2-adv" / "robustness.json").read_text())
    assert adversarial["base"]["model_md5"] != adversarial["finetuned"]["model_md5"]
    for name in ("robust_accuracy_linf.csv", "masking.csv", "detector.json", "adversarial_training_n2-adv.json"):
        assert (reproduction / "report" / "tables" / name).exists()
