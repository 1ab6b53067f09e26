"""dam.runs.OutputFolder: what a refused job leaves behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from dam.errors import InputError
from dam.runs import OutputFolder


def test_a_job_refused_inside_its_lock_leaves_no_folder_it_made(tmp_path: Path) -> None:
    # the checks before the lock (check_kind, check_results) make the folder too: it is still the job's to remove
    for check in ("check_writable", "check_results", "check_kind"):
        folder = OutputFolder(tmp_path / check / "deeper" / "out")
        getattr(folder, check)(*((("plan.json",), "sweep") if check == "check_kind" else ()))
        assert folder.path.is_dir()
        with pytest.raises(InputError), folder.lock():
            raise InputError("refused before the first file")
        assert not (tmp_path / check).exists(), check
    # a folder that was there before is left, as it was, and so is one the job wrote into
    kept = tmp_path / "kept"
    kept.mkdir()
    with pytest.raises(InputError), OutputFolder(kept).lock():
        raise InputError("refused")
    assert kept.is_dir() and {p.name for p in kept.iterdir()} <= {".dam.lock"}  # (the lock file stays)
    written = OutputFolder(tmp_path / "written")
    with pytest.raises(InputError), written.lock():
        (written.path / "plan.json").write_text("{}")
        raise InputError("refused after its first file")
    assert (tmp_path / "written" / "plan.json").exists()
