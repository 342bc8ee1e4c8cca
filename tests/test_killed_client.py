"""A client that dies leaves nothing running: its embedded cluster ends within seconds, unless it was kept.

Each test runs a real client process (a small script) that starts a cluster
of two MPI servers, prints the PIDs of its processes, and then exits or
blocks until the test kills it. Afterwards no process of its run may remain:
neither the PIDs it printed nor any process whose command line or
environment names its run directory (the controller, ``mpiexec``, keepers,
engines, the watcher itself).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from casa_magics.core.config import load_settings
from casa_magics.cluster.detached import detached_clusters
from casa_magics.cluster.session import ClusterSession

from .conftest import WAIT, wait_until

#: Seconds within which a dead client's cluster must be gone (the requirement is 10 s).
GONE_WITHIN = 10

#: Plays a notebook kernel: starts a cluster, says which processes it has, then ends as argv[1] says.
CLIENT = textwrap.dedent(
    """
    import dataclasses, json, os, signal, sys, time
    from casa_magics import ClusterSession, CommandClient
    from casa_magics.core.config import load_settings
    how, keep = sys.argv[1], sys.argv[2] == "keep"
    settings = dataclasses.replace(load_settings(), server_timeout=5)  # a lost server is noticed soon
    session = ClusterSession.start(n=2, timeout=60, keep=keep, settings=settings)
    cluster = session.cluster
    pids = {
        "controller": cluster.controller.process.pid,
        "launchers": [engine_set.process.pid for engine_set in cluster.engines.values()],
        "servers": [info.pid for info in session.servers],
        "reaper": None if session.reaper is None else session.reaper.process.pid,
    }
    if how == "replace":  # lose server 2, wait for its replacement, and name the replacement's processes too
        client = CommandClient(session)
        client.start_services()
        os.kill(session.servers.info(2).pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while not client.get_server_status()[2]["replaced"] or client.get_server_status()[2]["lost"]:
            assert time.monotonic() < deadline, "no replacement"
            time.sleep(0.05)
        pids["servers"].append(session.servers.info(2).pid)
        pids["launchers"] = [engine_set.process.pid for engine_set in cluster.engines.values()]
    print(json.dumps(pids), flush=True)
    if how == "exit":
        sys.exit(0)
    if how == "raise":
        raise RuntimeError("the client failed")
    signal.pause()  # until the test kills it
    """
)


def process_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def processes_of_run(run_dir: Path) -> list[psutil.Process]:
    """This user's live processes whose command line or environment names ``run_dir`` (not this one)."""
    mark, found = str(run_dir), []
    for process in psutil.process_iter(["cmdline", "uids"]):
        try:
            if process.pid == os.getpid() or process.info["uids"].real != os.getuid():
                continue
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            if any(mark in part for part in process.info["cmdline"] or []) or any(
                mark in value for value in process.environ().values()
            ):
                found.append(process)
        except (psutil.Error, TypeError, AttributeError):  # gone meanwhile, or not ours to read
            continue
    return found


def read_line(process: subprocess.Popen, timeout: float) -> str:
    """The client's first line of output, waiting at most ``timeout`` seconds (its stderr on failure)."""
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if selector.select(timeout=max(0.0, deadline - time.monotonic())):
            line = process.stdout.readline()
            if line:
                return line
            break  # EOF: the client ended without saying
    process.kill()
    raise AssertionError(f"the client did not start its cluster: {process.communicate()[1][-3000:]}")


@pytest.fixture
def run_client(tmp_path, test_environment, monkeypatch):
    """Start client scripts in a run directory of their own; whatever they leave is killed at the end."""
    run_dir = tmp_path / "run"
    monkeypatch.setenv("CASA_MAGICS_DETACHED_DIR", str(tmp_path / "registry"))
    environment = {**os.environ, "CASA_MAGICS_RUN_DIR": str(run_dir)}
    started: list[tuple[subprocess.Popen, dict]] = []

    def run(how: str, keep: bool = False) -> tuple[subprocess.Popen, dict]:
        client = subprocess.Popen(
            [sys.executable, "-c", CLIENT, how, "keep" if keep else "embedded"],
            env=environment, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True,  # its own process group, as a Jupyter kernel has
        )
        started.append((client, {}))
        pids = json.loads(read_line(client, 2 * WAIT))
        started[-1] = (client, pids)
        return client, pids

    run.run_dir = run_dir
    yield run
    for client, _ in started:
        if client.poll() is None:
            client.kill()
    import ipyparallel as ipp

    for cluster in detached_clusters(load_settings()):  # a kept cluster a failed test left running
        try:
            ipp.Cluster.from_file(cluster.cluster_file).stop_cluster_sync()
        except Exception:
            pass
    left = processes_of_run(run_dir)
    for process in left:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=10)
    for client, _ in started:
        try:
            client.communicate(timeout=WAIT)
        except subprocess.TimeoutExpired:
            pass


def pids_of(pids: dict) -> list[int]:
    return [pids["controller"], *pids["launchers"], *pids["servers"]] + ([pids["reaper"]] if pids["reaper"] else [])


