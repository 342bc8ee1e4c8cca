"""casatasks' own parallel code on the servers, compared with a serial run.

With casampi enabled, the Multi-MS tasks send one job per sub-MS to the
servers and ``tclean(parallel=True)`` grids on them. Every result here is
compared with the same task run serially on the plain MS in a process where
casampi is not enabled (``support/serial_casa_reference.py``); both runs
take their parameters from ``support/casampi_pipeline.py``.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import casa_magics
from casa_magics.cluster.casa_env import casa_available
from casa_magics.casampi.mpi_interface import CPP_MPI_NOTICE


if not casa_available():
    pytest.skip("needs the casa extra (casatools, casatasks): make install", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).parent / "support"))
import casampi_pipeline as pipeline  # noqa: E402
from casampi_pipeline import column, pixels  # noqa: E402

pytestmark = [pytest.mark.needs_mpi, pytest.mark.casa]

SERVERS = [1, 2]
MMS = "ngc5921.mms"


@pytest.fixture(scope="module")
def workdir(casa_reference) -> Path:
    """The serial reference (made once per run, see conftest)."""
    return casa_reference


@pytest.fixture(scope="module")
def casatasks(client, workdir):
    """casatasks in this process with casampi enabled, working in ``workdir``."""
    assert casa_magics.enable_casampi()
    import casatasks

    home = os.getcwd()
    os.chdir(workdir)
    yield casatasks
    os.chdir(home)
    casa_magics.disable_casampi()


@pytest.fixture(scope="module")
def parallel(casatasks, client):
    """The pipeline on a two-sub-MS Multi-MS; returns the tasks' results and the requests they made."""
    before = set(client.get_command_request_list())
    casatasks.partition(vis=pipeline.BASE_MS, outputvis=MMS, createmms=True, separationaxis="scan", numsubms=2)
    results = pipeline.calibrate(casatasks, MMS, pipeline.GAIN_TABLE, make_gain_table=False)
    casatasks.split(vis=MMS, outputvis="parallel_split.mms", keepmms=True, **pipeline.SPLIT)
    results["tclean_mms"] = casatasks.tclean(vis=MMS, imagename="parallel_mms", parallel=True, **pipeline.MFS)
    results["tclean_ms"] = casatasks.tclean(vis="serial.ms", imagename="parallel_ms", parallel=True, **pipeline.MFS)
    requests = {i: r for i, r in client.get_command_request_list().items() if i not in before}
    return results, requests


@pytest.fixture(scope="module")
def serial(workdir):
    return pipeline.serial_results(workdir)


def sub_ms_jobs(requests: dict, task: str) -> dict[str, dict]:
    """The requests casatasks made for ``task``, keyed by the sub-MS they worked on."""
    return {
        Path(r["parameters"]["vis"]).name: r
        for r in requests.values()
        if r["command"] == f"{task}()" and "SUBMSS" in str((r["parameters"] or {}).get("vis"))
    }


# ---------------------------------------------------------------- Multi-MS
def test_partition_writes_two_sub_ms_on_the_servers(parallel, workdir, session):
    _, requests = parallel
    jobs = [r for r in requests.values() if r["command"] == "partition()"]
    assert sorted(r["server"] for r in jobs) == SERVERS
    assert all(r["successful"] and r["pid"] != os.getpid() for r in jobs)
    sub_ms = sorted(p.name for p in (workdir / MMS / "SUBMSS").iterdir())
    assert sub_ms == [f"{MMS}.0000.ms", f"{MMS}.0001.ms"]


def test_each_sub_ms_job_runs_on_a_server_and_is_in_its_log(parallel, session):
    _, requests = parallel
    for task in ("flagdata", "setjy", "applycal"):
        jobs = sub_ms_jobs(requests, task)
        placed = {name: (job["server"], job["successful"]) for name, job in jobs.items()}
        assert sorted(placed) == [f"{MMS}.0000.ms", f"{MMS}.0001.ms"], task
        assert sorted(server for server, _ in placed.values()) == SERVERS, (task, placed)
        assert all(ok for _, ok in placed.values()), (task, placed)
        pids = {session.servers.info(job["server"]).pid for job in jobs.values()}
        assert {job["pid"] for job in jobs.values()} == pids and os.getpid() not in pids
        for name, job in jobs.items():
            log = (session.run_dir / f"casa-server-{job['server']}.log").read_text(errors="replace")
            assert f"runs request {job['id']} on {job['parameters']['vis']}: {task}()" in log


def test_flagdata_flags_and_summary_match_the_serial_run(parallel, serial, workdir):
    results, _ = parallel
    assert results["flag_summary"] == serial["flag_summary"]
    assert results["flag_summary"]["antenna"]["5"]["flagged"] > 0
    np.testing.assert_array_equal(column(MMS, "FLAG"), column("serial.ms", "FLAG"))


def test_setjy_model_matches_the_serial_run(parallel, serial):
    results, _ = parallel
    assert pipeline.plain(results["setjy"]) == serial["setjy"]
    np.testing.assert_array_equal(column(MMS, "MODEL_DATA"), column("serial.ms", "MODEL_DATA"))


def test_applycal_corrected_data_matches_the_serial_run(parallel):
    corrected = column(MMS, "CORRECTED_DATA")
    np.testing.assert_array_equal(corrected, column("serial.ms", "CORRECTED_DATA"))
    assert not np.array_equal(corrected, column(MMS, "DATA"))  # the gains were applied


