"""Servers through Slurm: the pure decisions, then a real one-node Slurm.

The first half needs no Slurm: options, the sbatch command line, the batch
script, reading Slurm's answers, and where servers and the controller go.
The second half brings up a real Slurm (``tests/support/slurm_cluster.py``)
once for the module and starts servers through ``sbatch``, inside an
allocation (``salloc``), into a queue that does not move, and loses a job to
``scancel`` in the middle of a command. It is skipped, saying why, when not
root or when Slurm's packages are missing (``make slurm-packages``).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from casa_magics import ClusterSession, CommandClient
from casa_magics.cluster.casa_env import casa_available
from casa_magics.core.errors import ClusterError
from casa_magics.cluster.slurm import (
    JobInfo,
    JobOptions,
    batch_script,
    check_sbatch_args,
    check_time_limit,
    current_allocation,
    parse_job,
    parse_job_id,
    sbatch_command,
)
from casa_magics.cluster.slurm_launch import LOOPBACK, place_servers, starting_job

from .conftest import VENV_BIN, WAIT, started_marker, wait_until
from .support.slurm_cluster import LocalSlurm, why_no_slurm

PENDING_LINE = (
    "JobId=3 JobName=casa-servers UserId=root(0) GroupId=root(0) JobState=PENDING Reason=Resources "
    "Dependency=(null) NodeList= Partition=whole Command=/tmp/a dir/job.sh WorkDir=/data NumTasks=2"
)
RUNNING_LINE = "JobId=12 JobName=x JobState=RUNNING Reason=None NodeList=node[1-2] Partition=debug"


# ---------------------------------------------------------------- pure
def test_parse_job_reads_state_reason_nodes_and_partition():
    pending = parse_job(PENDING_LINE)
    assert pending == JobInfo("3", "PENDING", "Resources", "", "whole")
    assert pending.pending and not pending.ended
    assert pending.describe() == "Slurm job 3: PENDING (Resources)"
    running = parse_job(RUNNING_LINE)
    assert (running.state, running.reason, running.nodes) == ("RUNNING", "", "node[1-2]")
    assert running.describe() == "Slurm job 12: RUNNING on node[1-2]"
    assert JobInfo("5", "CANCELLED").ended and JobInfo("5", "COMPLETING").ended
    with pytest.raises(ValueError, match="no job in Slurm's answer"):
        parse_job("slurm_load_jobs error: Invalid job id specified")


def test_parse_job_id_takes_parsable_output():
    assert parse_job_id("42\n") == "42"
    assert parse_job_id("42;cluster\n") == "42"
    with pytest.raises(ValueError, match="sbatch gave no job ID: 'Submitted'"):
        parse_job_id("Submitted")


def test_sbatch_command_puts_the_users_options_last():
    options = JobOptions(
        4, "/run/out-%j", "/data", partition="long", time_limit="04:00:00", account="radio", extra=["--mem=4G"]
    )
    assert sbatch_command(options, "/run/job.sh") == [
        "sbatch", "--parsable", "--job-name=casa-servers", "--ntasks=4", "--output=/run/out-%j", "--chdir=/data",
        "--partition=long", "--time=04:00:00", "--account=radio", "--mem=4G", "/run/job.sh",
    ]


def test_batch_script_exports_the_environment_and_runs_the_launch_line():
    script = batch_script(["/v/mpiexec", "-n", "2", "python", "a b.py"], {"B": "x y", "A": "1"})
    assert script.splitlines() == [
        "#!/bin/sh",
        "# casa_magics: the CASA servers, the MPI ranks of this one job.",
        "export A=1",
        "export B='x y'",
        "exec /v/mpiexec -n 2 python 'a b.py'",
    ]
    with pytest.raises(ClusterError, match="environment variable name 'A-B' cannot be exported"):
        batch_script(["x"], {"A-B": "1"})


@pytest.mark.parametrize("good", ["30", "30:00", "04:00:00", "1-0", "1-04:00", "2-04:00:00", "UNLIMITED", 15])
def test_time_limits_slurm_takes(good):
    assert check_time_limit(good) == str(good)


@pytest.mark.parametrize("bad", ["4h", "", "1:2:3:4", None, 1.5])
def test_bad_time_limit_is_one_line_naming_it(bad):
    with pytest.raises(ClusterError, match=re.escape(f"such as 30, 04:00:00 or 1-00:00:00, got {bad!r}")):
        check_time_limit(bad)


def test_bad_sbatch_args_are_named():
    assert check_sbatch_args(("--mem=4G",)) == ["--mem=4G"]
    with pytest.raises(ClusterError, match="sbatch_args must be a list of strings such as"):
        check_sbatch_args("--mem=4G")
    with pytest.raises(ClusterError, match="must be an sbatch option such as '--mem=4G', got 'mem'"):
        check_sbatch_args(["mem"])


def test_allocation_is_read_from_slurm_variables():
    allocation = current_allocation({"SLURM_JOB_ID": "9", "SLURM_NTASKS": "8", "SLURM_JOB_NUM_NODES": "2"})
    assert (allocation.job_id, allocation.ntasks, allocation.nodes) == ("9", 8, 2)
    assert current_allocation({"SLURM_NTASKS": "8"}) is None
    assert current_allocation({"SLURM_JOB_ID": "9", "SLURM_NTASKS": "x"}) is None


def test_placement_embedded_stays_on_loopback():
    placement = place_servers(None, environ={})
    assert (placement.controller_ip, placement.job, placement.servers(None)) == (LOOPBACK, None, None)
    assert placement.describe(2) == "embedded cluster of 2 MPI servers"
    assert placement.describe(1, "local") == "embedded cluster of 1 local server"


def test_placement_inside_an_allocation_uses_its_tasks():
    one_node = place_servers(None, environ={"SLURM_JOB_ID": "9", "SLURM_NTASKS": "3"})
    assert (one_node.servers(None), one_node.servers(2), one_node.controller_ip) == (3, 2, LOOPBACK)
    assert one_node.describe(3) == (
        "embedded cluster of 3 MPI servers in Slurm allocation 9 (SLURM_NTASKS=3)"
    )
    nodes = place_servers(
        None, configured_ip="10.1.2.3", environ={"SLURM_JOB_ID": "9", "SLURM_NTASKS": "3", "SLURM_JOB_NUM_NODES": "2"}
    )
    assert nodes.controller_ip == "10.1.2.3"  # ranks on the other node must reach it


def test_placement_with_a_hostfile_listens_where_its_hosts_reach_it():
    assert place_servers(None, hostfile=True, configured_ip="10.1.2.3", environ={}).controller_ip == "10.1.2.3"
    assert place_servers(None, hostfile=True, environ={}).controller_ip not in ("*", "0.0.0.0")


def test_placement_for_slurm_listens_where_nodes_reach_it():
    assert place_servers("slurm", configured_ip="10.1.2.3").controller_ip == "10.1.2.3"
    assert place_servers("slurm", controller_ip="10.9.9.9", configured_ip="10.1.2.3").controller_ip == "10.9.9.9"
    assert place_servers("slurm", controller_ip="*").controller_ip == "*"  # only when asked
    default = place_servers("slurm").controller_ip
    assert default not in ("*", "0.0.0.0")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scheduler": "pbs"}, "scheduler must be None or 'slurm', got 'pbs'"),
        ({"scheduler": None, "partition": "p"}, "partition applies only to scheduler='slurm'"),
        ({"scheduler": None, "sbatch_args": ["--mem=1G"]}, "sbatch_args applies only to scheduler='slurm'"),
        ({"scheduler": "slurm", "partition": "a b"}, "partition must be a Slurm name (no spaces, not starting with '-'), got 'a b'"),
        ({"scheduler": "slurm", "account": ""}, "account must be a Slurm name"),
        ({"scheduler": "slurm", "controller_ip": "node1"}, "controller_ip must be an IP address (or '*' for every interface), got 'node1'"),
    ],
)
def test_bad_slurm_options_are_refused_before_anything_starts(kwargs, message):
    with pytest.raises(ClusterError, match=re.escape(message)):
        ClusterSession.start(n=2, **kwargs)


def test_a_hostfile_does_not_go_to_slurm(tmp_path):
    with pytest.raises(ClusterError, match=r"a hostfile \(.*hosts\) does not apply to scheduler='slurm'"):
        ClusterSession.start(n=2, scheduler="slurm", hostfile=str(tmp_path / "hosts"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("start --partition p", "--partition applies only to %casa_cluster start --slurm"),
        ("start --sbatch-arg=--mem=1G", "--sbatch-arg applies only to %casa_cluster start --slurm"),
        ("stop --slurm", "--slurm does not apply to %casa_cluster stop"),
        ("status --controller-ip 10.0.0.1", "--controller-ip does not apply to %casa_cluster status"),
        ("start --slurm --time 4h", "time limit must be a Slurm time such as 30, 04:00:00 or 1-00:00:00, got '4h'"),
    ],
)
def test_magic_refuses_misplaced_slurm_options(text, message, monkeypatch):
    from IPython.core.error import UsageError

    from casa_magics.notebook import magics

    monkeypatch.setattr(magics, "has_current_session", lambda: False)
    monkeypatch.setattr(magics.MPICommandClient, "stop_services", lambda self: [])
    with pytest.raises(UsageError, match=re.escape(message)):
        magics.CasaMagics(shell=None).casa_cluster(text)


# ---------------------------------------------------------------- a real Slurm
needs_slurm = pytest.mark.skipif(why_no_slurm() is not None, reason=f"no local Slurm: {why_no_slurm()}")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A one-node Slurm for this module; SLURM_CONF and IPYTHONDIR point at its own files."""
    if why_no_slurm() is not None:
        pytest.skip(f"no local Slurm: {why_no_slurm()}")
    cluster = LocalSlurm().start(timeout=WAIT)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLURM_CONF", str(cluster.conf))
        patch.setenv("IPYTHONDIR", str(tmp_path_factory.mktemp("ipython")))
        cluster.env["IPYTHONDIR"] = os.environ["IPYTHONDIR"]
        try:
            yield cluster
        finally:
            cluster.stop()