def assert_nothing_left(run_client, pids: dict) -> None:
    """Every process the client named is gone, and no process of its run remains, within GONE_WITHIN s."""
    wait_until(lambda: not any(process_alive(pid) for pid in pids_of(pids)), GONE_WITHIN, "the client's processes gone")
    wait_until(lambda: processes_of_run(run_client.run_dir) == [], GONE_WITHIN, "no process of the client's run left")


@pytest.mark.needs_mpi
@pytest.mark.parametrize(
    "sig, group",
    [(signal.SIGTERM, False), (signal.SIGKILL, False), (signal.SIGKILL, True)],
    ids=["SIGTERM", "SIGKILL", "SIGKILL-to-its-process-group-as-a-kernel-restart"],
)
def test_a_killed_client_leaves_nothing_running(run_client, sig, group):
    client, pids = run_client("block")
    assert pids["reaper"] is not None and len(pids["servers"]) == 2
    assert all(process_alive(pid) for pid in pids_of(pids))
    if group:  # what jupyter_client does to a kernel it restarts or shuts down after a timeout
        os.killpg(client.pid, sig)
    else:
        client.send_signal(sig)
    assert client.wait(WAIT) == -sig
    assert_nothing_left(run_client, pids)


@pytest.mark.needs_mpi
@pytest.mark.parametrize("how", ["exit", "raise"])
def test_a_client_that_exits_leaves_nothing_running(run_client, how):
    client, pids = run_client(how)
    _, stderr = client.communicate(timeout=WAIT)
    assert client.returncode == (0 if how == "exit" else 1), stderr
    if how == "raise":
        assert "RuntimeError: the client failed" in stderr
    assert_nothing_left(run_client, pids)


@pytest.mark.needs_mpi
def test_a_replacement_ends_with_its_killed_client(run_client):
    client, pids = run_client("replace")
    assert len(pids["servers"]) == 3 and len(pids["launchers"]) == 2  # the lost server, the others, the new one
    client.send_signal(signal.SIGKILL)
    client.wait(WAIT)
    assert_nothing_left(run_client, pids)


@pytest.mark.needs_mpi
def test_a_kept_cluster_survives_its_killed_client(run_client):
    client, pids = run_client("block", keep=True)
    assert pids["reaper"] is None  # nothing is set to end it
    client.send_signal(signal.SIGKILL)
    client.wait(WAIT)
    # Still there and working: this process re-attaches and runs a command on both servers.
    session = ClusterSession.reattach(timeout=WAIT)
    try:
        assert all(process_alive(pid) for pid in pids_of(pids))
        assert [info.pid for info in session.servers] == pids["servers"]
        assert session.run_on_servers(os.getpid) == {1: pids["servers"][0], 2: pids["servers"][1]}
    finally:
        session.stop()
    assert_nothing_left(run_client, pids)


def test_the_watcher_ends_named_process_trees_and_scancels_when_its_client_dies(tmp_path, test_environment):
    """The watcher alone, with real processes: a tree of sleeps, a named job, and a stand-in ``scancel``."""
    bin_dir, cancelled = tmp_path / "bin", tmp_path / "cancelled"
    bin_dir.mkdir()
    (bin_dir / "scancel").write_text(f"#!/bin/sh\necho \"$@\" >> {cancelled}\n")
    (bin_dir / "scancel").chmod(0o755)
    script = textwrap.dedent(
        f"""
        import json, signal, subprocess, sys
        from casa_magics.cluster.orphan_reaper import OrphanReaper
        reaper = OrphanReaper()
        # A launcher with a child, as mpiexec has engines; the child ignores SIGTERM, so only SIGKILL ends it.
        tree = subprocess.Popen(["sh", "-c", "sh -c 'trap \\"\\" TERM; while :; do sleep 1; done' & wait"],
                                start_new_session=True)
        reaper.watch(tree.pid)
        reaper.scancel("4242")
        released = OrphanReaper()
        released.release()
        print(json.dumps({{"tree": tree.pid, "reaper": reaper.process.pid, "released": released.process.returncode}}),
              flush=True)
        signal.pause()
        """
    )
    environment = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    client = subprocess.Popen([sys.executable, "-c", script], env=environment, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    tree: list[psutil.Process] = []
    try:
        pids = json.loads(read_line(client, WAIT))
        assert pids["released"] == 0  # a released watcher exits at once, ending nothing
        tree = [psutil.Process(pids["tree"])]
        tree += wait_until(lambda: tree[0].children(recursive=True), message="the launcher's children")
        client.send_signal(signal.SIGKILL)
        client.wait(WAIT)
        wait_until(lambda: not any(process_alive(p.pid) for p in tree), GONE_WITHIN, "the named tree gone")
        wait_until(lambda: not process_alive(pids["reaper"]), GONE_WITHIN, "the watcher gone")
        assert cancelled.read_text() == "4242\n"
    finally:
        if client.poll() is None:
            client.kill()
        client.communicate()
        for process in tree:
            try:
                process.kill()
            except psutil.Error:
                pass
