"""Servers on several machines, for real: a three-node Slurm in network namespaces.

``tests/support/multinode_slurm.py`` builds the nodes (``node1`` ... ``node3``,
each its own network namespace, host name and ``/etc/hosts``) once for this
module; one casa_magics cluster of six servers is started through it as one
``sbatch`` job, two tasks per node, with the controller listening on the
host's bridge address. The tests check that server ID = rank + 1 with each
server's host in the status and its table, that targeted and untargeted
requests are answered by servers on every node, and that ``stop`` leaves no
process of the job on any node and no job in the queue. Last, the magics do
the same in a fresh IPython: ``%casa_cluster start --slurm``, ``%casa_status``
(each server's host in the table), ``%casa_push``, ``%casa_cluster stop``.

The nodes share the host's PIDs and files: the tests look at processes (to
find what is left after ``stop``) by network namespace, which the product
itself must never rely on. Skipped, saying why, when not root, without
Slurm's packages, or without ``ip``/``nsenter``/``unshare``
(``make slurm-packages`` installs them).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import inspect
import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from casa_magics import ClusterSession, CommandClient
from casa_magics.cluster.control_channel import ask_reports
from casa_magics.notebook.display import status_text

from .conftest import HYDRA, VENV_BIN, WAIT, wait_until
from .test_memory import GROW
from .support.multinode_slurm import NODES, MultiNodeSlurm, why_no_multinode

SERVERS_PER_NODE = 2
SERVERS = NODES * SERVERS_PER_NODE
MB = 1024**2
#: The memory limit of the six servers.
LIMIT = 1024 * MB
#: Slurm fills the nodes in order and Open MPI maps ranks by slot: ranks 0, 1 on node1, 2, 3 on node2 ...
EXPECTED_HOST = {server: f"node{(server - 1) // SERVERS_PER_NODE + 1}" for server in range(1, SERVERS + 1)}
NODE_NAMES = sorted(set(EXPECTED_HOST.values()))
SUPPORT = Path(__file__).parent / "support"

pytestmark = [
    pytest.mark.needs_mpi,
    pytest.mark.skipif(why_no_multinode() is not None, reason=f"no multi-node Slurm: {why_no_multinode()}"),
]


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    """Three Slurm nodes for this module; SLURM_CONF and IPYTHONDIR point at their own files."""
    cluster = MultiNodeSlurm(NODES)
    with pytest.MonkeyPatch.context() as patch:
        try:
            cluster.start(timeout=WAIT)
            patch.setenv("SLURM_CONF", str(cluster.conf))
            patch.setenv("IPYTHONDIR", str(tmp_path_factory.mktemp("ipython-multinode")))
            run_dir = tmp_path_factory.mktemp("run-multinode")
            run_dir.chmod(0o700)
            patch.setenv("CASA_MAGICS_RUN_DIR", str(run_dir))
            cluster.env.update(SLURM_CONF=str(cluster.conf), IPYTHONDIR=os.environ["IPYTHONDIR"])
            yield cluster
        finally:
            cluster.stop()
            assert cluster.leftovers() == [], "the multi-node Slurm left these behind"


@pytest.fixture(scope="module")
def spread(nodes):
    """Six servers through Slurm, two per node; the client's services started."""
    session = ClusterSession.start(
        n=SERVERS, scheduler="slurm", controller_ip=nodes.bridge_ip, time_limit="15", timeout=2 * WAIT,
        sbatch_args=[f"--nodes={NODES}", f"--ntasks-per-node={SERVERS_PER_NODE}"], memory_limit=LIMIT,
    )
    client = CommandClient(session)
    try:
        client.start_services()
        # What each server answers with: its ID and host name, after an optional pause.
        client.push_command_request(
            "def where(pause=0):\n"
            "    import socket, time\n"
            "    time.sleep(pause)\n"
            "    return casa_server_id, socket.gethostname()",
            target_server=list(range(1, SERVERS + 1)), block=True,
        )
        yield session, client
    finally:
        if not session.stopped:
            client.stop_services()
            session.stop()


