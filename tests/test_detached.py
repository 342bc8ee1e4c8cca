"""A detached cluster outlives the process that started it; another one re-attaches and stops it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from casa_magics import ClusterError, CommandClient
from casa_magics.core.config import load_settings
from casa_magics.cluster.detached import detached_clusters, previous_requests
from casa_magics.cluster.session import ClusterSession

reattach = ClusterSession.reattach

from .conftest import WAIT, wait_until

pytestmark = pytest.mark.needs_mpi

#: Plays a notebook kernel: starts a detached cluster, leaves state and work on it, exits without stopping it.
KERNEL = textwrap.dedent(
    """
    import json, os, sys, time
    from casa_magics import ClusterSession, CommandClient
    marker, release = sys.argv[1], sys.argv[2]
    session = ClusterSession.start(n=2, keep=True, timeout=60)
    client = CommandClient(session)
    client.start_services()
    client.push_command_request("left = casa_server_id * 10", block=True, target_server=[1, 2])
    def wait(started):  # a command that notes it started, then waits for the release
        return f"import os, time\\nopen({started!r}, 'w').close()\\nwhile not os.path.exists({release!r}): time.sleep(0.05)\\n"
    held = client.push_command_request(wait(marker), target_server=1)
    queued = client.push_command_request("'queued behind'", target_server=1)
    late = client.push_command_request(wait(marker + ".late") + "late_done = 'finished late'", target_server=2)
    deadline = time.monotonic() + 60  # both running when the kernel dies
    while not (os.path.exists(marker) and os.path.exists(marker + ".late")) and time.monotonic() < deadline:
        time.sleep(0.05)
    print(json.dumps({"held": held, "queued": queued, "late": late, "servers": session.servers.rows(),
                      "cluster_file": session.cluster.cluster_file}))
    """
)


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A private registry of detached clusters; whatever is left in it at the end is stopped."""
    monkeypatch.setenv("CASA_MAGICS_DETACHED_DIR", str(tmp_path / "registry"))
    monkeypatch.setenv("CASA_MAGICS_RUN_DIR", str(tmp_path / "run"))
    yield tmp_path / "registry"
    import ipyparallel as ipp

    for cluster in detached_clusters(load_settings()):
        try:
            ipp.Cluster.from_file(cluster.cluster_file).stop_cluster_sync()
        finally:
            for row in cluster.servers:
                if psutil.pid_exists(row["pid"]):
                    psutil.Process(row["pid"]).kill()


def magic_output(name: str, line: str) -> str:
    """Run a %casa_* line magic in this process's IPython shell and return what it printed."""
    from IPython import get_ipython
    from IPython.testing.globalipapp import start_ipython
    from IPython.utils.capture import capture_output

    start_ipython()
    shell = get_ipython()
    shell.run_line_magic("load_ext", "casa_magics")
    with capture_output() as captured:
        shell.run_line_magic(name, line)
    return captured.stdout


def cluster_processes(cluster_file: str, servers: list[dict]) -> list[psutil.Process]:
    """The controller, the mpiexec and the engines of a cluster, from its ipyparallel cluster file."""
    state = json.loads(Path(cluster_file).read_text())
    pids = [state["controller"]["state"]["pid"]]
    pids += [engine_set["pid"] for engine_set in state["engines"]["sets"].values()]
    pids += [row["pid"] for row in servers]
    return [psutil.Process(pid) for pid in pids]


def test_a_detached_cluster_is_found_again_with_its_state_and_stopped_for_good(registry, tmp_path):
    marker, release = tmp_path / "held-started", tmp_path / "release"
    kernel = subprocess.run(
        [sys.executable, "-c", KERNEL, str(marker), str(release)], capture_output=True, text=True, timeout=2 * WAIT,
    )
    assert kernel.returncode == 0, kernel.stderr
    left = json.loads(kernel.stdout.strip().splitlines()[-1])
    processes = cluster_processes(left["cluster_file"], left["servers"])
    assert all(process.is_running() for process in processes)  # the kernel is gone, the cluster is not

    (listed,) = detached_clusters(load_settings())
    assert listed.row()["servers"] == 2 and listed.row()["attached"] == "no" and listed.row()["age"].endswith(" s")
    shown = magic_output("casa_cluster", "list")
    assert shown.startswith("Detached clusters (%casa_cluster connect re-attaches)\n")
    assert re.search(rf"\n{listed.cluster_id}\s+2\s+\d+ s\s+no\s+{re.escape(listed.run_dir)}\n", shown), shown
    session = reattach()
    try:
        assert session.servers.rows() == left["servers"]  # the same servers, the same map
        states = {row["id"]: row for row in session.previous_requests}
        assert states[left["held"][0]]["state"] == "running", states
        assert states[left["queued"][0]]["state"] == "queued"
        late = left["late"][0]
        assert states[late]["state"] == "running", states
        with pytest.raises(ClusterError, match=rf"^detached cluster {listed.cluster_id} is in use by process {os.getpid()}$"):
            reattach()  # one process attached at a time
        release.touch()
        ids = (left["held"][0], left["queued"][0], late)


        def all_finished() -> dict | None:
            rows = {r["id"]: r for r in previous_requests(session) if r["state"] == "finished"}
            return rows if all(i in rows for i in ids) else None

        results = wait_until(all_finished, message="the previous client's requests finished")
        assert [(results[i]["successful"], results[i]["ret"]) for i in ids] == [
            (True, None), (True, "queued behind"), (True, None)  # statements: no value
        ]
        client = CommandClient(session)
        client.start_services()
        # Namespaces intact; new request IDs go on after the previous client's.
        responses = client.push_command_request("left", block=True, target_server=[1, 2])
        assert [r["ret"] for r in responses] == [10, 20]
        assert client.push_command_request("late_done", block=True, target_server=2)[0]["ret"] == "finished late"
        assert responses[0]["id"] > max(results)
        client.stop_services()
    finally:
        session.stop()
    _, alive = psutil.wait_procs(processes, timeout=15)
    assert alive == []
    assert detached_clusters(load_settings()) == [] and not list(registry.glob("*.json"))


def test_connect_without_a_detached_cluster_says_so(registry):
    with pytest.raises(ClusterError, match=r"^no detached cluster of this user \(in .*registry\); detached clusters: none$"):
        reattach()
