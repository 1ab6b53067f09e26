"""``dam sweep``: tiny sweeps over n and seeds on Ray and in-process; killed workers, reuse, no leftovers."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest

from dam.cli import main
from dam.errors import ConfigError, InputError, MissingExtraError
from dam.experiments import sweep
from dam.experiments.sweep import PointTask, SweepPlan, model_settings, run_point, run_sweep
from dam.training.presets import preset
from fakes import need, need_foolbox

# 2 n x 2 seeds of tiny models: K = 16, 2 epochs on 2,000 images; a few images for attacks and probes.
TINY = SweepPlan(
    "tiny",
    ns=(2, 20),
    seeds=(0, 1),
    schedule="quick",
    train_overrides={"num_memories": 16, "epochs": 2, "ramp_epochs": 1, "train_subset": 2000},
    images=16,
    per_class=1,
    search_options={"max_steps": 25},
    attacks={"images": 8, "linf": [0.1], "l2": [1.0], "pgd_steps": 3, "hsj_steps": 0, "autoattack": "none"},
)


@pytest.fixture(autouse=True)
def _foolbox() -> None:
    need_foolbox()  # every sweep attacks its models


@pytest.fixture(scope="module")
def ray_dir() -> Iterator[Path]:
    """A short temporary folder for Ray's sessions and sockets (Unix socket paths are limited to 107
    characters, too few under pytest's tmp_path); every Ray started by these tests lives here."""
    need("ray", "sweep")
    folder = Path(tempfile.mkdtemp(prefix="dam-ray-", dir="/tmp"))
    # The record `ray start` leaves of a cluster, here of one that is gone: Ray's own default address would
    # join it and wait for ever; a sweep without --address must start its own Ray beside it.
    (folder / "ray_current_cluster").write_text(f"127.0.0.1:{_closed_port()}")
    try:
        yield folder
    finally:
        import ray

        ray.shutdown()
        shutil.rmtree(folder, ignore_errors=True)


