"""Careless users and faults, from the outside (``python -m dam`` in a subprocess): one writer per folder,
no silent overwrite, output problems found before any compute, flags validated where they are parsed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dam.runs import LOCK_OWNER_FILE, OutputFolder, model_md5
from fakes import dam, one_line_error, tiny_mnist

TINY = ["--n", "3", "--m", "2", "--memories", "16", "--temperature", "200", "--batch-size", "250",
        "--train-subset", "1000", "--no-progress"]  # fmt: skip


def refused_at_once(result: subprocess.CompletedProcess[str]) -> str:
    """One line and nothing before it: no settings line, no epoch, no progress, so no compute had begun."""
    line = one_line_error(result)
    assert [x for x in result.stderr.splitlines() if x.strip()] == [line], result.stderr
    return line


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return tiny_mnist(tmp_path_factory.mktemp("tiny") / "mnist")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    result = dam("train", *TINY, "--epochs", "1", "--data-dir", str(data), "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


def _default_sigint() -> None:
    """Ctrl-C as a terminal delivers it: a test run started in the background of a non-interactive shell
    ignores SIGINT, and its children would inherit that (Python then installs no KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_second_writer_is_refused_and_first_run_intact(tmp_path, data) -> None:
    out = tmp_path / "run"
    # More epochs than it can finish while the test runs: the second writer always meets a live first one.
    first = subprocess.Popen([sys.executable, "-m", "dam", "train", *TINY, "--epochs", "100000", "--data-dir",
                              str(data), "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "DAM_COMPILE": "0"}, preexec_fn=_default_sigint)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (out / "metrics.jsonl").exists():
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first run never wrote an epoch"
            time.sleep(0.05)
        second = dam("train", *TINY, "--epochs", "1", "--seed", "5", "--data-dir", str(data), "--out", str(out))
        line = one_line_error(second)
        assert "another dam process" in line and f"pid {first.pid}" in line
        assert first.poll() is None, "the first run stopped while the second was refused"
    finally:
        first.send_signal(signal.SIGINT)  # Ctrl-C: the saved epochs are kept, the metrics end with them
        _, stderr = first.communicate(timeout=300)
    assert first.returncode == 130 and "interrupted" in stderr and "add --resume" in stderr, stderr
    info = json.loads(dam("info", str(out), "--format", "json").stdout)
    metrics = (out / "metrics.jsonl").read_text().splitlines()
    done = [int(line.split('"epoch": ')[1].split(",")[0]) for line in metrics]
    assert info["epochs_done"] >= 1 and done == list(range(1, info["epochs_done"] + 1))


def test_finished_run_is_not_overwritten(finished, data) -> None:
    before = model_md5(finished)
    again = dam("train", *TINY, "--epochs", "1", "--seed", "9", "--data-dir", str(data), "--out", str(finished))
    line = one_line_error(again)
    assert "--resume" in line and "--force" in line
    assert model_md5(finished) == before


def test_foreign_run_is_refused_and_force_moves_it_aside(tmp_path, finished, data) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    for name in ("config.json", "model.safetensors", "metrics.jsonl"):  # finished elsewhere: no train state
        (foreign / name).write_bytes((finished / name).read_bytes())
    (foreign / "evaluation.json").write_text("{}")
    line = one_line_error(dam("train", *TINY, "--epochs", "1", "--data-dir", str(data), "--out", str(foreign)))
    assert "not overwritten" in line
    forced = dam("train", *TINY, "--epochs", "1", "--data-dir", str(data), "--out", str(foreign), "--force")
    assert forced.returncode == 0, forced.stderr
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("foreign.replaced-")]
    assert len(aside) == 1 and (aside[0] / "evaluation.json").exists()  # the old run, whole
    assert not (foreign / "evaluation.json").exists()  # no stale result beside the new weights


def test_output_problems_are_found_before_compute(tmp_path, finished, data) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    line = refused_at_once(dam("train", *TINY, "--epochs", "1", "--data-dir", str(data), "--out", str(a_file)))
    assert "is a file" in line
    line = refused_at_once(dam("train", *TINY, "--epochs", "1", "--data-dir", str(data), "--out", "/proc/self/run"))
    assert "/proc/self/run" in line and "cannot write" in line
    line = refused_at_once(dam("boundary", str(finished), "--out", str(a_file), "--data-dir", str(data)))
    assert "is a file" in line
    line = refused_at_once(dam("evaluate", str(finished), "--data-dir", str(data), "--json", str(tmp_path)))
    assert "is a folder" in line
    line = refused_at_once(dam("evaluate", str(finished), "--data-dir", "/nowhere", "--json", str(a_file / "e.json")))
    assert "is a file, not a folder" in line  # found before the (missing) data are read


def test_results_are_not_written_into_a_run_or_a_foreign_folder(tmp_path, finished, data) -> None:
    """Probes, attacks and detectors refuse a training run's folder; reproduce and sweep refuse a non-empty
    folder that is not theirs; nothing is written into either."""
    before = {p.name: p.stat().st_mtime_ns for p in finished.iterdir()}
    for argv in (
        ["boundary", str(finished), "--images", "5", "--data-dir", str(data)],
        ["calibrate", str(finished), "--images", "5", "--data-dir", str(data)],
        ["attack", str(finished), "--images", "5", "--autoattack", "none", "--hsj-steps", "0"],
        ["detect", "--classifier", str(finished), "--guard", str(finished), "--images", "20", "--data-dir", str(data)],
    ):
        line = one_line_error(dam(*argv, "--out", str(finished)))
        assert "holds a training run" in line and "its own --out" in line, line
    assert {p.name: p.stat().st_mtime_ns for p in finished.iterdir()} == before
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("mine")
    for argv, kind in ((["reproduce", "--preset", "quick", "--no-check"], "reproduction"),
                       (["sweep", "--preset", "quick", "--backend", "local"], "sweep")):  # fmt: skip
        line = one_line_error(dam(*argv, "--data-dir", str(data), "--out", str(foreign)))
        assert f"not empty and not a {kind}" in line, line
    assert [p.name for p in foreign.iterdir()] == ["todo.txt"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_is_one_line(tmp_path, data) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    line = refused_at_once(dam("train", *TINY, "--epochs", "1", "--data-dir", str(data), "--out", str(ro / "run")))
    assert "cannot write" in line


def test_failed_data_load_leaves_no_config(tmp_path) -> None:
    out = tmp_path / "run"
    line = one_line_error(dam("train", *TINY, "--epochs", "1", "--data-dir", str(tmp_path / "nowhere"), "--out",
                              str(out)))  # fmt: skip
    assert "nowhere" in line
    assert not (out / "config.json").exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["train", "--n", "3", "--out", "X", "--device", "nonsense"], "--device"),
        (["train", "--n", "3", "--out", "X", "--device", "mps"], "--device"),
        (["train", "--n", "3", "--out", "X", "--device", "meta"], "--device"),
        (["train", "--n", "3", "--out", "X", "--epochs", "0"], "--epochs"),
        (["train", "--n", "3", "--out", "X", "--lr", "nan"], "--lr"),
        (["boundary", "R", "--out", "X", "--images", "0"], "--images"),
        (["boundary", "R", "--out", "X", "--images", "-5"], "--images"),
        (["boundary", "R", "--out", "X", "--eps", "nan"], "--eps"),
        (["attack", "R", "--out", "X", "--linf", "0.1,nan"], "--linf"),
        (["train", "--n", "3", "--out", "X", "--train-subset", "60001"], "larger than the 60000 MNIST training"),
        (["train", "--n", "3", "--out", "X", "--train-subset", "50001", "--validation"], "less the validation split"),
        (["train", "--n", "3", "--out", "X", "--batch-size", "70000"], "batch_size 70000 is larger than the 60000"),
        (["train", "--n", "3", "--out", "X", "--batch-size", "600", "--train-subset", "500"], "train_subset of 500"),
        (["attack", "R", "--out", "X", "--linf", "0.1,2"], "2: above 1 (the whole pixel range)"),
        (["attack", "R", "--out", "X", "--l2", "30"], "30: above 28"),
        (["attack", "R", "--out", "X", "--linf", "0.1,0.1"], "linf budget 0.1 given more than once"),
        (["detect", "--classifier", "A", "--guard", "B", "--out", "X", "--adaptive", "1.5"], "1.5: above 1"),
        (["train", "--out", "no-such-run", "--resume"], "no-such-run: no run to resume there"),
        (["report", "no-such-folder"], "no-such-folder: no such folder"),
    ],
)
def test_flags_are_validated_where_parsed(args, expected) -> None:
    result = dam(*args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert expected in result.stderr.splitlines()[-1]


def test_a_flag_of_another_subcommand_points_to_this_ones_help() -> None:
    line = one_line_error(dam("train", "--n", "3", "--images", "5", "--out", "X"))
    assert line == "dam train: error: unrecognized arguments: --images 5 (see dam train --help)"


def test_an_unknown_flag_before_the_subcommand_is_named() -> None:
    assert one_line_error(dam("--bogus")) == "dam: error: unrecognized arguments: --bogus (see dam --help)"
    assert one_line_error(dam("--quiet", "--bogus=1", "train")).startswith(
        "dam: error: unrecognized arguments: --bogus=1"
    )


def test_a_broken_setting_is_named_with_its_value_only() -> None:
    line = one_line_error(dam("train", "--n", "3", "--momentum", "1.5", "--out", "X"))
    assert line.endswith("0 <= momentum < 1 violated (given momentum=1.5)") and "TrainConfig" not in line


def test_contradicting_flags_are_refused(tmp_path, data) -> None:
    common = ["--epochs", "1", "--data-dir", str(data), "--no-progress"]
    line = one_line_error(dam("train", "--n", "3", "--temperature", "100", "--temperature-start", "300", *common,
                              "--out", str(tmp_path / "a")))  # fmt: skip
    assert "--temperature-start" in line
    line = one_line_error(dam("train", "--n", "3", "--schedule", "quick", *common, "--out", str(tmp_path / "b")))
    assert "--preset" in line
    # a temperature the schedule would not use: T_i without a ramp, a ramp between equal temperatures
    line = one_line_error(dam("train", "--preset", "n20", "--temperature-start", "300", *common, "--out",
                              str(tmp_path / "t1")))  # fmt: skip
    assert "T_i = 300 and T_f = 540 with no ramp" in line
    line = one_line_error(
        dam("train", "--preset", "n20", "--ramp-epochs", "50", *common, "--out", str(tmp_path / "t2"))
    )
    assert "T_i and T_f are both 540, so nothing ramps" in line
    assert not (tmp_path / "t1").exists() and not (tmp_path / "t2").exists()
    line = one_line_error(dam("train", "--n", "3", "--train-subset", "70000", *common, "--out", str(tmp_path / "c")))
    assert "70000" in line and not (tmp_path / "c").exists()
    # A minibatch larger than the images, found where a run starts: refused in one line, and the folders made
    # for it are gone again (the run folder, and --seeds' parent folder).
    small = ["--train-subset", "1000", "--batch-size", "5000", *common]
    for extra, out in ((["--n", "3"], "d"), (["--model", "mlp-relu"], "e"), (["--n", "3", "--seeds", "0", "1"], "f")):
        line = one_line_error(dam("train", *extra, *small, "--out", str(tmp_path / out / "run")))
        assert line.endswith("batch_size 5000 is larger than the train_subset of 1000")
        assert not (tmp_path / out).exists(), out
    # ... and before --force moves an old folder aside: the refused run leaves it where it was
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    for extra in (["--n", "3"], ["--model", "mlp-relu"]):
        line = one_line_error(dam("train", *extra, *small, "--out", str(kept), "--force"))
        assert line.endswith("batch_size 5000 is larger than the train_subset of 1000")
    assert (kept / "notes.txt").read_text() == "mine" and not list(tmp_path.glob("kept.replaced-*"))


def test_stale_lock_after_kill_does_not_block(tmp_path, data) -> None:
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from dam.runs import OutputFolder\n"
                               f"with OutputFolder({str(out)!r}).lock():\n print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    holder.kill()  # SIGKILL: no cleanup ran, the owner file is still there
    holder.wait()
    assert (out / LOCK_OWNER_FILE).exists()
    with OutputFolder(out).lock():  # the kernel released the lock with the process
        pass


def test_debug_switch_shows_the_traceback(tmp_path, finished) -> None:
    quiet = dam("info", str(tmp_path / "missing"))
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    loud = dam("--debug", "info", str(tmp_path / "missing"))
    assert loud.returncode != 0 and "Traceback" in loud.stderr and "CheckpointError" in loud.stderr


def test_python_dash_m_dam() -> None:
    result = subprocess.run([sys.executable, "-m", "dam", "--help"], capture_output=True, text=True, check=True)
    assert "reproduce" in result.stdout and "--debug" in result.stdout


def test_a_browser_check_asked_for_is_refused_before_any_work(tmp_path) -> None:
    """--check without a browser to run it: said at once in one line, not after the training and attacks; the
    screenshot's folder is checked before the report is rebuilt."""

    def run(*args: str, chromium: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DAM_COMPILE": "0", "DAM_CHROMIUM": chromium}
        return subprocess.run([sys.executable, "-m", "dam", *args], capture_output=True, text=True, timeout=120,
                              env=env)  # fmt: skip

    missing = str(tmp_path / "no-chromium")
    out = tmp_path / "rep"
    line = one_line_error(run("reproduce", "--check", "--out", str(out), chromium=missing))
    assert line.endswith(f"DAM_CHROMIUM={missing}: no such program (or not executable)") and not out.exists()
    folder = tmp_path / "made"
    folder.mkdir()
    (folder / "reproduce.json").write_text("{}")
    line = one_line_error(run("report", str(folder), "--check", chromium=missing))
    assert "no such program" in line and not (folder / "report").exists()
    (tmp_path / "afile").write_text("")
    line = one_line_error(run("report", str(folder), "--check", "--screenshot", str(tmp_path / "afile" / "s.png"),
                              chromium=shutil.which("true") or "/bin/true"))  # fmt: skip
    assert "afile: is a file, not a folder" in line and not (folder / "report").exists()


def test_a_run_killed_before_its_first_epoch_was_saved_resumes_by_starting_again(tmp_path, finished, data) -> None:
    """What a kill in the first epoch leaves (the run's record, no weights, no state): `dam train --resume`
    starts it again with its record's settings, instead of refusing a folder that only --force could clear."""
    out = tmp_path / "cut"
    out.mkdir()
    (out / "config.json").write_text((finished / "config.json").read_text())
    (out / "metrics.jsonl").write_text("")
    result = dam("train", "--out", str(out), "--resume", "--data-dir", str(data), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert model_md5(out) == model_md5(finished)  # the same settings, the same seed: the same run
