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
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from casa_magics import ClusterSession, CommandClient
from casa_magics.notebook.display import status_text

from .conftest import HYDRA, VENV_BIN, WAIT, wait_until
from .support.multinode_slurm import NODES, MultiNodeSlurm, why_no_multinode

SERVERS_PER_NODE = 2
SERVERS = NODES * SERVERS_PER_NODE
#: Slurm fills the nodes in order and Open MPI maps ranks by slot: ranks 0, 1 on node1, 2, 3 on node2 ...
EXPECTED_HOST = {server: f"node{(server - 1) // SERVERS_PER_NODE + 1}" for server in range(1, SERVERS + 1)}
NODE_NAMES = sorted(set(EXPECTED_HOST.values()))

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
        sbatch_args=[f"--nodes={NODES}", f"--ntasks-per-node={SERVERS_PER_NODE}"],
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
def test_a_cube_gang_with_a_member_alone_on_its_node_is_the_serial_cube(nodes, casa_reference, tmp_path):
    """3 servers on 2 nodes (Slurm places 2 + 1): server 3 is alone on node2.

    casatools' C++ takes a rank alone on its node for a serial run and leaves
    ``initmpi()`` at once, so the master waited for it forever; each rank's
    keeper now tells it it has a neighbour (``OMPI_COMM_WORLD_LOCAL_SIZE``).
    """
    import numpy as np

    sys.path.insert(0, str(Path(__file__).parent / "support"))
    import casampi_pipeline as pipeline

    from casa_magics.cluster.casa_env import prepare_client_process

    prepare_client_process(str(casa_reference))
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
    finally:
        client.stop_services()
        session.stop()
