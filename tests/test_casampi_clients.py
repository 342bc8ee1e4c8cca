"""Real casampi clients run unchanged on casa_magics' servers (issue 17).

The client is ``support/casampi_job_client.py``, written the way pipelines
write casampi clients: 12 jobs (``visstat`` and a 64x64 ``tclean`` each, on
NGC 5921) pushed as ``casampi_job_client.run(job)`` to any free server of a
3-server cluster, collected with ``get_command_response``; each server notes
on its copy of the job its rank, host and role from ``casampi.MPIEnvironment``
and the client reads that copy back from ``response['parameters']['job']``.
The same jobs are run serially in this process for the reference.
``benchmarks/conformance_casampi.py`` runs this very client against the real
casampi 0.6.0, where the expected values below were checked.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

import casa_magics

import casa_magics.cluster.casa_env
from casa_magics import ClusterSession, CommandClient
from casa_magics.cluster.casa_env import casa_available
from casa_magics.cluster.session import live_current_session, set_current_session

from .conftest import WAIT

if not casa_available():
    pytest.skip("needs the casa extra (casatools, casatasks): make install", allow_module_level=True)

SUPPORT = Path(__file__).parent / "support"
sys.path.insert(0, str(SUPPORT))
import casampi_job_client as job_client  # noqa: E402
from casampi_pipeline import BASE_MS  # noqa: E402

pytestmark = [pytest.mark.needs_mpi, pytest.mark.casa]

SERVERS = [1, 2, 3]
WORLD_SIZE = len(SERVERS) + 1


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, test_environment):
    """Three MPI servers that can import the job client (on their PYTHONPATH), as the current session.

    Like conftest's ``own_cluster``, but shared by this module's tests: the
    jobs run once.
    """
    run_dir = tmp_path_factory.mktemp("clients-run")
    previous = live_current_session()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CASA_MAGICS_RUN_DIR", str(run_dir))
        patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(SUPPORT), os.environ.get("PYTHONPATH")])))
        session = ClusterSession.start(n=len(SERVERS), timeout=WAIT)
    set_current_session(session)  # casa_magics.MPIEnvironment in this process describes this cluster
    client = CommandClient(session)
    client.start_services()
    yield client
    client.stop_services()
    set_current_session(previous)


@pytest.fixture(scope="module")
def vis(casa_reference) -> str:
    """The untouched NGC 5921 MeasurementSet (see conftest's ``casa_reference``)."""
    return str(casa_reference / BASE_MS)


@pytest.fixture(scope="module")
def parallel(cluster, vis, tmp_path_factory):
    """What the job client saw on the cluster, and its jobs after the servers' notes were merged."""
    workdir = tmp_path_factory.mktemp("clients-parallel")
    jobs = job_client.make_jobs(vis)
    seen = job_client.drive(cluster, SERVERS, str(workdir), jobs)
    return seen, jobs, workdir


@pytest.fixture(scope="module")
def serial(vis, tmp_path_factory, run_dir):
    """The same jobs, run serially in this process (no casampi here)."""
    casa_magics.cluster.casa_env.prepare_client_process(run_dir)
    jobs = job_client.make_jobs(vis)
    home = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("clients-serial"))
    try:
        for job in jobs:
            job_client.perform(job)
    finally:
        os.chdir(home)
    return jobs


def test_every_job_succeeds_and_returns_its_result(parallel):
    seen, jobs, _ = parallel
    assert [r["successful"] for r in seen["responses"]] == [True] * len(jobs), [r["traceback"] for r in seen["responses"]]
    for response, job in zip(seen["responses"], jobs):
        assert response["ret"] == [job_client.plain(job.results), None]  # run() returned (result, None)


def test_job_results_match_the_same_jobs_run_serially(parallel, serial):
    _, jobs, _ = parallel
    for mine, reference in zip(jobs, serial):
        assert reference.results["tclean"]["iterdone"] > 0 and reference.results["image_max"] > 0
        assert job_client.differences(mine.results, reference.results, f"job {mine.number}") == []
        assert mine.task_log == reference.task_log == [
            "Begin Task: visstat", "End Task: visstat", "Begin Task: tclean", "End Task: tclean"
        ]


def test_every_server_runs_jobs_and_each_job_noted_the_server_that_ran_it(parallel, cluster):
    seen, jobs, workdir = parallel
    assert {r["server"] for r in seen["responses"]} == set(SERVERS)
    for response, job in zip(seen["responses"], jobs):
        server = cluster.session.servers.info(response["server"])
        assert job.rank == response["server"] and type(job.rank) is int
        assert (job.host, job.pid) == (server.host, server.pid) != (socket.gethostname(), os.getpid())
        assert job.is_mpi_client is False and job.execution_role == ""
        assert job.cwd == str(workdir)  # the cluster-wide os.chdir holds for later commands


def test_each_servers_casa_log_lines_carry_the_tag_casatools_gives_its_mpi_rank(parallel, serial):
    """A known difference from casampi, kept as documented (docs: Scripts written for casampi).

    casatools' C++ tags a process's log lines ``MPIServer-<MPI rank>``. Under
    mpicasa a server's rank is its server ID; here the servers' world has no
    client rank, so server *k* is rank *k* - 1 (server 1's lines are
    untagged). Each server writes its own CASA log file, which says whose it is.
    """
    _, jobs, _ = parallel
    assert {job.log_tag for job in serial} == {""}  # no MPI here: untagged
    expected = {job.number: (f"MPIServer-{job.rank - 1}" if job.rank > 1 else "") for job in jobs}
    assert {job.number: job.log_tag for job in jobs} == expected


def test_cluster_wide_calls_answer_from_every_server(parallel):
    seen, _, _ = parallel
    for step in seen["setup"]:  # import, os.chdir
        assert [(r["server"], r["successful"], r["ret"]) for r in step] == [(s, True, None) for s in SERVERS]
    assert seen["environment_ok"] == [True] * len(SERVERS)


def test_environment_report_says_every_server_is_an_mpi_server_with_its_rank(parallel, cluster):
    seen, _, _ = parallel
    assert sorted(seen["environment"]) == [str(s) for s in SERVERS]
    for server in SERVERS:
        report = dict(seen["environment"][str(server)])
        assert report.pop("types") == job_client.expected_types()
        host = cluster.session.servers.info(server).host
        assert report == job_client.expected_environment(server, WORLD_SIZE, host)


def test_client_role_attributes_match_casampis(cluster):
    report = job_client.plain(job_client.environment_report(casa_magics.MPIEnvironment))
    assert report.pop("types") == job_client.expected_types()
    assert report == job_client.expected_environment(0, WORLD_SIZE, socket.gethostname())