def job_processes(nodes: MultiNodeSlurm, job_id: str) -> list[int]:
    """PIDs of the processes on any node whose environment says they belong to this cluster's job ``job_id``.

    (Job IDs of the one-node Slurm of test_slurm, which may run beside, start at 1 too.)
    """
    wanted = {f"SLURM_JOB_ID={job_id}".encode(), b"SLURM_CLUSTER_NAME=" + nodes.cluster_name.encode()}
    found = []
    for pid in (pid for name in NODE_NAMES for pid in nodes.namespace_pids(name)):
        try:
            environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted <= set(environment):
            found.append(pid)
    return found


def test_the_nodes_are_separate_hosts(nodes):
    assert nodes.run("sinfo", "-h", "-N", "-o", "%N %T").stdout.split() == [
        word for name in NODE_NAMES for word in (name, "idle")
    ]
    for name in NODE_NAMES:
        assert nodes.namespace_pids(name) and nodes.slurmd_pid(name) in nodes.namespace_pids(name)


def test_server_id_is_rank_plus_one_with_each_servers_host(spread, nodes):
    session, client = spread
    job_id = session.slurm_job.job_id
    assert session.description == f"{SERVERS} MPI servers in Slurm job {job_id}"
    assert session.scheduler_status() == f"Slurm job {job_id}: RUNNING on node[1-{NODES}]"
    assert [(i.server, i.rank, i.host) for i in session.servers] == [
        (server, server - 1, EXPECTED_HOST[server]) for server in range(1, SERVERS + 1)
    ]
    # One job over the three nodes; the batch script (in the run directory, which the nodes share) lets
    # Open MPI's ranks use any core: the "nodes" all share this machine's two.
    job = nodes.run("scontrol", "show", "job", "--oneliner", job_id).stdout
    assert f"NumNodes={NODES} " in job and f"NumTasks={SERVERS} " in job, job
    run_dir = Path(os.environ["CASA_MAGICS_RUN_DIR"])
    assert (run_dir / f"slurm-servers-{job_id}.out").exists()
    [script] = run_dir.glob("slurm-servers-*.sh")
    if not HYDRA:
        assert "--bind-to none" in script.read_text()
    here = socket.gethostname()
    assert all(i.host != here and not i.on_this_host for i in session.servers)
    status = client.get_server_status()
    assert sorted(status) == list(range(1, SERVERS + 1))
    for server, state in status.items():
        assert (state["rank"], state["processor"]) == (server - 1, EXPECTED_HOST[server]), state
        assert state["busy"] is False and not state["lost"], state
    table = status_text(status)
    for server in range(1, SERVERS + 1):
        row = re.search(rf"^\s*{server}\s+\d+\s+(\S+)\s+(\d+)\s", table, re.MULTILINE)
        assert row and row.group(1) == EXPECTED_HOST[server], table
        assert int(row.group(2)) == status[server]["pid"], table


def test_targeted_requests_are_answered_on_every_node(spread):
    _, client = spread
    responses = client.push_command_request("where()", target_server=list(range(1, SERVERS + 1)), block=True)
    assert [(r["successful"], r["server"], tuple(r["ret"])) for r in responses] == [
        (True, server, (server, EXPECTED_HOST[server])) for server in range(1, SERVERS + 1)
    ], responses


def test_untargeted_requests_are_answered_by_servers_on_every_node(spread):
    _, client = spread
    ids = [client.push_command_request("where(0.5)")[0] for _ in range(2 * SERVERS)]
    responses = client.get_command_response(ids, block=True, timeout=WAIT)
    assert all(r["successful"] for r in responses), responses
    for response in responses:
        server, host = response["ret"]
        assert (server, host) == (response["server"], EXPECTED_HOST[server]), response
    assert {response["ret"][1] for response in responses} == set(NODE_NAMES), responses


def describe(pids: list[int]) -> list[str]:
    """Each process as ``pid: command line`` (for failure messages)."""
    import psutil

    described = []
    for pid in pids:
        try:
            described.append(f"{pid}: {' '.join(psutil.Process(pid).cmdline())[:160]}")
        except psutil.Error:
            pass
    return described


def running_on(session, server: int) -> int:
    """The request ``server`` says it runs now (0: none), asked through its engine's control channel."""
    report = ask_reports(session.client, {server: session.servers.info(server).engine})[server]
    return report["running"] if isinstance(report, dict) else 0