def _closed_port() -> int:
    """A local TCP port nothing listens on (it was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ray_init(ray_dir: Path) -> dict[str, Any]:
    return {"num_cpus": 2, "_temp_dir": str(ray_dir), "object_store_memory": 100 * 2**20}


def killed_once(task: PointTask) -> dict[str, Any]:
    """The point, except that its first attempt SIGKILLs its own worker once epoch 1 is saved."""
    marker = Path(task.folder).with_suffix(".killed")

    def kill_after_first_epoch(record: dict[str, Any]) -> None:
        if record["epoch"] == 1 and not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)

    return run_point(task, on_epoch=kill_after_first_epoch)


def _events(out: Path, name: str) -> list[dict[str, Any]]:
    path = out / "points" / f"{name}.log"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _processes_using(folder: Path) -> list[str]:
    """Live processes whose command line names ``folder`` (Ray's raylet, GCS, agents name their session)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(folder) in cmdline and _alive(int(proc.name)):
            found.append(f"{proc.name}: {cmdline[:120]}")
    return found


@pytest.fixture(scope="module")
def ray_sweep(ray_dir: Path, mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, float]:
    """The 2 x 2 tiny sweep on a local Ray, every point's first worker killed after its first epoch."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this file
    out = tmp_path_factory.mktemp("sweep-ray")
    t0 = time.perf_counter()
    summary = run_sweep(TINY, out, data_dir=mnist_dir, device="cpu", point_fn=killed_once, max_retries=2,
                        ray_init=_ray_init(ray_dir), log=lambda line: None)  # fmt: skip
    return out, summary, time.perf_counter() - t0


def test_ray_sweep_survives_killed_workers_and_trains_no_epoch_twice(ray_sweep):
    out, summary, _ = ray_sweep
    assert summary["failed"] == {}
    names = {f"n{n}-s{s}" for n in TINY.ns for s in TINY.seeds}
    assert {p["point"] for p in summary["points"]} == names
    for name in names:
        assert (out / "points" / f"{name}.killed").exists(), f"{name} was never killed"
        metrics = [json.loads(line) for line in (out / "points" / name / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in metrics] == [1, 2], name
        events = _events(out, name)
        assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1, 2], name  # each epoch trained once
        starts = [e for e in events if e["event"] == "train"]
        assert [e["from_epoch"] for e in starts] == [0, 1], name  # the retry resumed after the saved epoch
        assert starts[0]["pid"] != starts[1]["pid"]  # in another worker: the first one was killed
        assert [e["event"] for e in events].count("attacks") == 1
        point = json.loads((out / "points" / name / "point.json").read_text())
        assert point["epochs"] == 2 and point["timings"]["epochs_trained_now"] == 1
        assert set(point["robust"]) == {"linf", "l2"} and point["key"]["weights"]
        assert 0 <= point["rubbish"]["confidence_mean"] <= 1 and point["boundary"]["images"] == TINY.images


def test_ray_sweep_writes_table_json_and_figures(ray_sweep):
    out, _, _ = ray_sweep
    saved = json.loads((out / "sweep.json").read_text())
    assert saved["failed"] == {} and saved["backend"] == "ray" and saved["gpus_per_trial"] == 0
    assert [r["n"] for r in saved["per_n"]] == [2, 20]
    for row in saved["per_n"]:
        assert row["seeds"] == [0, 1]
        assert set(row["mean"]) >= {"clean_error", "robust_linf_0.1", "robust_l2_1", "boundary_l2_median",
                                    "rubbish_confidence", "rubbish_converged", "beta_sm"}  # fmt: skip
        assert row["std"]["clean_error"] >= 0
    rows = list(csv.DictReader((out / "sweep.csv").read_text().splitlines()))
    assert [r["row"] for r in rows] == ["point"] * 4 + ["mean", "std", "count"] * 2
    mean_n2 = rows[4]
    seeds_n2 = [float(r["clean_error"]) for r in rows[:4] if r["n"] == "2"]
    assert float(mean_n2["clean_error"]) == pytest.approx(sum(seeds_n2) / 2, abs=1e-6)
    for name in ("sweep_robustness.png", "sweep_probes.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_second_invocation_reuses_every_point(ray_sweep, ray_dir: Path, mnist_dir: Path):
    out, _, _ = ray_sweep
    names = [f"n{n}-s{s}" for n in TINY.ns for s in TINY.seeds]
    stamps = {n: (out / "points" / n / "point.json").stat().st_mtime_ns for n in names}
    attacks = {n: (out / "points" / n / "attacks" / "models" / f"{n}.json").stat().st_mtime_ns for n in names}
    before = {n: len(_events(out, n)) for n in names}
    summary = run_sweep(TINY, out, data_dir=mnist_dir, device="cpu", ray_init=_ray_init(ray_dir),
                        log=lambda line: None)  # fmt: skip
    assert summary["failed"] == {} and all(p["reused"] for p in summary["points"])
    for n in names:
        assert (out / "points" / n / "point.json").stat().st_mtime_ns == stamps[n]
        assert (out / "points" / n / "attacks" / "models" / f"{n}.json").stat().st_mtime_ns == attacks[n]
        assert [e["event"] for e in _events(out, n)[before[n] :]] == ["reused"]  # no training, no attack


def test_cuda_on_a_cluster_without_gpus_is_one_line_before_any_point(ray_sweep, ray_dir: Path, mnist_dir: Path,
                                                                     tmp_path: Path):  # fmt: skip
    """--device cuda where the Ray cluster has no GPU: refused once, before a point starts (not per point)."""
    with pytest.raises(InputError, match="--device cuda: the Ray cluster has no GPUs"):
        run_sweep(TINY, tmp_path / "cuda", data_dir=mnist_dir, device="cuda", ray_init=_ray_init(ray_dir),
                  log=lambda line: None)  # fmt: skip
    # refused before the plan is written: no folder tied to a sweep that never started (the lock removed its own)
    assert not (tmp_path / "cuda").exists()
    with pytest.raises(InputError, match="1000 CPUs per point: the Ray cluster has"):
        run_sweep(TINY, tmp_path / "cpus", data_dir=mnist_dir, cpus_per_trial=1000, ray_init=_ray_init(ray_dir),
                  log=lambda line: None)  # fmt: skip
    assert not (tmp_path / "cpus").exists()


def test_no_ray_process_is_left_behind(ray_sweep, ray_dir: Path):
    out, _, _ = ray_sweep
    workers = {e["pid"] for n in TINY.ns for s in TINY.seeds for e in _events(out, f"n{n}-s{s}")}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        left = _processes_using(ray_dir) + [f"worker {pid}" for pid in workers if _alive(pid)]
        if not left:
            break
        time.sleep(0.5)
    assert left == []
    import ray

    assert not ray.is_initialized()


def test_local_backend_runs_the_same_points_and_reports_failures(mnist_dir: Path, tmp_path: Path, capsys):
    plan = replace(TINY, ns=(3,), seeds=(0, 1))
    (tmp_path / "plan.json").write_text(json.dumps(asdict(plan)))  # a sweep killed in its first point left these
    (tmp_path / "points" / "n3-s0").mkdir(parents=True)
    (tmp_path / "points" / "n3-s0" / "config.json").write_text("{}")  # as a kill in the first epoch leaves it
    (tmp_path / "points" / "n3-s1").write_text("not a folder")  # this point cannot train
    lines: list[str] = []
    summary = run_sweep(plan, tmp_path, backend="local", data_dir=mnist_dir, device="cpu", log=lines.append)
    assert [p["point"] for p in summary["points"]] == ["n3-s0"]
    assert list(summary["failed"]) == ["n3-s1"] and "n3-s1 FAILED" in "\n".join(lines)
    assert json.loads((tmp_path / "sweep.json").read_text())["failed"] == summary["failed"]
    point = json.loads((tmp_path / "points" / "n3-s0" / "point.json").read_text())
    assert point["config"]["n"] == 3 and point["config"]["m"] == 3 and point["epochs"] == 2
    aside = list((tmp_path / "points").glob("n3-s0.replaced-*"))  # the unresumable start, moved, not deleted
    assert len(aside) == 1 and (aside[0] / "config.json").read_text() == "{}"

    # The command: the same sweep again reuses n3-s0, fails n3-s1 again, and says so in its exit status.
    from dam.experiments.sweep import PRESETS

    args = ["sweep", "--preset", "quick", "--out", str(tmp_path), "--backend", "local", "--data-dir", str(mnist_dir)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(PRESETS, "quick", plan)
        assert main([*args, "--device", "cpu"]) == 1
    printed = capsys.readouterr().out
    assert "n3-s0 reused" in printed and "n3-s1: " in printed and "1 points failed" in printed
    # the failure's traceback is kept in the point's log (and was shown: not a refusal, a crash)
    failure = _events(tmp_path, "n3-s1")[-1]
    assert failure["event"] == "failed" and "Traceback" in failure["traceback"]
    assert any(line.startswith("n3-s1: Traceback") for line in lines)

    # Other settings in the same folder are refused; more seeds are not other settings; nor is another attack suite
    with pytest.raises(InputError, match="other settings"):
        run_sweep(replace(plan, per_class=2), tmp_path, backend="local", data_dir=mnist_dir)
    stronger = replace(plan.suite(), pgd_steps=5)
    with pytest.raises(InputError, match=r"other settings \(changed: suite\)"):
        run_sweep(plan, tmp_path, backend="local", data_dir=mnist_dir, suite=stronger)
    # ... or other data (here: the record of the data it was made with, changed)
    record = json.loads((tmp_path / "plan.json").read_text())
    assert len(record["data_md5"]) == 4  # the four IDX files
    record["data_md5"] = {name: "0" * 32 for name in record["data_md5"]}
    (tmp_path / "plan.json").write_text(json.dumps(record))
    with pytest.raises(InputError, match=r"other settings \(changed: data_md5\)"):
        run_sweep(plan, tmp_path, backend="local", data_dir=mnist_dir)


def test_a_point_that_fails_before_its_folder_exists_is_one_failure_not_the_end(mnist_dir: Path, tmp_path: Path):
    from dam.experiments.sweep import run_point

    def first_fails(task):  # as a worker that cannot import dam, or dies, before the point makes anything
        if task.name == "n3-s0":
            raise ValueError("this worker could not start the point")
        return run_point(task)

    plan = replace(TINY, ns=(3,), seeds=(0, 1))
    lines: list[str] = []
    summary = run_sweep(plan, tmp_path / "out", backend="local", data_dir=mnist_dir, device="cpu", log=lines.append,
                        point_fn=first_fails)  # fmt: skip
    assert [p["point"] for p in summary["points"]] == ["n3-s1"] and list(summary["failed"]) == ["n3-s0"]
    assert "could not start the point" in summary["failed"]["n3-s0"]
    assert _events(tmp_path / "out", "n3-s0")[-1]["event"] == "failed"  # its log, in the folder made for it


def test_a_mean_says_how_many_seeds_are_behind_it():
    """A seed without a measurement (no beta_sm at chance accuracy) is not averaged as if it had one, and the
    spread of a single value is undefined, not 0."""
    points = [{"n": 2, "seed": 0, "clean_error": 0.1, "beta_sm": None},
              {"n": 2, "seed": 1, "clean_error": 0.2, "beta_sm": 2.0}]  # fmt: skip
    (row,) = sweep.per_n_summary(points)
    assert row["count"]["beta_sm"] == 1 and row["mean"]["beta_sm"] == 2.0 and row["std"]["beta_sm"] is None
    assert row["count"]["clean_error"] == 2 and row["std"]["clean_error"] == pytest.approx(0.0707, abs=1e-4)


def test_a_plan_setting_no_point_reads_is_refused_before_any_point():
    for change, message in (({"search_options": {"max_step": 25}}, "search_options has no setting max_step"),
                            ({"attacks": {"bogus": 1}}, "attacks has no setting bogus"),
                            ({"train_overrides": {"epoch": 3}}, "train_overrides has no setting epoch"),
                            ({"images": 20000}, "images must be between 1 and 10000")):  # fmt: skip
        with pytest.raises(InputError, match=message):
            run_sweep(replace(TINY, **change), "/nonexistent/never-made", backend="local")


def test_flags_are_validated_where_parsed(tmp_path: Path, capsys):
    assert main(["sweep", "--out", str(tmp_path), "--gpus-per-trial", "-1"]) == 2
    assert main(["sweep", "--out", str(tmp_path), "--device", "tpu"]) == 2
    assert main(["sweep", "--out", str(tmp_path), "--preset", "huge"]) == 2
    assert main(["sweep", "--out", str(tmp_path), "--backend", "local", "--address", "auto"]) == 2
    assert "only for --backend ray" in capsys.readouterr().err
    assert (
        main(["sweep", "--out", str(tmp_path), "--backend", "local", "--cpus-per-trial", "8", "--max-retries", "5"])
        == 2
    )
    assert "--cpus-per-trial and --max-retries: only for --backend ray" in capsys.readouterr().err
    out = tmp_path / "s1"
    assert main(["sweep", "--out", str(out), "--backend", "local", "--data-dir", str(tmp_path / "nowhere")]) == 2
    assert not out.exists()  # the data are looked for before the folder is made
    capsys.readouterr()
    assert main(["sweep", "--out", str(out), "--device", "cpu", "--gpus-per-trial", "1"]) == 2
    assert "would not use them" in capsys.readouterr().err and not out.exists()  # before Ray or plan.json


def test_missing_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch, mnist_dir: Path, tmp_path: Path):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingExtraError, match=r'pip install "dam\[sweep\]"'):
        run_sweep(TINY, tmp_path, data_dir=mnist_dir)


def test_settings_for_every_n_follow_the_stated_rule():
    for name in ("n2", "n3", "n20", "n30"):  # named presets are used as they are
        c = preset(name, "cpu")
        assert model_settings(c.n) == {"n": c.n, "m": c.m, "temperature_start": c.temperature_start,
                                       "temperature_end": c.temperature_end, "lr": c.lr, "momentum": c.momentum,
                                       "ramp_epochs": c.ramp_epochs}  # fmt: skip
    six = model_settings(6)  # 3/17 of the way from n3 to n20
    assert six["m"] == 8 and six["temperature_end"] == pytest.approx(70 + 470 * 3 / 17, abs=0.1)
    assert six["ramp_epochs"] == 100 and 0.6 < six["momentum"] < 0.9
    assert model_settings(25)["temperature_end"] == 595.0 and model_settings(25)["ramp_epochs"] == 0
    assert model_settings(40) == {**model_settings(30), "n": 40}  # past n30: its settings held
    for plan in sweep.PRESETS.values():
        for n, seed in plan.points():
            plan.config(n, seed)  # every point of both presets is valid and float32-safe
    hot = SweepPlan("hot", ns=(40,), seeds=(0,), train_overrides={"temperature_start": 40.0, "temperature_end": 40.0})
    with pytest.raises(ConfigError, match="overflow float32"):
        hot.config(40, 0)
    with pytest.raises(InputError):
        SweepPlan("bad", ns=(2, 2), seeds=(0,))


@contextlib.contextmanager
def _server(answer: bytes | None) -> Iterator[str]:
    """A local TCP server whose every connection gets ``answer`` (None: nothing, then closed); its host:port."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.2)
        stop = threading.Event()

        def serve() -> None:
            while not stop.is_set():
                try:
                    connection, _ = server.accept()
                except OSError:
                    continue
                with connection:
                    connection.settimeout(2)
                    with contextlib.suppress(OSError):
                        connection.recv(len(sweep.HTTP2_PREFACE))
                        if answer is not None:
                            connection.sendall(answer)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            yield f"127.0.0.1:{server.getsockname()[1]}"
        finally:
            stop.set()
            thread.join()


GRPC = bytes([0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100])  # an HTTP/2 server's first frame: SETTINGS (type 4)


def test_the_ray_address_is_local_unless_given_and_a_given_one_must_answer(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path):  # fmt: skip
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_USE_TLS", raising=False)
    assert sweep.ray_address(None) == "local"  # never the last `ray start` cluster Ray's None would join
    assert sweep.ray_address("auto", temp_dir=str(tmp_path)) == "auto" and sweep.ray_address("local") == "local"
    with _server(GRPC) as live:
        assert sweep.ray_address(live) == live and sweep.ray_address(f"ray://{live}") == f"ray://{live}"
        monkeypatch.setenv("RAY_ADDRESS", live)
        assert sweep.ray_address(None) is None  # Ray reads RAY_ADDRESS itself, once it is known to answer
        monkeypatch.delenv("RAY_ADDRESS")
    # a port that answers, but not as Ray's gRPC servers do: Ray would wait on it for ever
    for answer in (b"HTTP/1.0 400 Bad request\r\n\r\n", b"SSH-2.0-OpenSSH_9.6\r\n", None):
        with _server(answer) as other:
            with pytest.raises(InputError, match=f"at '{other}': {other} answers, but not as Ray does .gRPC.: give"):
                sweep.ray_address(other, timeout=2)
            monkeypatch.setenv("RAY_USE_TLS", "1")  # over TLS the handshake cannot be seen: only TCP is checked
            assert sweep.ray_address(other, timeout=2) == other
            monkeypatch.delenv("RAY_USE_TLS")
    dead = f"127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("RAY_ADDRESS", dead)
    with pytest.raises(InputError, match=f"cannot join RAY_ADDRESS at '{dead}': .* at {dead}"):
        sweep.ray_address(None)
    monkeypatch.delenv("RAY_ADDRESS")
    with pytest.raises(InputError, match=f"cannot join the Ray cluster at '{dead}'"):
        sweep.ray_address(dead)
    with pytest.raises(InputError, match="'headnode' is not an address: use host:port"):
        sweep.ray_address("headnode")


def test_auto_joins_the_recorded_cluster_only_if_it_answers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert sweep.ray_record(str(tmp_path)) == tmp_path / "ray_current_cluster"
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "base"))
    assert sweep.ray_record() == tmp_path / "base" / "ray" / "ray_current_cluster"  # Ray's own rule
    assert sweep.ray_address("auto", temp_dir=str(tmp_path)) == "auto"  # no record: Ray looks for a running one
    dead = f"127.0.0.1:{_closed_port()}"
    (tmp_path / "ray_current_cluster").write_text(dead + "\n")
    record = tmp_path / "ray_current_cluster"
    with pytest.raises(
        InputError, match=f"cannot join the cluster `ray start` recorded in {record} at '{dead}'.*ray stop"
    ):
        sweep.ray_address("auto", temp_dir=str(tmp_path))
    monkeypatch.setenv("RAY_ADDRESS", "auto")  # Ray reads the variable, then the same record
    with pytest.raises(InputError, match="recorded in"):
        sweep.ray_address(None, temp_dir=str(tmp_path))
    assert sweep.ray_address("anyscale://cluster") == "anyscale://cluster"  # another client protocol: Ray's checks
    monkeypatch.delenv("RAY_ADDRESS")
    assert sweep.ray_address(None, temp_dir=str(tmp_path)) == "local"  # not told to join: its own Ray
    with _server(GRPC) as live:
        record.write_text(live)
        assert sweep.ray_address("auto", temp_dir=str(tmp_path)) == "auto"


def test_an_unreachable_cluster_is_one_line_before_the_folder_is_made(tmp_path: Path):
    out = tmp_path / "sweep"
    dead = f"127.0.0.1:{_closed_port()}"
    result = subprocess.run([sys.executable, "-m", "dam", "sweep", "--out", str(out), "--address", dead],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert (
        result.stderr.strip()
        == f"dam sweep: error: cannot join the Ray cluster at '{dead}': Connection refused at {dead}"
    )
    assert not out.exists()
    # a port that answers something else (a web server here): one line too, at once, not Ray's endless retries
    with _server(b"HTTP/1.0 400 Bad request\r\n\r\n") as web:
        result = subprocess.run([sys.executable, "-m", "dam", "sweep", "--out", str(out), "--address", web],
                                capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"{web} answers, but not as Ray does (gRPC)" in result.stderr and not out.exists()
