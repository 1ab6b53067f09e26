"""Run folders: what they hold, how to read them, and the one writer allowed at a time.

A run folder holds ``config.json`` (model and training settings, seed, data folder, versions, device),
``model.safetensors`` (weights, never a pickle), ``metrics.jsonl`` (one line per finished epoch) and
``train_state.safetensors`` (everything resuming needs, written atomically; :mod:`dam.training.loop` says
when).  Output folders of probes, attacks and the detector follow the same rules for writing:

- one writer at a time: :meth:`OutputFolder.lock` takes an OS file lock (the ``filelock`` library; the
  kernel drops it when the process dies, so a killed run leaves no stale lock) and a second writer gets
  a :class:`~dam.errors.RunLockedError` naming the holder;
- a finished or foreign run is never overwritten silently: :meth:`OutputFolder.claim` refuses, and names
  ``--resume`` or ``--force`` (which moves the old folder aside, never deletes it);
- the folder is checked writable before any compute (:meth:`OutputFolder.check_writable`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from itertools import takewhile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dam.errors import CheckpointError, InputError, RunFolderError, RunLockedError
from dam.io import read_json_object
from dam.model import CONFIG_FILE, WEIGHTS_FILE, DenseAssociativeMemory

METRICS_FILE = "metrics.jsonl"
STATE_FILE = "train_state.safetensors"
LOCK_FILE = ".dam.lock"
LOCK_OWNER_FILE = ".dam.lock.json"
RUN_FILES = (CONFIG_FILE, WEIGHTS_FILE, METRICS_FILE, STATE_FILE)

logger = logging.getLogger(__name__)


# -- reading ---------------------------------------------------------------------------------------


def read_run_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    return read_json_object(Path(folder) / CONFIG_FILE, f"{folder} is not a dam run folder")


def resume_flags(record: dict[str, Any]) -> str:
    """The flags that resume the run a config.json ``record`` describes, for a message: a baseline's --model."""
    if record.get("kind", "dam") == "dam":
        return ""
    degree = (record.get("model") or {}).get("degree")
    return "--model mlp-relu" if degree == 1 else f"--model mlp-repu --degree {degree}" if degree else "--model"


def run_kind(folder: str | os.PathLike[str]) -> str:
    """ "dam" or "mlp"; folders written before kinds existed are DAMs."""
    if not Path(folder).is_dir():
        what = "is a file, not a run folder" if Path(folder).exists() else "no such run folder"
        raise CheckpointError(f"{folder}: {what}")
    return str(read_run_config(folder).get("kind", "dam"))


def load_model(folder: str | os.PathLike[str], *, device: torch.device | str | None = None) -> nn.Module:
    """A DenseAssociativeMemory or an MLPClassifier, whichever the run folder holds, in eval mode on ``device``
    ("auto": a GPU when there is one; "cpu", "cuda", "cuda:N"; None: the CPU).

    A DAM loaded from a run also carries the loss power m it was trained with (``model.loss_power``), which
    the probes' searches use as their objective's m.
    """
    kind = run_kind(folder)
    if kind == "dam":
        return DenseAssociativeMemory.load(folder, device=device)
    if kind == "mlp":
        from dam.baselines import MLPClassifier

        return MLPClassifier.load(folder, device=device)
    raise CheckpointError(f"{Path(folder) / CONFIG_FILE}: unknown model kind {kind!r}")


def model_name(run: str | os.PathLike[str]) -> str:
    """A run's name in tables and output folders: its folder's name."""
    return Path(run).resolve().name


