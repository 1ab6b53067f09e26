"""Independent jobs in worker processes, for a multi-core CPU.

Several small models attacked at once use the cores better than one model at a time with every core: the
matrix products of a K = 400 DAM on 100 images are too small to split well across threads, and an attack's
Python between them holds the interpreter.  :func:`run_jobs` runs jobs in ``workers`` processes, each
with its share of the cores as torch threads, and passes their progress lines to the caller's ``log`` as
they come.  Jobs and results cross as plain pickles (bytes): through a queue, torch would share a tensor
by a file descriptor that its sender must still be alive to hand over, and a worker that has finished is
not.

What a worker must never do is outlive its parent: the output folder's lock (:mod:`dam.runs`) is the
parent's, and the kernel drops it when the parent dies, so an orphaned worker would write beside the next
writer.  Workers therefore end when the parent is gone (a killed parent included), ignore Ctrl-C (the
parent gets it and terminates them), and an error in one job terminates the others and reaches the caller
with its traceback.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import queue
import signal
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dam.errors import InputError

PARENT_POLL_SECONDS = 1.0
EXIT_GRACE_SECONDS = 30.0  # how long a worker whose jobs are all done may take to exit before it is killed
WORKER_NAME = "dam-worker"


@dataclass(frozen=True)
class Job:
    """``fn(*args, **kwargs, log=...)``: ``fn`` a module-level function (workers import it by name), its
    arguments picklable."""

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


def check_workers(workers: int) -> int:
    if workers < 1:
        raise InputError(f"workers must be at least 1, got {workers}")
    return workers


def threads_per_worker(workers: int) -> int:
    """The cores shared out among ``workers`` processes (at least one thread each)."""
    return max(1, (os.cpu_count() or 1) // workers)


def run_jobs(jobs: Sequence[Job], workers: int, log: Callable[[str], None]) -> list[Any]:
    """Each job's return value, in order.  ``workers`` 1 (or a single job) runs them here, one after another."""
    check_workers(workers)
    if workers == 1 or len(jobs) <= 1:
        return [job.fn(*job.args, **job.kwargs, log=log) for job in jobs]
    if multiprocessing.current_process().name.startswith(WORKER_NAME):
        # A worker imports the caller's script again; unguarded, the script would start workers from here.
        # Refused before any queue exists: a queue holding more than a pipe's buffer would keep this process
        # from ever exiting, and the caller waiting for it.
        raise WorkerError("a dam worker cannot start workers of its own; a script that starts workers needs "
                          "`if __name__ == '__main__':` around its code")  # fmt: skip
    # spawn, not fork: a forked child inherits torch's thread pools in whatever state the parent left them
    context = multiprocessing.get_context("spawn")
    tasks, replies = context.Queue(), context.Queue()
    count = min(workers, len(jobs))
    for i, job in enumerate(jobs):
        tasks.put((i, pickle.dumps(job)))
    for _ in range(count):
        tasks.put(None)  # one "no more" per worker
    procs = [context.Process(target=_worker, args=(tasks, replies, os.getpid(), threads_per_worker(count)),
                             daemon=True, name=f"{WORKER_NAME}-{k}") for k in range(count)]  # fmt: skip
    results: dict[int, Any] = {}
    try:
        for proc in procs:
            proc.start()
        while len(results) < len(jobs):
            try:
                kind, i, payload = replies.get(timeout=0.5)
            except queue.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead or not any(p.is_alive() for p in procs):
                    codes = ", ".join(str(p.exitcode) for p in dead) or "0"
                    raise WorkerError(f"a worker process died (exit code {codes}) with {len(jobs) - len(results)} "
                                      "job(s) unfinished; a script that starts workers needs "
                                      "`if __name__ == '__main__':` around its code") from None  # fmt: skip
                continue
            if kind == "log":
                log(payload)
            elif kind == "done":
                results[i] = pickle.loads(payload)
            else:  # the job's error, raised here with the worker's traceback as its cause
                error, text = payload
                raise error from WorkerError(f"in worker:\n{text}")
    finally:
        # Every job done: each worker has its "no more" and is exiting; let it, so that it releases what it holds
        # (a worker killed while exiting leaves semaphores that the resource tracker reports as leaked at the
        # end).  On any other way out (an error, Ctrl-C) no worker outlives the call.
        grace = time.monotonic() + (EXIT_GRACE_SECONDS if len(results) == len(jobs) else 0.0)
        for proc in procs:
            proc.join(timeout=max(0.0, grace - time.monotonic()))
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join()
        # Jobs no worker took may still fill the pipe, and nobody will read them: without this, the queue's
        # feeder thread would wait to write them forever and keep this process from exiting.
        tasks.cancel_join_thread()
    return [results[i] for i in range(len(jobs))]


class WorkerError(RuntimeError):
    """A worker process died, or (as a cause) where a job's error happened in a worker."""


def _worker(tasks: Any, replies: Any, parent: int, threads: int) -> None:
    import torch
    from tqdm.std import tqdm

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    torch.set_num_threads(threads)
    # tqdm makes a multiprocessing lock (a named semaphore) for its first bar, a disabled one too; a worker
    # terminated on Ctrl-C cannot unlink it, and the resource tracker then warns of a leaked semaphore.  A
    # worker draws no bars, so a thread lock serves.
    tqdm.set_lock(threading.RLock())
    threading.Thread(target=_end_with, args=(parent,), daemon=True, name="dam-parent-watch").start()

    def log(line: str) -> None:
        replies.put(("log", -1, line))

    while (task := tasks.get()) is not None:
        i, job = task[0], pickle.loads(task[1])
        try:
            replies.put(("done", i, pickle.dumps(job.fn(*job.args, **job.kwargs, log=log))))
        except BaseException as exc:
            text = traceback.format_exc()
            try:
                pickle.dumps(exc)
            except Exception:
                exc = WorkerError(f"{type(exc).__name__}: {exc}")
            replies.put(("error", i, (exc, text)))
            return


def _end_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)  # the parent is gone: stop at once, whatever is under way
