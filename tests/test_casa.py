"""CASA on the servers: offline set-up, logs, working directory, errors, same results as here.

Runs real ``casatools``/``casatasks`` on the shared two-server cluster, on the
NGC 5921 UVFITS file that ships with ``casadata``. No network: every process
reads the measures data of ``casadata`` and never tries to download.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from casa_magics.cluster.casa_env import casa_available, prepare_client_process

from .conftest import WAIT

if not casa_available():
    pytest.skip("needs the casa extra (casatools, casatasks): make install", allow_module_level=True)

import casadata  # noqa: E402  (small: defines datapath only)

pytestmark = [pytest.mark.needs_mpi, pytest.mark.casa]

SERVERS = [1, 2]
NGC5921_FITS = os.path.join(casadata.datapath, "demo", "NGC5921.fits")


def run(client, command, target_server=None, parameters=None):
    """Push one command and wait (finitely) for its responses."""
    ids = client.push_command_request(command, target_server=target_server, parameters=parameters)
    return client.get_command_response(ids, block=True, timeout=WAIT)


def run_ok(client, command, target_server=None, parameters=None):
    responses = run(client, command, target_server, parameters)
    assert all(r["successful"] for r in responses), [r["traceback"] for r in responses]
    return responses


@contextlib.contextmanager
def nothing_new_in(directory: Path):
    """Fail if entries appear in ``directory`` (e.g. CASA logs written into the cwd)."""
    before = set(os.listdir(directory))
    yield
    new = sorted(set(os.listdir(directory)) - before)
    assert [name for name in new if name.startswith("casa") and name.endswith(".log")] == []
    assert new == [], f"new in {directory}: {new}"


@pytest.fixture(scope="module")
def casa_servers(client):
    """Both servers with CASA imported (as a CASA session has it: tasks by name too)."""
    run_ok(client, "import casatools, casatasks\nfrom casatasks import listobs", target_server=SERVERS)
    return client


@pytest.fixture(scope="module")
def servers_cwd(casa_servers) -> Path:
    """The servers' working directory: the client's (the repo root when tests run from there)."""
    (first, second) = run_ok(casa_servers, "__import__('os').getcwd()", target_server=SERVERS)
    assert first["ret"] == second["ret"] == os.getcwd()
    return Path(first["ret"])


@pytest.fixture(scope="module")
def ngc5921_ms(casa_servers, servers_cwd, tmp_path_factory) -> str:
    """NGC 5921 as a MeasurementSet, made by a CASA task on server 1."""
    vis = str(tmp_path_factory.mktemp("casa") / "ngc5921.ms")
    with nothing_new_in(servers_cwd):
        run_ok(casa_servers, "casatasks.importuvfits()", 1, dict(fitsfile=NGC5921_FITS, vis=vis))
    assert Path(vis, "table.dat").is_file()
    return vis


@pytest.fixture(scope="module")
def casa_here(session):
    """casatasks imported in this (the client's) process, offline like the servers."""
    prepare_client_process(session.run_dir)
    import casaconfig.config
    import casatasks

    config = casaconfig.config
    offline = (config.measurespath, config.measures_auto_update, config.data_auto_update)
    assert offline == (casadata.datapath, False, False), "CASA was configured in this process before casa_magics"
    return casatasks


# ---------------------------------------------------------------- set-up
def test_servers_import_casa_offline(casa_servers):
    run_ok(casa_servers, "import casaconfig.config", target_server=SERVERS)
    config = "casaconfig.config"
    settings = f"({config}.measurespath, {config}.measures_auto_update, {config}.data_auto_update)"
    responses = run_ok(casa_servers, settings, target_server=SERVERS)
    assert [(r["server"], r["ret"]) for r in responses] == [(s, (casadata.datapath, False, False)) for s in SERVERS]


def test_servers_run_casa_single_threaded(casa_servers):
    responses = run_ok(casa_servers, "__import__('os').environ.get('OMP_NUM_THREADS')", target_server=SERVERS)
    # casa_magics sets 1 unless the user chose a value for the cluster.
    expected = os.environ.get("OMP_NUM_THREADS") or "1"
    assert [r["ret"] for r in responses] == [expected, expected]


# ---------------------------------------------------------------- files
def test_tasks_write_nothing_into_the_cwd_and_log_into_the_run_directory(
    casa_servers, servers_cwd, ngc5921_ms, session
):
    with nothing_new_in(servers_cwd):
        responses = run_ok(casa_servers, "listobs()", SERVERS, dict(vis=ngc5921_ms))
    assert [r["ret"]["nfields"] for r in responses] == [3, 3]
    for server in SERVERS:
        log = session.run_dir / f"casa-server-{server}.log"
        assert log.is_file(), f"no CASA log for server {server} in {session.run_dir}"
        assert "listobs" in log.read_text(errors="replace")


# ---------------------------------------------------------------- errors
def test_a_casa_tool_error_comes_back_with_casas_message(casa_servers, servers_cwd, session, tmp_path):
    missing = str(tmp_path / "missing.ms")
    with nothing_new_in(servers_cwd):
        (response,) = run(casa_servers, f"casatools.ms().open({missing!r})", target_server=2)
    assert (response["server"], response["successful"], response["ret"]) == (2, False, None)
    assert f"RuntimeError: Table {missing} does not exist" in response["traceback"]
    log = (session.run_dir / "casa-server-2.log").read_text(errors="replace")
    assert f"Exception Reported: Table {missing} does not exist" in log


def test_a_casa_task_error_comes_back_with_casas_message(casa_servers, tmp_path):
    missing = str(tmp_path / "missing.ms")
    (response,) = run(casa_servers, "listobs()", parameters=dict(vis=missing))
    assert response["successful"] is False
    message = f"AssertionError: the vis parameter must be a path that exists ('{missing}' does not exist)"
    assert message in response["traceback"]


# ---------------------------------------------------------------- results
def test_a_stateless_task_on_any_server_gives_the_kernels_result(casa_servers, servers_cwd, ngc5921_ms, casa_here):
    # listobs, not visstat: visstat's sums depend on the OpenMP thread count
    # (1 on servers), so they differ from this process's in the last digits.
    with nothing_new_in(servers_cwd):
        (response,) = run_ok(casa_servers, f"listobs(vis={ngc5921_ms!r})")
        here = casa_here.listobs(vis=ngc5921_ms)
    assert response["server"] in SERVERS
    assert response["ret"] == here
    scans = sorted(key for key in here if key.startswith("scan_"))
    assert (here["nfields"], scans) == (3, [f"scan_{i}" for i in range(1, 8)])
