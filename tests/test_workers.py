from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from dam.errors import InputError
from dam.workers import Job, WorkerError, run_jobs


def double(x: int, log: Callable[[str], None]) -> int:
    log(f"doubling {x} in {os.getpid()}")
    return 2 * x


def fail_on_two(x: int, log: Callable[[str], None]) -> int:
    if x == 2:
        raise InputError("job 2 cannot")
    time.sleep(0.2 * x)
    return x


def test_results_come_back_in_order_with_the_workers_progress_lines() -> None:
    lines: list[str] = []
    assert run_jobs([Job(double, (i,)) for i in range(5)], 2, lines.append) == [0, 2, 4, 6, 8]
    assert sorted(line.split(" in ")[0] for line in lines) == [f"doubling {i}" for i in range(5)]
    assert all(int(line.split(" in ")[1]) != os.getpid() for line in lines)  # made in other processes
    here: list[str] = []
    assert run_jobs([Job(double, (3,))], 2, here.append) == [6]  # one job: no process to start
    assert here == [f"doubling 3 in {os.getpid()}"]


def test_a_jobs_error_reaches_the_caller_with_its_traceback_and_ends_the_others() -> None:
    with pytest.raises(InputError, match="job 2 cannot") as caught:
        run_jobs([Job(fail_on_two, (i,)) for i in range(6)], 2, lambda line: None)
    assert isinstance(caught.value.__cause__, WorkerError)
    assert "fail_on_two" in str(caught.value.__cause__)  # where in the worker it happened
    assert multiprocessing.active_children() == []


def tensor_of(x: int, log: Callable[[str], None]) -> torch.Tensor:
    log("made")
    return torch.full((1000,), float(x))


def test_tensors_come_back_after_their_workers_have_ended() -> None:
    """The parent reads a result after its worker has exited (it is slow on the progress line first)."""
    got = run_jobs([Job(tensor_of, (i,)) for i in range(2)], 2, lambda line: time.sleep(1.5))
    assert [float(t.sum()) for t in got] == [0.0, 1000.0]


def test_workers_must_be_positive() -> None:
    with pytest.raises(InputError, match="workers must be at least 1"):
        run_jobs([Job(double, (1,))], 0, print)


@pytest.mark.parametrize("payload", [1, 200_000], ids=["small jobs", "jobs larger than a pipe's buffer"])
def test_a_script_without_a_main_guard_gets_a_clear_error(tmp_path: Path, payload: int) -> None:
    """A spawned worker imports the script again; unguarded, it would start workers of its own.  With jobs
    larger than a pipe holds, such a worker once hung on exit (its queue's feeder thread never flushed), and
    with it the script, until the worker refused to start workers at all."""
    script = tmp_path / "unguarded.py"
    script.write_text(
        textwrap.dedent(f"""
        import torch
        from dam.workers import Job, run_jobs
        from test_workers import double
        run_jobs([Job(double, (torch.zeros({payload}),)), Job(double, (torch.zeros({payload}),))], 2, print)
    """)
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode != 0
    assert "a worker process died" in done.stderr and "__main__" in done.stderr


def test_a_dead_worker_does_not_hang_the_callers_exit(tmp_path: Path) -> None:
    """A worker killed (say, for memory) with large jobs still queued: the caller gets the error and exits."""
    script = tmp_path / "killed.py"
    script.write_text(
        textwrap.dedent("""
        import os, signal, torch
        from dam.workers import Job, run_jobs

        def die(x, log):
            os.kill(os.getpid(), signal.SIGKILL)

        if __name__ == "__main__":
            run_jobs([Job(die, (torch.zeros(200_000),)) for _ in range(8)], 2, print)
    """)
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode != 0
    assert "a worker process died (exit code -9" in done.stderr


def test_workers_end_when_their_parent_is_killed(tmp_path: Path) -> None:
    """The output folder's lock is the parent's: a worker left running would write beside the next writer."""
    pids = tmp_path / "pids"
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(f"""
        import os, time
        from dam.workers import Job, run_jobs

        def sleep(i, log):
            with open({str(pids)!r} + str(i), "w") as f:
                f.write(str(os.getpid()))
            time.sleep(300)

        if __name__ == "__main__":
            run_jobs([Job(sleep, (0,)), Job(sleep, (1,))], 2, print)
    """)
    )
    parent = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path)
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"pids{i}").exists() for i in (0, 1)):
        assert time.monotonic() < deadline and parent.poll() is None, "the workers did not start"
        time.sleep(0.2)
    time.sleep(0.2)
    workers = [int((tmp_path / f"pids{i}").read_text()) for i in (0, 1)]
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in workers):
        assert time.monotonic() < deadline, "a worker outlived its killed parent"
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (dead, not yet reaped by init) counts as ended
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def test_ctrl_c_leaves_no_leaked_semaphore(tmp_path: Path) -> None:
    """Ctrl-C while workers run jobs that make (disabled) progress bars, as the attacks do: the workers are
    terminated, and the resource tracker must find nothing of theirs left (tqdm's first bar used to make a
    multiprocessing lock that a terminated worker could not unlink)."""
    ready = tmp_path / "ready"
    script = tmp_path / "bars.py"
    script.write_text(
        textwrap.dedent(f"""
        import signal, time
        from dam.progress import progress_bar
        from dam.workers import Job, run_jobs

        def bar(i, log):
            with progress_bar(10, enabled=False):
                open({str(ready)!r} + str(i), "w").close()
                time.sleep(300)

        if __name__ == "__main__":
            signal.signal(signal.SIGINT, signal.default_int_handler)  # as on a terminal
            run_jobs([Job(bar, (0,)), Job(bar, (1,))], 2, print)
    """)
    )
    parent = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in (0, 1)):
        assert time.monotonic() < deadline and parent.poll() is None, "the workers did not start"
        time.sleep(0.2)
    parent.send_signal(signal.SIGINT)
    _, err = parent.communicate(timeout=60)
    assert "KeyboardInterrupt" in err and "leaked semaphore" not in err, err