def distinct_names(runs: list[str] | list[str | os.PathLike[str]]) -> list[str]:
    """The runs' names, refused when two share one: results are kept per name, so one would overwrite the
    other (``a/n2`` and ``b/n2``), and a run given twice would be measured twice."""
    names = [model_name(r) for r in runs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(f"two runs are named {', '.join(repeated)} (results are kept by folder name); "
                         "give each run once, in folders of distinct names")  # fmt: skip
    return names


def training_m(run: str | os.PathLike[str]) -> int:
    """The loss power m a DAM run was trained with: the probes' searches use the same objective."""
    train = read_run_config(run).get("train") or {}
    if "m" not in train:
        raise CheckpointError(f"{Path(run) / CONFIG_FILE}: records no training loss power m; give --m")
    return int(train["m"])


def run_dataset(run: str | os.PathLike[str]) -> str:
    """The data set a run was trained on ("mnist" for runs that do not say): its probes use the same one."""
    return str((read_run_config(run).get("train") or {}).get("dataset", "mnist"))


def common_dataset(runs: list[str | os.PathLike[str]] | list[str]) -> str:
    """The one data set all ``runs`` were trained on; runs of different data sets cannot share a probe."""
    names = {run_dataset(run) for run in runs}
    if len(names) > 1:
        raise CheckpointError(f"the runs were trained on different data sets ({', '.join(sorted(names))})")
    return names.pop() if names else "mnist"


def run_data_dir(run: str | os.PathLike[str]) -> str | None:
    """The data folder a run was trained on, where it still exists (resumes and evaluations read the same
    data the run started with)."""
    saved = read_run_config(run).get("data_dir")
    return saved if saved and Path(saved).is_dir() else None


def model_md5(run: str | os.PathLike[str]) -> str:
    """Fingerprint of a run's weights: a result made with other weights (a retrained model) is stale.

    The tensors are hashed, not the file: safetensors writes its metadata in no fixed order, so the same
    weights saved twice can differ byte for byte.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(run) / WEIGHTS_FILE
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: missing or unreadable ({exc})") from None
    digest = hashlib.md5(usedforsecurity=False)
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].contiguous().numpy().tobytes())
    return digest.hexdigest()


def finished_epochs(folder: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(epochs done, epochs planned) of a run folder, or None when it holds no resumable training run."""
    folder = Path(folder)
    if not (folder / STATE_FILE).exists() or not (folder / CONFIG_FILE).exists():
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(folder / STATE_FILE), framework="pt") as f:
            done = int((f.metadata() or {})["epochs_done"])
        planned = int(read_run_config(folder)["train"]["epochs"])
    except (SafetensorError, OSError, KeyError, ValueError, TypeError, CheckpointError):
        return None
    return done, planned


def finished_with(folder: str | os.PathLike[str], **settings: Any) -> bool:
    """The run in ``folder`` finished every planned epoch and was made with these settings (config.json
    sections, e.g. ``train=asdict(config)``): what a pipeline checks before reusing a trained model."""
    status = finished_epochs(folder)
    if status is None or status[0] < status[1]:
        return False
    saved = read_run_config(folder)
    return all(saved.get(section) == value for section, value in settings.items())


# -- writing ---------------------------------------------------------------------------------------