def test_each_server_reports_its_own_memory_and_casa_state(spread):
    _, client = spread
    status = client.get_server_status()
    for server, state in status.items():
        # The client sees no process of another host: these figures are the server's own.
        assert 20 * MB < state["memory"] < LIMIT, state
        assert state["memory_limit"] == LIMIT and state["available_memory"] > 0, state
        assert state["casa"] in ("importing", "ready", "on first use"), state  # not "unknown: ..."
    table = status_text(status)
    assert len(re.findall(r"[\d.]+ MB of 1 GB", table)) == SERVERS, table


def test_running_and_queued_requests_on_another_node_are_cancelled(spread):
    session, client = spread
    client.push_command_request("kept = 'state'", block=True, target_server=4)
    (running,) = client.push_command_request("import time; time.sleep(60)", target_server=4)
    (queued,) = client.push_command_request("'never run'", target_server=4)
    (after,) = client.push_command_request("kept", target_server=4)
    wait_until(lambda: running_on(session, 4) == running, message="the long request running on server 4 (node2)")
    assert client.abort_command_request([queued, running]) == {
        queued: "will be skipped by its server",
        running: "interrupted while running",
    }
    cancelled, skipped, following = client.get_command_response([running, queued, after], block=True, timeout=WAIT)
    assert cancelled["status"] == "cancelled", cancelled
    assert f"KeyboardInterrupt: request {running} was cancelled by the client" in cancelled["traceback"]
    assert (skipped["status"], skipped["traceback"]) == ("cancelled", "cancelled by the client before it started")
    assert (following["status"], following["ret"]) == ("response received", "state")


def test_the_memory_limit_ends_a_request_on_another_node_and_the_server_lives_on(spread):
    _, client = spread
    (request,) = client.push_command_request(GROW, target_server=6)
    (ended,) = client.get_command_response(request, block=True, timeout=WAIT)
    last_line = ended["traceback"].strip().splitlines()[-1]
    assert last_line.startswith("casa_magics.server.memory.MemoryLimitExceeded: server 6 used "), last_line
    assert last_line.endswith(f", over the memory limit of 1 GB; request {request} ended"), last_line
    (after,) = client.push_command_request("where()", block=True, target_server=6)
    assert after["ret"] == (6, "node3")
    wait_until(lambda: client.get_server_status()[6]["memory"] < LIMIT, message="server 6's memory back under its limit")


def test_a_server_killed_on_another_node_is_reported_lost_and_the_others_go_on(spread):
    session, client = spread
    info = session.servers.info(5)
    (running,) = client.push_command_request("import time; time.sleep(60)", target_server=5)
    wait_until(lambda: running_on(session, 5) == running, message="the long request running on server 5 (node3)")
    killed_at = time.monotonic()
    os.kill(info.pid, signal.SIGKILL)  # the test reaches node3's process; casa_magics has no way to
    (response,) = client.get_command_response(running, block=True, timeout=WAIT)
    print(f"server 5 on node3 reported lost {time.monotonic() - killed_at:.1f} s after SIGKILL")
    assert response["status"] == "timeout", response
    assert response["traceback"].startswith(f"Timeout: server 5 (host node3, pid {info.pid}) was lost: "), response
    status = client.get_server_status()[5]
    assert status["lost"] and status["lost"] in response["traceback"], status
    others = [server for server in range(1, SERVERS + 1) if server != 5]
    answers = client.push_command_request("where()", target_server=others, block=True)
    assert [tuple(r["ret"]) for r in answers] == [(server, EXPECTED_HOST[server]) for server in others]


def test_stop_leaves_no_process_on_any_node_and_no_job(spread, nodes):
    session, client = spread
    job_id = session.slurm_job.job_id
    for name in NODE_NAMES:  # the servers and what runs them are there now
        assert len(nodes.namespace_pids(name)) > 1 + SERVERS_PER_NODE, (name, nodes.namespace_pids(name))
    assert len(job_processes(nodes, job_id)) >= SERVERS
    client.stop_services()
    session.stop()
    assert nodes.jobs() == []  # stop waits until the job has left the queue
    for name in NODE_NAMES:
        wait_until(lambda name=name: nodes.namespace_pids(name) == [nodes.slurmd_pid(name)], WAIT,
                   f"nothing but slurmd left on {name}")
    wait_until(lambda: job_processes(nodes, job_id) == [], WAIT, f"no process of Slurm job {job_id} left")


