"""The run directory: made per process, removed at exit unless kept or needed for its logs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import WAIT

SHOW_RUN_DIR = "from casa_magics.cluster.run_dir import default_run_dir; print(default_run_dir(), flush=True)"


def run(code: str, **env: str) -> tuple[Path, str]:
    environment = {k: v for k, v in os.environ.items() if k not in ("CASA_MAGICS_RUN_DIR", "CASA_MAGICS_KEEP_RUN_DIR")}
    done = subprocess.run(
        [sys.executable, "-c", code], env={**environment, **env}, capture_output=True, text=True, timeout=WAIT
    )
    return Path(done.stdout.splitlines()[0]), done.stderr


def test_the_temporary_run_directory_is_removed_at_exit():
    path, stderr = run(SHOW_RUN_DIR)
    assert path.name.startswith("casa-magics-")
    assert not path.exists()
    assert stderr == ""


def test_it_is_kept_when_asked(tmp_path):
    path, _ = run(SHOW_RUN_DIR, CASA_MAGICS_KEEP_RUN_DIR="1")
    try:
        assert path.is_dir()
    finally:
        subprocess.run(["rm", "-rf", str(path)], check=True)


def test_a_directory_the_user_chose_is_theirs(tmp_path):
    chosen = tmp_path / "mine"
    path, _ = run(SHOW_RUN_DIR, CASA_MAGICS_RUN_DIR=str(chosen))
    assert path == chosen and chosen.is_dir()


@pytest.mark.needs_mpi
def test_it_is_kept_with_a_note_when_a_start_failed():
    code = (
        SHOW_RUN_DIR + "\nfrom casa_magics import ClusterSession, ClusterError\n"
        "try:\n    ClusterSession.start(n=2, mpiexec_args=['-bogus-option'], timeout=30)\n"
        "except ClusterError:\n    pass\n"
    )
    path, stderr = run(code)
    try:
        assert path.is_dir()
        assert stderr.strip().splitlines()[-1] == (
            f"casa_magics: logs kept in {path} (the embedded cluster of 2 MPI servers did not start)"
        )
    finally:
        subprocess.run(["rm", "-rf", str(path)], check=True)
