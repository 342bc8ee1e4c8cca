"""Shared fixtures: real ipyparallel clusters of MPI engines, no mocks.

One embedded cluster of two MPI servers serves every test that leaves the
servers as it found them (``client``). Tests that kill or stop servers make
their own cluster (``own_cluster``) so the shared one is never harmed.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from pathlib import Path

import pytest

# Engines inherit PATH: the venv's bin must come first so mpiexec is the mpich wheel's.
os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
# Clusters in tests import CASA when a test asks, not in the background (2 cores; see test_session).
os.environ.setdefault("CASA_MAGICS_IMPORT_CASA", "0")

from casa_magics import ClusterSession, CommandClient, MPICommandClient, set_current_session  # noqa: E402
from casa_magics.config import load_settings  # noqa: E402

WAIT = 60  # seconds: the longest any test waits for anything


def pytest_collection_modifyitems(config, items):
    if shutil.which("mpiexec") is None:
        skip = pytest.mark.skip(reason="mpiexec not found: install the mpich wheel (make install)")
        for item in items:
            if "needs_mpi" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("run")


@pytest.fixture(scope="session")
def session(run_dir):
    """The shared embedded cluster: two MPI servers."""
    os.environ["CASA_MAGICS_RUN_DIR"] = str(run_dir)
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


@pytest.fixture
def own_cluster(tmp_path):
    """A fresh cluster of three MPI servers for one test that may break it."""
    clients = []

    def start(n: int = 3, engine_command=None, **settings) -> CommandClient:
        os.environ["CASA_MAGICS_RUN_DIR"] = str(tmp_path)
        chosen = dataclasses.replace(load_settings(), **settings)
        cluster = ClusterSession.start(n=n, timeout=WAIT, engine_command=engine_command, settings=chosen)
        command_client = CommandClient(cluster)
        clients.append(command_client)
        command_client.start_services()
        return command_client

    yield start
    for command_client in clients:
        command_client.stop_services()