def test_magics_start_show_and_stop_servers_on_three_nodes(nodes, tmp_path):
    script = tmp_path / "magics.py"
    script.write_text(textwrap.dedent(f"""\
        from IPython.lib.pretty import pretty
        from IPython.testing.globalipapp import start_ipython
        start_ipython()
        ip = get_ipython()
        ip.run_line_magic("load_ext", "casa_magics")
        ip.run_line_magic("casa_cluster", "start --slurm -n {SERVERS} --controller-ip {nodes.bridge_ip} "
                          "--sbatch-arg=--ntasks-per-node={SERVERS_PER_NODE} --time 15")
        print(pretty(ip.run_line_magic("casa_status", "")))
        answers = ip.run_line_magic("casa_push", "-b -t {','.join(map(str, range(1, SERVERS + 1)))} "
                                    "__import__('socket').gethostname()")
        print("hosts", " ".join(f"{{r['server']}}:{{r['ret']}}" for r in answers))
        ip.run_line_magic("casa_cluster", "stop")
    """))
    env = {
        **nodes.env,
        "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", ""),
        "CASA_MAGICS_RUN_DIR": str(tmp_path / "run"),
        "CASA_MAGICS_IMPORT_CASA": "0",
    }
    done = subprocess.run([sys.executable, str(script)], env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=3 * WAIT, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    job_id = re.search(rf"Started {SERVERS} MPI servers in Slurm job (\d+) \(logs in ", out).group(1)
    for server in range(1, SERVERS + 1):  # the status table: server, engine, host, pid ...
        assert re.search(rf"^\s*{server}\s+\d+\s+{EXPECTED_HOST[server]}\s+\d+\s", out, re.MULTILINE), out
    assert "hosts " + " ".join(f"{server}:{EXPECTED_HOST[server]}" for server in range(1, SERVERS + 1)) in out
    assert f"Stopped {SERVERS} MPI servers in Slurm job {job_id}." in out
    assert nodes.jobs() == []
    for name in NODE_NAMES:
        wait_until(lambda name=name: nodes.namespace_pids(name) == [nodes.slurmd_pid(name)], WAIT,
                   f"nothing but slurmd left on {name}")


# ------------------------------------------------------------ a gang across nodes
@pytest.mark.casa
def test_a_cube_gang_across_nodes_is_the_serial_cube_and_ctrl_c_ends_it(nodes, casa_reference, tmp_path):
    """3 servers on 2 nodes (Slurm places 2 + 1): server 3 is alone on node2.

    casatools' C++ takes a rank alone on its node for a serial run and leaves
    ``initmpi()`` at once, so the master waited for it forever; each rank's
    keeper now tells it it has a neighbour (``OMPI_COMM_WORLD_LOCAL_SIZE``).
    Then Ctrl-C in a long cube: every member runs on another host than the
    client, so the cancel goes through the servers' control channel.
    """
    import numpy as np

    sys.path.insert(0, str(Path(__file__).parent / "support"))
    import casampi_pipeline as pipeline

    from casa_magics.client.gang import run_task_as_gang
    from casa_magics.cluster.casa_env import prepare_client_process

    prepare_client_process(str(casa_reference))
    import casatasks  # after CASA's offline set-up
    session = ClusterSession.start(
        n=3, scheduler="slurm", controller_ip=nodes.bridge_ip, time_limit="15", timeout=2 * WAIT,
        sbatch_args=["--nodes=2"],
    )
    client = CommandClient(session)
    try:
        client.start_services()
        assert [session.servers.info(s).host for s in (1, 2, 3)] == ["node1", "node1", "node2"]
        params = dict(vis=str(casa_reference / "serial.ms"), imagename=str(tmp_path / "cube"), **pipeline.CUBE)
        ids = client.push_gang_request("from casatasks import tclean; tclean(**cube)", False, {"cube": params})
        master, *workers = client.get_command_response(ids, True, timeout=4 * WAIT)
        assert master["successful"], master["traceback"]
        assert [(w["server"], w["ret"]["joined"]) for w in workers] == [(2, True), (3, True)]
        for kind in ("image", "residual", "psf", "model", "pb"):
            np.testing.assert_array_equal(
                pipeline.pixels(str(tmp_path / f"cube.{kind}")), pipeline.pixels(str(casa_reference / f"serial_cube.{kind}")),
                err_msg=kind,
            )
        # Ctrl-C while a long cube runs as that gang ends it within seconds, and the servers go on.
        long_cube = dict(params, imagename=str(tmp_path / "interrupted"), spw="0", imsize=256, niter=5000, threshold="0Jy")
        arguments = inspect.signature(type(casatasks.tclean).__call__).bind(None, **long_cube)
        arguments.apply_defaults()
        arguments = {name: value for name, value in arguments.arguments.items() if name != "self"}
        before = max(client.get_command_request_list())
        interrupted_at = []

        def interrupt_once_imaging() -> None:
            gang = [before + 1, before + 2, before + 3]  # the master's request, then its two workers'
            wait_until(lambda: [running_on(session, s) for s in (1, 2, 3)] == gang, message="the gang running")
            wait_until(lambda: (client.get_server_status()[1]["running_for"] or 0) > 5, message="5 s of imaging")
            interrupted_at.append(time.monotonic())
            os.kill(os.getpid(), signal.SIGINT)

        thread = threading.Thread(target=interrupt_once_imaging, daemon=True)
        thread.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                run_task_as_gang(client, "tclean", arguments)
        finally:
            thread.join(WAIT)
        print(f"Ctrl-C ended the gang across nodes in {time.monotonic() - interrupted_at[0]:.1f} s")
        responses = client.get_command_response([before + 1, before + 2, before + 3], True, timeout=WAIT)
        assert responses[0]["status"] == "cancelled" and "KeyboardInterrupt" in responses[0]["traceback"], responses[0]
        assert all(r["status"] in ("cancelled", "response received") for r in responses), responses
        assert [a["ret"] for a in client.push_command_request("casa_server_id", True, [1, 2, 3])] == [1, 2, 3]
    finally:
        client.stop_services()
        session.stop()


# ------------------------------------------------- casatasks' parallel code across nodes
@pytest.mark.casa
def test_casatasks_sub_ms_jobs_on_three_nodes_give_the_serial_results(nodes, casa_reference, tmp_path):
    """One server per node; partition, flagdata, setjy, applycal, split, tclean(parallel=True) (see multinode_pipeline.py)."""
    import numpy as np

    sys.path.insert(0, str(SUPPORT))
    import casampi_pipeline as pipeline
    from casampi_pipeline import column, pixels

    from casa_magics.cluster.casa_env import prepare_client_process

    out = tmp_path / "nodes.json"
    env = {**nodes.env, "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", ""), "CASA_MAGICS_RUN_DIR": str(tmp_path / "run")}
    done = subprocess.run(
        [sys.executable, str(SUPPORT / "multinode_pipeline.py"), str(casa_reference), nodes.bridge_ip, str(NODES), str(out)],
        env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=8 * WAIT, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["hosts"] == {str(n): f"node{n}" for n in range(1, NODES + 1)}
    requests = result["requests"]
    for task in ("partition", "flagdata", "setjy", "applycal", "split"):
        jobs = [r for r in requests if r["command"] == f"{task}()" and (task == "partition" or r["vis"].startswith("nodes.mms."))]
        runs = 2 if task == "flagdata" else 1  # flagdata: manual, then summary
        assert len(jobs) == runs * NODES, (task, jobs)
        print(task, [(job["vis"], job["host"], job["successful"], job["error"]) for job in jobs])
        # A sub-MS without the selected data fails its job as casatasks reports it (casampi's servers too);
        # the task's result comes from the others. Nothing else may fail.
        empty = ["RuntimeError: MSSelectionNullSelection : The selected table has zero rows."]
        assert all(job["successful"] or job["error"] == empty for job in jobs), (task, [job["error"] for job in jobs])
        assert sum(job["successful"] for job in jobs) >= 2, (task, jobs)
        if task != "partition":
            assert sorted({job["vis"] for job in jobs}) == [f"nodes.mms.{k:04d}.ms" for k in range(NODES)], (task, jobs)
        assert len({job["host"] for job in jobs}) >= 2, (task, jobs)  # sub-MS jobs on servers of different nodes
    gridding = [r for r in requests if "executemajorcycle" in r["command"]]
    assert gridding and all(r["successful"] for r in gridding) and len({r["host"] for r in gridding}) >= 2, gridding
    print("gridding", [(r["vis"], r["host"]) for r in gridding])
    serial = pipeline.serial_results(casa_reference)
    assert result["flag_summary"] == serial["flag_summary"]
    assert result["setjy"] == serial["setjy"]
    prepare_client_process(str(casa_reference))
    home = os.getcwd()
    os.chdir(casa_reference)
    try:
        for name in ("FLAG", "MODEL_DATA", "CORRECTED_DATA"):
            np.testing.assert_array_equal(column("nodes.mms", name), column("serial.ms", name), err_msg=name)
        np.testing.assert_array_equal(column("nodes_split.mms", "DATA"), column("serial_split.ms", "DATA"))
        for kind in ("image", "psf"):
            mine, reference = pixels(f"nodes_mfs.{kind}"), pixels(f"serial_mfs.{kind}")
            assert np.abs(mine - reference).max() <= 1e-4 * np.abs(reference).max(), kind
    finally:
        os.chdir(home)


# ------------------------------------------------------------ re-attach
KEPT = textwrap.dedent("""
    import json, sys
    from casa_magics import ClusterSession, CommandClient
    session = ClusterSession.start(n=int(sys.argv[2]), scheduler="slurm", controller_ip=sys.argv[1], keep=True,
                                   time_limit="15", timeout=240, sbatch_args=["--nodes=" + sys.argv[2]])
    client = CommandClient(session)
    client.start_services()
    client.push_command_request("left = casa_server_id * 10", block=True, target_server=list(range(1, int(sys.argv[2]) + 1)))
    wait = f"import os, time\\nwhile not os.path.exists({sys.argv[3]!r}): time.sleep(0.05)\\n'released'"
    held = client.push_command_request(wait, target_server=2)
    from casa_magics.cluster.control_channel import ask_reports
    import time
    deadline = time.monotonic() + 120
    while ask_reports(session.client, {2: session.servers.info(2).engine})[2].get("running") != held[0]:
        assert time.monotonic() < deadline, "the held request did not start on server 2"
        time.sleep(0.1)
    print(json.dumps({"job": session.slurm_job.job_id, "servers": session.servers.rows(), "held": held[0]}))
""")


def test_a_detached_cluster_on_three_nodes_is_reattached_and_stopped_with_its_job(nodes, tmp_path, monkeypatch):
    monkeypatch.setenv("CASA_MAGICS_DETACHED_DIR", str(tmp_path / "registry"))
    monkeypatch.setenv("CASA_MAGICS_RUN_DIR", str(tmp_path / "run"))
    env = {**nodes.env, **{k: os.environ[k] for k in ("CASA_MAGICS_DETACHED_DIR", "CASA_MAGICS_RUN_DIR")},
           "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", ""), "CASA_MAGICS_IMPORT_CASA": "0"}
    release = tmp_path / "release"
    kernel = subprocess.run([sys.executable, "-c", KEPT, nodes.bridge_ip, str(NODES), str(release)], env=env, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=3 * WAIT, check=False)
    assert kernel.returncode == 0, kernel.stderr[-3000:]
    left = json.loads(kernel.stdout.strip().splitlines()[-1])
    assert left["job"] in nodes.jobs()  # the kernel is gone; its job is not
    session = ClusterSession.reattach()
    try:
        assert session.servers.rows() == left["servers"]
        assert [i.host for i in session.servers] == [f"node{n}" for n in range(1, NODES + 1)]
        states = {row["id"]: row for row in session.previous_requests}
        assert states.get(left["held"], {}).get("state") == "running", (left, states)  # server 2 (node2) said so itself
        release.touch()
        client = CommandClient(session)
        client.start_services()
        answers = client.push_command_request("left", block=True, target_server=list(range(1, NODES + 1)))
        assert [r["ret"] for r in answers] == [10 * n for n in range(1, NODES + 1)]
        client.stop_services()
    finally:
        session.stop()
    assert left["job"] not in nodes.jobs()  # stopping the re-attached cluster cancelled its job
    wait_until(lambda: job_processes(nodes, left["job"]) == [], WAIT,
               f"no process of Slurm job {left['job']} left: {describe(job_processes(nodes, left['job']))}")
