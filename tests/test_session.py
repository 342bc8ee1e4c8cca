"""Starting, connecting to and stopping clusters: the cluster session."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from casa_magics import ClusterError, ClusterSession, CommandClient
from casa_magics.core.config import load_settings

from .conftest import HYDRA, UNKNOWN_OPTION, WAIT, wait_until

pytestmark = pytest.mark.needs_mpi


def settings(**changes):
    return dataclasses.replace(load_settings(), **changes)


def processes_of(session: ClusterSession) -> list[psutil.Process]:
    """Engine, controller and mpiexec processes of an embedded cluster."""
    pids = [info.pid for info in session.servers]
    pids.append(session.cluster.controller.process.pid)
    pids += [engine_set.process.pid for engine_set in session.cluster.engines.values()]
    return [psutil.Process(pid) for pid in pids]


def test_bad_server_count_is_refused():
    with pytest.raises(ClusterError, match=r"^number of servers must be a positive integer, got 0$"):
        ClusterSession.start(n=0)


def test_missing_mpiexec_says_so():
    with pytest.raises(ClusterError, match=r"^cannot start MPI servers: '/nonexistent/mpiexec' was not found on PATH$"):
        ClusterSession.start(n=2, settings=settings(mpiexec="/nonexistent/mpiexec", allow_no_mpi=False))


def test_mpiexec_error_is_shown_with_its_output(tmp_path):
    with pytest.raises(ClusterError) as raised:
        ClusterSession.start(n=2, mpiexec_args=["-bogus-option"], settings=settings(run_dir=str(tmp_path)), timeout=WAIT)
    message = str(raised.value)
    assert message.startswith("cannot start servers: the engines exited during start-up")
    assert UNKNOWN_OPTION in message  # mpiexec's own words
    assert "-bogus-option" in message.splitlines()[1]  # the command line


def test_engines_that_never_register_time_out_with_their_output(tmp_path):
    silent = [sys.executable, "-c", "print('engine stand-in, never registers', flush=True); import time; time.sleep(120)"]
    with pytest.raises(ClusterError) as raised:
        ClusterSession.start(n=2, timeout=3, engine_command=silent, settings=settings(run_dir=str(tmp_path)))
    message = str(raised.value)
    assert message.startswith("cannot start servers: only 0 of 2 engines registered within 3 s")
    assert "engine stand-in, never registers" in message


def test_without_mpi_plain_engines_start_with_a_warning(tmp_path):
    with pytest.warns(RuntimeWarning) as warned:
        session = ClusterSession.start(
            n=2, timeout=WAIT, settings=settings(mpiexec="/nonexistent/mpiexec", allow_no_mpi=True, run_dir=str(tmp_path))
        )
    try:
        messages = [str(w.message) for w in warned]
        assert "MPI is not available ('/nonexistent/mpiexec' was not found on PATH): starting plain local engines" in messages
        assert any(m.startswith("engines are not MPI processes") for m in messages)
        assert session.servers.server_ids == [1, 2]
        assert CommandClient(session).push_command_request("casa_server_id", block=True, target_server=2)[0]["ret"] == 2
    finally:
        session.stop()


def test_stop_leaves_no_process_behind(tmp_path):
    session = ClusterSession.start(n=2, timeout=WAIT, settings=settings(run_dir=str(tmp_path)))
    processes = processes_of(session)
    assert all(p.is_running() for p in processes)
    session.stop()
    gone, alive = psutil.wait_procs(processes, timeout=10)
    assert alive == []
    session.stop()  # a second stop is harmless


def test_hostfile_and_extra_arguments_reach_mpiexec(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("localhost:4\n" if HYDRA else "localhost slots=4\n")
    flag, extra = ("-f", "-verbose") if HYDRA else ("--hostfile", "--display-map")
    session = ClusterSession.start(
        n=2, hostfile=str(hostfile), mpiexec_args=[extra], timeout=WAIT, settings=settings(run_dir=str(tmp_path))
    )
    try:
        (engine_set,) = session.cluster.engines.values()
        args = list(engine_set.args)
        assert args[0].endswith("mpiexec")
        assert [flag, str(hostfile)] == args[args.index(flag) : args.index(flag) + 2]
        assert extra in args
        assert session.servers.server_ids == [1, 2]
    finally:
        session.stop()


# ---------------------------------------------------------------- connect
@pytest.fixture(scope="module")
def ipcluster(tmp_path_factory):
    """A cluster started separately, as a user would: ipcluster start --engines=MPI."""
    ipython_dir = tmp_path_factory.mktemp("ipython")
    env = dict(os.environ, IPYTHONDIR=str(ipython_dir))
    if os.geteuid() == 0:  # as the docs say (Clusters): Open MPI must be told it may run as root
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    command = [sys.executable, "-m", "ipyparallel.cluster", "start", "--engines=MPI", "-n", "2", "--cluster-id=cmtest", "--ip=127.0.0.1"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    client_file = ipython_dir / "profile_default" / "security" / "ipcontroller-cmtest-client.json"
    wait_until(lambda: client_file.exists() or process.poll() is not None, message="ipcluster's connection file")
    assert client_file.exists(), process.stdout.read().decode()
    yield ipython_dir, client_file
    subprocess.run([sys.executable, "-m", "ipyparallel.cluster", "stop", "--cluster-id=cmtest"], env=env, timeout=WAIT)
    process.wait(timeout=WAIT)


def test_connect_by_profile_and_cluster_id(ipcluster, monkeypatch):
    ipython_dir, _ = ipcluster
    monkeypatch.setenv("IPYTHONDIR", str(ipython_dir))
    session = ClusterSession.connect(profile="default", cluster_id="cmtest", n=2, timeout=WAIT)
    assert not session.owns_cluster
    client = CommandClient(session)
    ranks = client.push_command_request("__import__('mpi4py.MPI').MPI.COMM_WORLD.Get_rank()", block=True, target_server=[1, 2])
    assert [(r["server"], r["ret"]) for r in ranks] == [(1, 0), (2, 1)]
    client.stop_services()
    # Stopping a connected session leaves the cluster running.
    again = ClusterSession.connect(profile="default", cluster_id="cmtest", n=2, timeout=WAIT)
    assert again.servers.server_ids == [1, 2]
    again.stop()


def test_connect_by_connection_file(ipcluster):
    _, client_file = ipcluster
    session = ClusterSession.connect(connection_file=str(client_file), n=2, timeout=WAIT)
    try:
        assert json.loads(client_file.read_text())["location"]
        assert CommandClient(session).push_command_request("6 * 7", block=True)[0]["ret"] == 42
    finally:
        session.stop()


def test_connect_failure_lists_visible_clusters(ipcluster, monkeypatch):
    ipython_dir, _ = ipcluster
    monkeypatch.setenv("IPYTHONDIR", str(ipython_dir))
    with pytest.raises(ClusterError) as raised:
        ClusterSession.connect(profile="default", cluster_id="nosuch", timeout=2)
    message = str(raised.value)
    assert message.startswith("cannot connect to cluster (profile 'default', cluster_id 'nosuch')")
    assert "Visible clusters: " in message and "cmtest" in message
    assert "\n" not in message


def test_connect_says_why_engines_never_register(tmp_path):
    """``ipcluster start --engines=MPI`` with more engines than Open MPI has slots: connect quotes Open MPI."""
    if HYDRA:
        pytest.skip("MPICH's hydra starts more processes than cores: its engines register")
    profile = tmp_path / "profile"
    env = dict(os.environ)
    if os.geteuid() == 0:  # else Open MPI refuses to run as root, before counting slots
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    n = (os.cpu_count() or 1) + 1  # Open MPI has one slot per core, and no --oversubscribe here
    ipcluster = [sys.executable, "-m", "ipyparallel.cluster"]
    where = [f"--profile-dir={profile}", "--cluster-id=cmfail"]
    started = subprocess.run(
        [*ipcluster, "start", "--engines=MPI", "-n", str(n), "--ip=127.0.0.1", "--daemonize", *where],
        env=env, timeout=WAIT, capture_output=True, text=True,
    )
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        client_file = profile / "security" / "ipcontroller-cmfail-client.json"
        with pytest.raises(ClusterError) as raised:
            ClusterSession.connect(connection_file=str(client_file), n=n, timeout=5)
    finally:
        subprocess.run([*ipcluster, "stop", *where], env=env, timeout=WAIT, capture_output=True)
    first, _, log_tail = str(raised.value).partition("\n")
    assert first.startswith(
        f"cannot connect to cluster ({client_file}): only 0 of {n} engines registered within 5 s; "
        f"the engine log {profile / 'log'}/ipengine-cmfail-"
    ), first
    assert "not enough slots" in log_tail, log_tail


def test_connect_without_a_cluster_file_quotes_the_newest_engine_log(tmp_path):
    from casa_magics.cluster.session import _engine_log_tail

    client_file = tmp_path / "security" / "ipcontroller-abc-client.json"
    log_dir = tmp_path / "log"
    assert _engine_log_tail(client_file) == f"no engine log in {log_dir} says why"
    log_dir.mkdir()
    old, new = log_dir / "ipengine-abc-1-10.log", log_dir / "ipcluster-abc-11.log"
    old.write_text("old words")
    new.write_text("\n".join(f"line {i}" for i in range(100)))
    (log_dir / "ipengine-other-1-12.log").write_text("another cluster's")
    os.utime(old, (1, 1))
    assert _engine_log_tail(client_file) == f"the engine log {new} ends:\n" + "\n".join(f"line {i}" for i in range(60, 100))


def test_engines_without_casa_magics_get_a_clear_error(tmp_path):
    engine = [sys.executable, str(Path(__file__).parent / "support" / "engine_without_casa_magics.py")]
    with pytest.raises(ClusterError, match=r"^the engines cannot import casa_magics: install it in the engines' Python environment$"):
        ClusterSession.start(n=2, timeout=WAIT, engine_command=engine, settings=settings(run_dir=str(tmp_path)))


def test_the_shared_client_follows_set_current_session(client, session, own_cluster):
    from casa_magics import MPICommandClient, MPIEnvironment, set_current_session

    other = own_cluster(n=3).session
    set_current_session(other)
    try:
        assert MPICommandClient() is client and client.session is other
        assert MPIEnvironment.mpi_server_rank_list() == other.servers.server_ids == [1, 2, 3]
        (response,) = client.push_command_request("__import__('os').getpid()", True, 3)
        assert response["ret"] == other.servers.info(3).pid
    finally:
        set_current_session(session)
    assert client.session is session
    assert MPIEnvironment.mpi_server_rank_list() == session.servers.server_ids == [1, 2]


@pytest.mark.casa
def test_casa_is_imported_in_the_background_and_status_says_when_ready(own_cluster):
    from casa_magics.cluster.casa_env import casa_available

    if not casa_available():
        pytest.skip("needs the casa extra")
    background = own_cluster(n=2, import_casa=True)
    early = {s: state["casa"] for s, state in background.get_server_status().items()}
    assert set(early.values()) <= {"importing", "ready"}
    assert background.session.wait_for_casa(timeout=WAIT * 2) == {1: "ready", 2: "ready"}
    assert [state["casa"] for state in background.get_server_status().values()] == ["ready", "ready"]
    (version,) = background.push_command_request("casatasks.version_string()", True, 1)
    assert version["successful"] and version["ret"].startswith("6.")
    # While importing, the interpreter switched threads sooner (so requests got through);
    # once CASA is ready, the server's switch interval is its own again.
    (interval,) = background.push_command_request("__import__('sys').getswitchinterval()", True, 2)
    assert interval["ret"] == pytest.approx(0.005)


def test_the_background_import_yields_to_requests_and_then_restores_the_server(client):
    # Run where the import runs: in a thread of its own on the server.
    command = (
        "import os, sys, threading\n"
        "from casa_magics.server.runner import _yielding_to_requests\n"
        "def probe(seen):\n"
        "    level = lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())\n"
        "    seen['before'] = (sys.getswitchinterval(), level())\n"
        "    with _yielding_to_requests():\n"
        "        seen['inside'] = (sys.getswitchinterval(), level())\n"
        "    seen['after'] = sys.getswitchinterval()\n"
        "seen = {}\n"
        "worker = threading.Thread(target=probe, args=(seen,))\n"
        "worker.start(); worker.join(30)"
    )
    (response,) = client.push_command_request(command, True, 1)
    assert response["successful"], response["traceback"]
    ((before, inside, after),) = [r["ret"] for r in client.push_command_request("(seen['before'], seen['inside'], seen['after'])", True, 1)]
    from casa_magics.server.runner import IMPORT_NICENESS, IMPORT_SWITCH_INTERVAL

    assert inside[0] == pytest.approx(IMPORT_SWITCH_INTERVAL) and after == pytest.approx(before[0])
    assert inside[1] == before[1] + IMPORT_NICENESS  # this thread only: the server's own priority is untouched


def test_without_background_import_casa_waits_for_first_use(own_cluster):
    quiet = own_cluster(n=2, import_casa=False)
    from casa_magics.cluster.casa_env import casa_available

    expected = "on first use" if casa_available() else "not installed"
    assert [state["casa"] for state in quiet.get_server_status().values()] == [expected, expected]