@pytest.fixture
def slurm_run_dir(tmp_path, monkeypatch):
    """A private run directory of the test's own (0700), as the default temporary one is."""
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    monkeypatch.setenv("CASA_MAGICS_RUN_DIR", str(run_dir))
    return run_dir


def server_processes(session) -> list[psutil.Process]:
    """Every server's engine and the processes between it and Slurm's step daemon (keeper, MPI launcher)."""
    found = {}
    for info in session.servers:
        process = info.process()
        while process is not None and not process.name().startswith("slurmstepd"):
            found[process.pid] = process
            process = process.parent()
    return list(found.values())


def all_gone(processes: list[psutil.Process]) -> bool:
    def gone(process: psutil.Process) -> bool:
        try:
            return process.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    return all(gone(p) for p in processes)


def job_of(session) -> str:
    job_id = session.slurm_job.job_id
    assert job_id and job_id.isdigit()
    return job_id


def wait_for_empty_queue(slurm: LocalSlurm) -> None:
    wait_until(lambda: slurm.jobs() == [], WAIT, "an empty Slurm queue")


@needs_slurm
def test_servers_are_the_ranks_of_one_sbatch_job(slurm, slurm_run_dir):
    session = ClusterSession.start(n=3, scheduler="slurm", time_limit="10", timeout=WAIT)
    client = CommandClient(session)
    try:
        job_id = job_of(session)
        assert session.description == f"3 MPI servers in Slurm job {job_id}"
        assert session.scheduler_status() == f"Slurm job {job_id}: RUNNING on {slurm.node}"
        assert slurm.jobs() == [job_id]
        assert [(i.server, i.rank) for i in session.servers] == [(1, 0), (2, 1), (3, 2)]
        assert (slurm_run_dir / f"slurm-servers-{job_id}.out").exists()
        # The connection files and their key stay private on the Slurm path too.
        security = Path(session.cluster.profile_dir) / "security"
        assert stat.S_IMODE(Path(session.cluster.profile_dir).stat().st_mode) == 0o700
        files = sorted(security.glob(f"ipcontroller-{session.cluster.cluster_id}-*.json"))
        assert len(files) == 2 and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
        client.start_services()
        # Seed example 1 (a stand-in visstat: CASA's own is tested in test_casa), on any free server.
        client.push_command_request(
            "def visstat(vis, axis):\n    return {'vis': vis, 'axis': axis, 'server': casa_server_id}",
            target_server=[1, 2, 3], block=True,
        )
        cmd1 = client.push_command_request("visstat(vis='eb1.ms', axis='amp')", block=False)
        cmd2 = client.push_command_request("visstat()", block=False, parameters={"vis": "eb2.ms", "axis": "amp"})
        results = client.get_command_response([cmd1, cmd2], block=True, timeout=WAIT)
        assert [r["ret"]["vis"] for r in results] == ["eb1.ms", "eb2.ms"]
        assert all(r["successful"] and r["ret"]["server"] == r["server"] for r in results)
        # Seed example 2: state on servers 1 and 2, in push order.
        client.push_command_request("from scipy import signal", target_server=[1, 2])
        ret = client.push_command_request("signal.medfilt([1, 9, 1], 3)", block=True, target_server=[1, 2])
        assert [(r["successful"], list(r["ret"]), r["server"]) for r in ret] == [(True, [1, 1, 1], 1), (True, [1, 1, 1], 2)]
        if casa_available():  # casatools' C++ shares the job's MPI world: the servers can run a cube as a gang
            master, *workers = client.push_gang_request("casa_server_id + 100", True)
            assert master["ret"] == 101 and [(w["ret"]["rank"], w["ret"]["joined"]) for w in workers] == [(1, False), (2, False)]
        processes = server_processes(session)
        assert len(processes) >= 4, processes  # three engines and what runs them
    finally:
        client.stop_services()
        session.stop()
    assert slurm.jobs() == []  # stop waits until the job has left the queue
    wait_until(lambda: all_gone(processes), WAIT, "no server, keeper or mpiexec left")