def test_split_keeps_the_mms_and_matches_the_serial_split(parallel, workdir):
    _, requests = parallel
    assert len(sub_ms_jobs(requests, "split")) == 2
    assert (workdir / "parallel_split.mms" / "SUBMSS").is_dir()
    np.testing.assert_array_equal(column("parallel_split.mms", "DATA"), column("serial_split.ms", "DATA"))
    np.testing.assert_array_equal(column("parallel_split.mms", "FLAG"), column("serial_split.ms", "FLAG"))


# ------------------------------------------------------------ continuum imaging
@pytest.mark.parametrize("imagename", ["parallel_mms", "parallel_ms"])
def test_parallel_continuum_tclean_matches_the_serial_image(parallel, imagename):
    for kind in ("image", "psf"):
        mine, reference = pixels(f"{imagename}.{kind}"), pixels(f"serial_mfs.{kind}")
        peak = np.abs(reference).max()
        assert peak > 0
        assert np.abs(mine - reference).max() <= 1e-4 * peak, kind


def test_parallel_continuum_tclean_grids_on_the_servers(parallel):
    _, requests = parallel
    gridding = [r for r in requests.values() if "executemajorcycle" in r["command"]]
    assert {r["server"] for r in gridding} == set(SERVERS)
    assert all(r["successful"] for r in gridding)


# ----------------------------------------------------------------- cube
def test_cube_tclean_with_casampi_enabled_runs_as_a_gang_with_the_serial_result(parallel, serial, client, capfd):
    before = set(client.get_command_request_list())
    result = __import__("casatasks").tclean(vis="serial.ms", imagename="cube", parallel=True, **pipeline.CUBE)
    assert CPP_MPI_NOTICE.split("{")[0] not in capfd.readouterr().err  # not run serially here
    gang = {i: r for i, r in client.get_command_response_list().items() if i not in before and r["server"] in SERVERS}
    workers = [r for r in gang.values() if r["command"] == "synthesisimager().initmpi()"]
    assert [r["server"] for r in workers] == [2] and workers[0]["ret"]["joined"] is True
    for kind in ("image", "residual", "psf", "model", "pb"):
        np.testing.assert_array_equal(pixels(f"cube.{kind}"), pixels(f"serial_cube.{kind}"), err_msg=kind)
    assert pipeline.untimed(result) == pipeline.untimed(serial["tclean_cube"])


# ------------------------------------------------------------ on one server
def test_a_task_pushed_to_one_server_runs_serially_there(parallel, client, casatasks):
    before = set(client.get_command_request_list())
    (response,) = client.push_command_request("flagdata()", True, 1, dict(vis=os.path.abspath(MMS), mode="summary"))
    assert response["successful"], response["traceback"]
    assert set(client.get_command_request_list()) - before == {response["id"]}  # no nested jobs
    assert response["ret"] == casatasks.flagdata(vis=MMS, mode="summary")  # as the two sub-MS jobs say


def test_a_cube_pushed_to_one_server_runs_serially_there_with_the_serial_result(parallel, serial, client):
    # The servers are casampi servers (MPI enabled, not the client): CASA starts no cluster
    # of its own there, and the C++ cube imaging, which would wait for workers on the other
    # ranks, runs in a serial child process of the server instead.
    params = dict(vis=os.path.abspath("serial.ms"), imagename=os.path.abspath("cube_on_server"), **pipeline.CUBE)
    before = set(client.get_command_request_list())
    (response,) = client.push_command_request("tclean(parallel=True, **cube)", True, 2, {"cube": params})
    assert response["successful"], response["traceback"]
    assert set(client.get_command_request_list()) - before == {response["id"]}  # no nested jobs
    for kind in ("image", "residual", "psf", "model", "pb"):
        np.testing.assert_array_equal(pixels(f"cube_on_server.{kind}"), pixels(f"serial_cube.{kind}"), err_msg=kind)
    assert pipeline.untimed(response["ret"]) == pipeline.untimed(serial["tclean_cube"])


# ----------------------------------------------------------------- failures
def test_an_mms_with_a_missing_sub_ms_fails_as_casatasks_reports_it(parallel, casatasks, workdir, client):
    broken = workdir / "broken.mms"
    shutil.copytree(workdir / MMS, broken, symlinks=True)
    shutil.rmtree(broken / "SUBMSS" / f"{MMS}.0001.ms")
    before = set(client.get_command_request_list())
    with pytest.raises(ValueError, match=f"^Unable to open MS {broken}$"):
        casatasks.flagdata(vis=str(broken), mode="summary")
    assert set(client.get_command_request_list()) == before  # casatasks stops before sending jobs


def test_a_failed_sub_ms_job_is_reported_as_casatasks_reports_it(parallel, casatasks, client):
    # Server 2 gets the second sub-MS; its flagdata now fails as a broken disk would make it.
    client.push_command_request("def flagdata(**_):\n    raise OSError('disk full on server 2')", True, 2)
    try:
        before = set(client.get_command_request_list())
        summary = casatasks.flagdata(vis=MMS, mode="summary")
        jobs = sub_ms_jobs({i: r for i, r in client.get_command_request_list().items() if i not in before}, "flagdata")
    finally:
        client.push_command_request("from casatasks import flagdata", True, 2)
    failed = jobs[f"{MMS}.0001.ms"]
    assert (failed["server"], failed["successful"], failed["ret"]) == (2, False, None)
    assert "OSError: disk full on server 2" in failed["traceback"]
    assert jobs[f"{MMS}.0000.ms"]["successful"]
    assert summary["total"] == jobs[f"{MMS}.0000.ms"]["ret"]["total"]  # casatasks merges what succeeded
