"""Settings from CASA_MAGICS_* variables: read in one place, a bad value named in one line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from casa_magics import ClusterSession
from casa_magics.core.config import load_settings
from casa_magics.core.errors import SettingError

from .conftest import UNKNOWN_OPTION, WAIT


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("ENGINES", "two", "CASA_MAGICS_ENGINES must be a positive number, got 'two'"),
        ("ENGINES", "0", "CASA_MAGICS_ENGINES must be a positive number, got '0'"),
        ("START_TIMEOUT", "-1", "CASA_MAGICS_START_TIMEOUT must be a positive number, got '-1'"),
        ("ALLOW_NO_MPI", "maybe", "CASA_MAGICS_ALLOW_NO_MPI must be 0 or 1, got 'maybe'"),
        ("IMPORT_CASA", "2", "CASA_MAGICS_IMPORT_CASA must be 0 or 1, got '2'"),
    ],
)
def test_a_bad_value_is_named_in_one_line(variable, value, message):
    with pytest.raises(SettingError) as raised:
        load_settings({f"CASA_MAGICS_{variable}": value})
    assert str(raised.value) == message


def test_values_of_the_right_kind_are_read():
    settings = load_settings({"CASA_MAGICS_ENGINES": "3", "CASA_MAGICS_IMPORT_CASA": "off", "CASA_MAGICS_MPIEXEC_ARGS": "-f 'my hosts'"})
    assert (settings.engines, settings.import_casa, settings.mpiexec_args) == (3, False, ["-f", "my hosts"])


def test_the_facade_names_a_bad_value_at_first_use(monkeypatch):
    monkeypatch.setenv("CASA_MAGICS_ENGINES", "many")
    with pytest.raises(SettingError, match=r"^CASA_MAGICS_ENGINES must be a positive number, got 'many'$"):
        ClusterSession.start()


@pytest.mark.needs_mpi
def test_a_failed_start_in_ipython_is_one_line_and_the_engines_output(tmp_path):
    code = "get_ipython().run_line_magic('load_ext', 'casa_magics'); get_ipython().run_line_magic('casa_cluster', 'start -n 2')"
    environment = {
        **os.environ,
        "CASA_MAGICS_MPIEXEC_ARGS": "-bogus-option",
        "CASA_MAGICS_RUN_DIR": str(tmp_path),
        "CASA_MAGICS_IMPORT_CASA": "0",
    }
    done = subprocess.run(
        [sys.executable, "-m", "IPython", "--quick", "--no-banner", "--colors=NoColor", "-c", code],
        env=environment, capture_output=True, text=True, timeout=WAIT * 2,
    )
    shown = done.stdout + done.stderr
    assert "Traceback" not in shown
    error = next(line for line in shown.splitlines() if line.startswith("UsageError"))
    assert error.startswith("UsageError: cannot start servers: the engines exited during start-up (mpiexec exit status")
    assert UNKNOWN_OPTION in shown