@needs_slurm
def test_a_job_slurm_ends_times_out_its_requests_naming_the_job(slurm, slurm_run_dir, tmp_path):
    session = ClusterSession.start(n=2, scheduler="slurm", timeout=WAIT)
    client = CommandClient(session)
    try:
        job_id = job_of(session)
        client.start_services()
        marker = tmp_path / "running"
        ids = client.push_command_request(f"{started_marker(marker)}; import time; time.sleep(300)", target_server=[1, 2])
        wait_until(marker.exists, WAIT, "the command running")
        slurm.run("scancel", job_id)
        cancelled = time.monotonic()
        responses = client.get_command_response(ids, block=True, timeout=WAIT)
        took = time.monotonic() - cancelled
        assert [r["status"] for r in responses] == ["timeout", "timeout"]
        for response in responses:
            assert f"was lost: Slurm job {job_id} ended: CANCELLED" in response["traceback"], response["traceback"]
        assert took < 15, f"the end of the job was noticed only after {took:.1f} s"
    finally:
        client.stop_services()
        session.stop()
    wait_for_empty_queue(slurm)


@needs_slurm
def test_a_job_that_stays_pending_is_cancelled_at_the_start_timeout(slurm, slurm_run_dir, capsys, monkeypatch):
    from casa_magics.notebook import magics

    wait_for_empty_queue(slurm)
    blocker = slurm.run("sbatch", "--parsable", "--partition=whole", "--output=/dev/null", "--wrap", "sleep 300")
    blocker_id = blocker.stdout.strip()
    try:
        wait_until(lambda: slurm.run("squeue", "-h", "-j", blocker_id, "-o", "%T").stdout.strip() == "RUNNING",
                   WAIT, "the node held by another job")
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            starting = pool.submit(ClusterSession.start, n=2, scheduler="slurm", partition="whole", timeout=6)
            # Meanwhile %casa_cluster status shows the job waiting in the queue, and why.
            waiting = wait_until(lambda: (info := starting_job()) is not None and info.reason and info, WAIT,
                                 "the pending job")
            monkeypatch.setattr(magics, "has_current_session", lambda: False)
            magics.CasaMagics(shell=None).casa_cluster("status")
            shown = capsys.readouterr()
            assert f"Starting: Slurm job {waiting.job_id}: PENDING ({waiting.reason})." in shown.out
            with pytest.raises(ClusterError) as raised:
                starting.result(timeout=WAIT)
        assert time.monotonic() - started < 6 + 20
        assert starting_job() is None
        first = str(raised.value).splitlines()[0]
        found = re.fullmatch(
            r"cannot start servers: Slurm job (\d+): PENDING \((Resources|Priority)\) after 6 s, "
            r"the start timeout: cancelled it",
            first,
        )
        assert found, first
        job_id = found.group(1)
        assert f"Slurm job {job_id}: PENDING (" in shown.err + capsys.readouterr().err  # said while it waited
        assert slurm.jobs() == [blocker_id]  # ours is gone, the other job is untouched
    finally:
        slurm.run("scancel", blocker_id, check=False)
    wait_for_empty_queue(slurm)


