"""scripts/chromium.sh, which the main job and CI run before the report's browser check."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "scripts" / "chromium.sh"


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    """The only folder on the script's PATH: the commands each test puts there."""
    path = tmp_path / "bin"
    path.mkdir()
    return path


def stub(bin_dir: Path, name: str, body: str) -> None:
    (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
    (bin_dir / name).chmod(0o755)


def run(bin_dir: Path, **env: str) -> subprocess.CompletedProcess:
    # dam's lookup runs in this test's Python (the script's default is the repository's .venv)
    env = {"PATH": str(bin_dir), "DAM_PYTHON": sys.executable, **env}
    return subprocess.run(["/bin/bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)


def test_a_chromium_on_the_path_is_left_alone(bin_dir: Path, tmp_path: Path) -> None:
    stub(bin_dir, "chromium", "exit 0")
    stub(bin_dir, "id", "echo 0")
    stub(bin_dir, "apt-get", f"echo called >> {tmp_path}/apt")
    done = run(bin_dir)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert not (tmp_path / "apt").exists()


def test_dam_chromium_is_taken_as_given(bin_dir: Path) -> None:
    done = run(bin_dir, DAM_CHROMIUM="/opt/chrome/chrome")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_without_apt_get_it_says_in_one_line_how_to_get_chromium(bin_dir: Path) -> None:
    stub(bin_dir, "id", "echo 0")
    done = run(bin_dir)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "apt-get install chromium" in done.stderr and "DAM_CHROMIUM" in done.stderr


def test_a_user_who_is_not_root_is_told_not_asked_for_a_password(bin_dir: Path, tmp_path: Path) -> None:
    stub(bin_dir, "id", "echo 1000")
    stub(bin_dir, "apt-get", f"echo called >> {tmp_path}/apt")
    done = run(bin_dir)
    assert done.returncode == 1 and "sudo apt-get install chromium" in done.stderr
    assert not (tmp_path / "apt").exists()


def test_root_with_apt_get_gets_debians_chromium(bin_dir: Path, tmp_path: Path) -> None:
    stub(bin_dir, "id", "echo 0")
    stub(bin_dir, "apt-get", f'echo "$@" >> {tmp_path}/apt')
    done = run(bin_dir)
    assert done.returncode == 0, done.stderr
    assert "installing Debian's chromium" in done.stdout
    assert (tmp_path / "apt").read_text().split() == ["install", "-y", "-q", "chromium"]


def test_without_dams_python_it_says_to_set_up_first(bin_dir: Path, tmp_path: Path) -> None:
    stub(bin_dir, "id", "echo 0")
    stub(bin_dir, "apt-get", f"echo called >> {tmp_path}/apt")
    done = run(bin_dir, DAM_PYTHON=str(tmp_path / "no-venv" / "python"))
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "bash scripts/setup.sh" in done.stderr
    assert not (tmp_path / "apt").exists()