class OutputFolder:
    """A folder this process is about to write: checked before compute, locked while written."""

    def __init__(self, path: str | os.PathLike[str], what: str = "output folder") -> None:
        self.path = Path(path)
        self.what = what
        self.made: list[Path] = []  # the folders this object created (the folder and missing parents), deepest first

    def check_writable(self) -> None:
        """Create the folder if needed and prove a file can be written in it; one-line error otherwise."""
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"{self.path}: is a file, not a folder; give a folder as the {self.what}")
        try:
            self.made = self.made or list(takewhile(lambda p: not p.exists(), (self.path, *self.path.parents)))
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".dam-write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise RunFolderError(f"{self.path}: cannot write the {self.what} ({exc.strerror or exc})") from exc

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder's lock for the block; a second writer gets RunLockedError naming this one.  A folder
        the lock (or this object's earlier checks) created and the block left empty (a run refused before its first
        file) is removed again."""
        from filelock import FileLock, Timeout

        self.check_writable()
        made = self.made
        lock = FileLock(str(self.path / LOCK_FILE), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise RunLockedError(
                f"{self.path}: another dam process is writing this {self.what} ({self._holder()}); "
                "wait for it to finish or use another folder"
            ) from None
        owner = self.path / LOCK_OWNER_FILE
        try:
            owner.write_text(json.dumps(_owner_record()))
            yield
        finally:
            owner.unlink(missing_ok=True)
            empty = bool(made) and all(p.name == LOCK_FILE for p in self.path.iterdir())
            if empty:  # unlinked while still held, so no second writer can take this lock file meanwhile
                (self.path / LOCK_FILE).unlink(missing_ok=True)
            lock.release()
            if empty:
                with suppress(OSError):  # a folder someone else has written to since stays, with its parents
                    for folder in made:
                        folder.rmdir()

    def _holder(self) -> str:
        try:
            rec = json.loads((self.path / LOCK_OWNER_FILE).read_text())
            return f"pid {rec['pid']} on {rec['host']} since {rec['started']}: {rec['command']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "holder unknown"

    @contextmanager
    def writing(self, *, resume: bool, force: bool = False) -> Iterator[bool]:
        """Lock the folder and :meth:`claim` it for a training run; yields whether there is a run to resume.

        With ``force`` the old folder is moved aside under its own lock (no one else is writing it), and
        the new, empty folder is locked in turn."""
        if resume and force:
            raise InputError("resume and force: continue the run, or move it aside and start anew, not both")
        if force and self.path.is_dir() and any(self.path.iterdir()):
            with self.lock():
                self.move_aside()
        with self.lock():
            yield self.claim(resume=resume)

    def holds_run(self) -> bool:
        return any((self.path / name).exists() for name in RUN_FILES)

    def unstarted_run(self) -> bool:
        """A training run killed before its first epoch was saved: its record (config.json of a dam run), perhaps
        metrics, and no weights and no training state, so nothing to continue from, and nothing else.  Starting it
        again loses nothing."""
        if not self.path.is_dir():
            return False
        names = {p.name for p in self.path.iterdir()} - {LOCK_FILE, LOCK_OWNER_FILE}
        if CONFIG_FILE not in names or not names <= {CONFIG_FILE, METRICS_FILE}:
            return False
        try:
            record = json.loads((self.path / CONFIG_FILE).read_text())
        except (OSError, ValueError):
            return False
        return isinstance(record, dict) and isinstance(record.get("train"), dict) and "kind" in record

    def check_results(self) -> None:
        """Refuse to write results (probes, attacks, a detector) into a training run's folder: they would
        mix with the run's files and could replace its own (a fine-tuned run's robustness.json)."""
        if self.path.is_dir() and self.holds_run():
            raise RunFolderError(
                f"{self.path}: holds a training run; give the {self.what} its own --out, not a run folder"
            )
        self.check_writable()

    def check_kind(self, markers: tuple[str, ...], kind: str) -> None:
        """Refuse a non-empty folder that is not a ``kind`` (it has none of the ``markers``, the files every
        ``kind`` writes first): this command's files would mix with another's, and its reuse checks would
        not apply."""
        if self.path.is_dir():
            if self.holds_run():
                raise RunFolderError(f"{self.path}: holds a training run, not a {kind}; give another --out")
            others = [p.name for p in self.path.iterdir() if p.name not in (LOCK_FILE, LOCK_OWNER_FILE)]
            if others and not any((self.path / marker).exists() for marker in markers):
                raise RunFolderError(
                    f"{self.path}: not empty and not a {kind} (it has no {markers[0]}); use an empty or new --out"
                )
        self.check_writable()

    def claim(self, *, resume: bool) -> bool:
        """Decide what a training run may do with this folder; True when there is a run to resume.

        - empty or new folder: train into it;
        - a resumable run (training state present): continue it only with ``resume``;
        - a finished run without state, or any other non-empty folder: refused (``--force`` moves it
          aside first, see :meth:`writing`; nothing is ever deleted).
        """
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"{self.path}: is a file, not a folder; give a folder as the {self.what}")
        if not self.path.exists():
            return False
        if (self.path / STATE_FILE).exists():
            if resume:
                return True
            done = finished_epochs(self.path)
            state = f"{done[0]} of {done[1]} epochs done" if done else "a training state"
            raise RunFolderError(
                f"{self.path}: already holds a training run ({state}); pass --resume (resume=True) to "
                "continue it, --force (force=True) to move it aside, or another --out"
            )
        if self.unstarted_run():
            logger.warning("%s: a run stopped before its first epoch was saved (nothing to continue from): starting "
                           "it again", self.path)  # fmt: skip
            return False
        if self.holds_run():
            raise RunFolderError(
                f"{self.path}: holds a run without a training state (finished elsewhere or foreign); it is not "
                "overwritten: use another --out, or --force (force=True) to move it aside"
            )
        if any(p.name not in (LOCK_FILE, LOCK_OWNER_FILE) for p in self.path.iterdir()):
            raise RunFolderError(
                f"{self.path}: not empty and not a dam run; use an empty or new --out, or --force (force=True) "
                "to move it aside"
            )
        return False

    def move_aside(self) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.path.with_name(f"{self.path.name}.replaced-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f"{self.path.name}.replaced-{stamp}-{n}")
        try:
            self.path.rename(target)
        except OSError as exc:
            raise RunFolderError(f"{self.path}: cannot move the old run aside ({exc.strerror or exc})") from exc
        (target / LOCK_OWNER_FILE).unlink(missing_ok=True)
        logger.warning("moved the old contents of %s aside to %s", self.path, target)
        return target


def _owner_record() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": " ".join(sys.argv)[:300],
    }