@needs_slurm
def test_inside_an_allocation_the_servers_are_its_tasks(slurm, tmp_path):
    script = tmp_path / "in_allocation.py"
    script.write_text(textwrap.dedent("""\
        import json, os
        from casa_magics import ClusterSession
        session = ClusterSession.start()
        try:
            print(json.dumps({
                "description": session.description,
                "ranks": [[i.server, i.rank] for i in session.servers],
                "job": os.environ["SLURM_JOB_ID"],
                "slurm_job": session.slurm_job is not None,
            }))
        finally:
            session.stop()
    """))
    env = {
        **slurm.env,
        "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", ""),
        "CASA_MAGICS_RUN_DIR": str(tmp_path / "run"),
        "CASA_MAGICS_IMPORT_CASA": "0",
    }
    done = subprocess.run(
        ["salloc", "-n", "2", sys.executable, str(script)],
        env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=2 * WAIT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["ranks"] == [[1, 0], [2, 1]]
    assert result["description"] == (
        f"embedded cluster of 2 MPI servers in Slurm allocation {result['job']} (SLURM_NTASKS=2)"
    )
    assert not result["slurm_job"]  # the allocation is the user's: it is not cancelled
    wait_for_empty_queue(slurm)


@needs_slurm
def test_magics_start_show_and_stop_a_slurm_job_and_exit_cancels_it(slurm, tmp_path):
    script = tmp_path / "magics.py"
    script.write_text(textwrap.dedent("""\
        from IPython.testing.globalipapp import start_ipython
        start_ipython()
        ip = get_ipython()
        ip.run_line_magic("load_ext", "casa_magics")
        ip.run_line_magic("casa_cluster", "start --slurm -n 2 --time 00:10:00 --sbatch-arg=--job-name=magic-test")
        ip.run_line_magic("casa_cluster", "status")
        print("ids", ip.run_line_magic("casa_push", "-b -t 1,2 casa_server_id")[1]["ret"])
        ip.run_line_magic("casa_cluster", "stop")
        ip.run_line_magic("casa_cluster", "start --slurm -n 1")
        print("left running at exit")
    """))
    env = {
        **slurm.env,
        "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", ""),
        "CASA_MAGICS_RUN_DIR": str(tmp_path / "run"),
        "CASA_MAGICS_IMPORT_CASA": "0",
    }
    done = subprocess.run(
        [sys.executable, str(script)], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=2 * WAIT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    job_id = re.search(r"Started 2 MPI servers in Slurm job (\d+) \(logs in ", out).group(1)
    assert f"Running: 2 MPI servers in Slurm job {job_id}" in out
    assert f"Slurm job {job_id}: RUNNING on {slurm.node}." in out
    assert "ids 2" in out
    assert f"Stopped 2 MPI servers in Slurm job {job_id}." in out
    info = slurm.run("scontrol", "show", "job", "--oneliner", job_id).stdout
    assert "JobName=magic-test" in info and "TimeLimit=00:10:00" in info
    # The second cluster was left running: interpreter exit cancelled its job.
    second = re.search(r"Started 1 MPI server in Slurm job (\d+) ", out).group(1)
    assert "left running at exit" in out and second != job_id
    assert slurm.jobs() == []


def test_controller_ip_setting_is_checked_when_read():
    from casa_magics.core.config import load_settings
    from casa_magics.core.errors import SettingError

    assert load_settings({"CASA_MAGICS_CONTROLLER_IP": "10.0.0.5"}).controller_ip == "10.0.0.5"
    with pytest.raises(SettingError, match=r"^CASA_MAGICS_CONTROLLER_IP must be an IP address \(or '\*'\), got 'node1'$"):
        load_settings({"CASA_MAGICS_CONTROLLER_IP": "node1"})
