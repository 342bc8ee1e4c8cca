"""Shared fixtures: real ipyparallel clusters of MPI engines, no mocks.

One embedded cluster of two MPI servers serves every test that leaves the
servers as it found them (``client``). Tests that kill or stop servers make
their own cluster (``own_cluster``) so the shared one is never harmed.

Tests wait for a state with :func:`wait_until` (a deadline, never a fixed
sleep) and change the environment only through ``monkeypatch``; the
session-wide settings below use ``pytest.MonkeyPatch.context()``, because the
``monkeypatch`` fixture cannot be session-scoped.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from casa_magics import ClusterSession, CommandClient, MPICommandClient, set_current_session
from casa_magics.core.config import load_settings
from casa_magics.cluster.launcher import find_mpiexec, is_hydra

WAIT = 60  # seconds: the longest any test waits for anything
#: The venv's bin, first on PATH for the tests and the engines they start, so mpiexec is the MPI wheel's.
VENV_BIN = str(Path(sys.executable).parent)
#: True when the servers' MPI is MPICH (make install MPI=mpich), False for Open MPI (the default).
HYDRA = is_hydra(find_mpiexec("mpiexec") or "mpiexec")
#: What mpiexec says about the option -bogus-option.
UNKNOWN_OPTION = "unrecognized argument bogus-option" if HYDRA else "Option: --bogus-option"


def wait_until(predicate: Callable[[], Any], timeout: float = WAIT, message: str = "the state waited for") -> Any:
    """Return ``predicate()``'s first true value; fail if none comes within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message}: not reached within {timeout:g} s")
        time.sleep(0.01)


def started_marker(path: Path) -> str:
    """Code that, run first in a command on a server, creates ``path``: proof that the command is running."""
    return f"open({str(path)!r}, 'w').close()"


def pytest_collection_modifyitems(config, items):
    if shutil.which("mpiexec", path=VENV_BIN + os.pathsep + os.environ.get("PATH", "")) is None:
        skip = pytest.mark.skip(reason="mpiexec not found: install an MPI wheel (make install)")
        for item in items:
            if "needs_mpi" in item.keywords:
                item.add_marker(skip)


def kill_busy_server(client: CommandClient, pid: int, marker: Path) -> tuple[list[int], list[int], list[int], list[int]]:
    """Make a 3-server cluster busy, then SIGKILL server 2 (process ``pid``) in the middle of a command.

    Returns the request IDs: running on server 2, queued behind it, busy on
    servers 1 and 3, and four held for any server.
    """
    running = client.push_command_request(f"{started_marker(marker)}; import time; time.sleep(30)", target_server=2)
    queued = client.push_command_request("'behind'", target_server=2)
    others_busy = client.push_command_request("import time; time.sleep(2)", target_server=[1, 3])
    held = [client.push_command_request("casa_server_id")[0] for _ in range(4)]
    wait_until(marker.exists, message="the long request running on server 2")
    os.kill(pid, signal.SIGKILL)
    return running, queued, others_busy, held


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("run")


@pytest.fixture(scope="session", autouse=True)
def test_environment(run_dir):
    """The environment of the whole run, put back at its end.

    The venv's bin first on PATH (engines inherit it); the shared run
    directory; CASA imported on the servers when a test asks, not in the
    background (2 cores; see test_session), unless the caller chose.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", VENV_BIN + os.pathsep + os.environ.get("PATH", ""))
        patch.setenv("CASA_MAGICS_RUN_DIR", str(run_dir))
        if "CASA_MAGICS_IMPORT_CASA" not in os.environ:
            patch.setenv("CASA_MAGICS_IMPORT_CASA", "0")
        yield


@pytest.fixture(scope="session")
def session(test_environment):
    """The shared embedded cluster: two MPI servers."""
    cluster = ClusterSession.start(n=2, timeout=WAIT)
    set_current_session(cluster)
    yield cluster
    cluster.stop()
    set_current_session(None)


@pytest.fixture(scope="session")
def client(session) -> MPICommandClient:
    """The process-wide casampi client on the shared cluster."""
    mpi_client = MPICommandClient()
    mpi_client.start_services()
    yield mpi_client
    mpi_client.stop_services()


@pytest.fixture(scope="session")
def casa_reference(tmp_path_factory, test_environment) -> Path:
    """A directory with NGC5921 and CASA's serial results on it, made once in a process of its own.

    See ``support/serial_casa_reference.py``; skips without the casa extra.
    """
    from casa_magics.cluster.casa_env import casa_available

    if not casa_available():
        pytest.skip("needs the casa extra (casatools, casatasks): make install")
    directory = tmp_path_factory.mktemp("casa-reference")
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}  # as on the servers
    environment.pop("CASASITECONFIG", None)
    script = Path(__file__).parent / "support" / "serial_casa_reference.py"
    done = subprocess.run(
        [sys.executable, str(script), str(directory)], env=environment, capture_output=True, text=True, timeout=WAIT * 5
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return directory


@pytest.fixture
def own_cluster(tmp_path, monkeypatch):
    """A fresh cluster of three MPI servers for one test that may break it."""
    clients = []

    def start(n: int = 3, engine_command=None, **settings) -> CommandClient:
        monkeypatch.setenv("CASA_MAGICS_RUN_DIR", str(tmp_path))
        chosen = dataclasses.replace(load_settings(), **settings)
        cluster = ClusterSession.start(n=n, timeout=WAIT, engine_command=engine_command, settings=chosen)
        command_client = CommandClient(cluster)
        clients.append(command_client)
        command_client.start_services()
        return command_client

    yield start
    for command_client in clients:
        command_client.stop_services()
