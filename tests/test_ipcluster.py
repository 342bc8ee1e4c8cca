"""``ipcluster start --engines=casa``: the design's used-by path with the default install.

A real ``ipcluster`` (its own process, a private profile directory), three
engines on this 2-core machine, then ``ClusterSession.connect`` as a user
would, and ``ipcluster stop``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from casa_magics import ClusterSession, CommandClient

from .conftest import WAIT, wait_until

pytestmark = pytest.mark.needs_mpi

IPCLUSTER = str(Path(sys.executable).parent / "ipcluster")


@pytest.fixture
def ipcluster(tmp_path):
    profile = tmp_path / "profile"
    started = []

    def start(*arguments: str) -> Path:
        done = subprocess.run(
            [IPCLUSTER, "start", *arguments, f"--profile-dir={profile}", "--daemonize"],
            capture_output=True, text=True, timeout=WAIT,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        started.append(profile)
        return profile / "security" / "ipcontroller-client.json"

    yield start
    for folder in started:
        subprocess.run([IPCLUSTER, "stop", f"--profile-dir={folder}"], capture_output=True, timeout=WAIT)


def test_ipcluster_with_casa_engines_starts_more_engines_than_cores_and_they_are_servers(ipcluster):
    connection = ipcluster("--engines=casa", "-n", "3")
    session = ClusterSession.connect(connection_file=str(connection), n=3, timeout=WAIT)
    client = CommandClient(session)
    client.start_services()
    try:
        assert session.servers.server_ids == [1, 2, 3] and session.servers.mpi
        answers = client.push_command_request("(casa_server_id, __import__('casampi.MPIEnvironment', fromlist=['_']).MPIEnvironment.mpi_processor_rank)", True, [1, 2, 3])
        assert [r["ret"] for r in answers] == [(1, 1), (2, 2), (3, 3)], [r["traceback"] for r in answers]
        engines = [psutil.Process(info.pid) for info in session.servers]
    finally:
        client.stop_services()
        session.stop()  # a connected session leaves the cluster to ipcluster
    assert all(engine.is_running() for engine in engines)
    profile = connection.parent.parent
    subprocess.run([IPCLUSTER, "stop", f"--profile-dir={profile}"], capture_output=True, timeout=WAIT, check=True)
    wait_until(lambda: not any(engine.is_running() for engine in engines), message="the engines gone after ipcluster stop")
