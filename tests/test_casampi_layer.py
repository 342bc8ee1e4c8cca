"""The casampi layer: what ``enable_casampi()`` makes of ``import casampi``, on real servers.

The module-scoped ``casampi`` fixture enables the layer on the shared
two-server cluster and disables it again afterwards, so the other test
modules see the process as it was. Odd cases that need a fresh process
(nothing enabled, casatasks imported first, a real casampi on the path) run
in subprocesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import casa_magics

import casa_magics.cluster.casa_env
from casa_magics import MPICommandClient
from casa_magics.cluster.casa_env import casa_available

from .conftest import WAIT

if not casa_available():
    pytest.skip("needs the casa extra (casatools, casatasks): make install", allow_module_level=True)

pytestmark = [pytest.mark.needs_mpi, pytest.mark.casa]

SERVERS = [1, 2]


@pytest.fixture(scope="module")
def casampi(client):
    """The layer enabled on the shared cluster (servers get casampi's namespace)."""
    assert casa_magics.enable_casampi() is True
    import casampi

    yield casampi
    casa_magics.disable_casampi()


def run_python(code: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (the venv's), offline CASA set up by casa_magics."""
    environment = {**os.environ, "CASA_MAGICS_RUN_DIR": str(tmp_path / "run"), **env}
    environment.pop("CASASITECONFIG", None)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=WAIT * 2,
    )


def last_json(process: subprocess.CompletedProcess):
    assert process.returncode == 0, process.stderr[-3000:]
    return json.loads(process.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------- the modules
def test_casampi_modules_resolve_to_the_shared_client_session_and_map(casampi, client, session):
    from casampi import MPIInterface as interface_module
    from casampi.MPICommandClient import MPICommandClient as Client
    from casampi.MPIEnvironment import MPIEnvironment
    from casampi.MPIInterface import MPIInterface

    import casampi.private.start_mpi  # noqa: F401  (casatasks imports it; it must do nothing)

    assert Client() is client is MPICommandClient()
    assert interface_module.MPIInterface is MPIInterface
    assert (MPIEnvironment.is_mpi_enabled, MPIEnvironment.is_mpi_client) == (True, True)
    assert MPIEnvironment.mpi_server_rank_list() == session.servers.server_ids == SERVERS
    cluster = MPIInterface.getCluster()
    assert cluster is MPIInterface() and cluster._cluster._client is client
    assert cluster._cluster.get_engines() == SERVERS
    assert cluster.isClusterRunning() and client.get_lifecyle_state() == 1


def test_enabling_twice_changes_nothing(casampi):
    modules = {name: sys.modules[name] for name in sys.modules if name.startswith("casampi")}
    assert casa_magics.enable_casampi() is True
    assert {name: sys.modules[name] for name in modules} == modules
    assert casa_magics.casampi_enabled()


def test_without_the_call_nothing_changes(tmp_path):
    process = run_python(
        """
        import json, importlib.util, sys
        import casa_magics
        import casa_magics.cluster.casa_env
        casa_magics.cluster.casa_env.prepare_client_process(".")
        import casatasks.private.task_tclean as tclean
        print(json.dumps([importlib.util.find_spec("casampi") is None, tclean.mpi_available,
                          casa_magics.casampi_enabled()]))
        """,
        tmp_path,
    )
    assert last_json(process) == [True, False, False]


def test_casatasks_imported_first_is_switched_over_and_back(tmp_path):
    process = run_python(
        """
        import json
        import casa_magics
        import casa_magics.cluster.casa_env
        casa_magics.cluster.casa_env.prepare_client_process(".")
        import casatasks
        from casatasks.private import task_tclean
        from casatasks.private.parallel import parallel_task_helper as helper
        from casatasks.private.imagerhelpers import parallel_imager_helper as imager
        before = [task_tclean.mpi_available, helper.mpi_available, imager.mpi_available]
        casa_magics.enable_casampi()
        after = [task_tclean.mpi_available, helper.mpi_available, imager.mpi_available,
                 helper.MPICommandClient is casa_magics.MPICommandClient,
                 task_tclean.MPIEnvironment.is_mpi_enabled,
                 helper.ParallelTaskHelper.isMPIEnabled(), helper.ParallelTaskHelper.isMPIClient()]
        casa_magics.disable_casampi()
        back = [task_tclean.mpi_available, hasattr(helper, "MPICommandClient")]
        print(json.dumps([before, after, back]))
        """,
        tmp_path,
    )
    before, after, back = last_json(process)
    assert before == [False, False, False]
    assert after == [True] * 7
    assert back == [False, False]


def test_a_real_casampi_is_left_in_charge(tmp_path):
    fake = tmp_path / "site" / "casampi"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("REAL = True\n")
    process = run_python(
        """
        import json, warnings
        import casa_magics
        import casa_magics.cluster.casa_env
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            enabled = casa_magics.enable_casampi()
        import casampi
        print(json.dumps([enabled, [str(w.message) for w in caught], getattr(casampi, "REAL", False)]))
        """,
        tmp_path,
        PYTHONPATH=str(tmp_path / "site"),
    )
    enabled, messages, real = last_json(process)
    assert (enabled, real) == (False, True)
    assert messages == [
        f"a real casampi is installed ({fake / '__init__.py'}): "
        "casa_magics leaves it in charge and does not enable its layer"
    ]


# ------------------------------------------------------------- the servers
def test_servers_are_casampi_servers_and_refuse_to_be_clients(casampi, client):
    check = "(__import__('casampi').MPIEnvironment.MPIEnvironment.is_mpi_enabled, __import__('casa_magics').MPIEnvironment.is_mpi_client)"
    responses = client.push_command_request(check, True, SERVERS)
    assert [r["ret"] for r in responses] == [(True, False), (True, False)]
    (refused,) = client.push_command_request("__import__('casa_magics').enable_casampi()", True, 1)
    assert refused["successful"] is False
    assert (
        "RuntimeError: enable_casampi() is for the client: this process is a casa_magics server, "
        "where CASA runs serially" in refused["traceback"]
    )


def test_servers_hold_casampis_namespace_without_losing_pushed_names(casampi, client):
    casa_magics.disable_casampi()
    client.push_command_request("uuid = 'pushed by the user'", True, SERVERS)
    casa_magics.enable_casampi()  # the namespace is provided again on the running servers
    names = "(callable(flagdata), callable(applycal), casalog.version() != '', os.sep, uuid, type(tempfile).__name__)"
    responses = client.push_command_request(names, True, SERVERS)
    assert all(r["successful"] for r in responses), [r["traceback"] for r in responses]
    assert [r["ret"] for r in responses] == [(True, True, True, "/", "pushed by the user", "module")] * 2


def test_a_new_cluster_gets_the_namespace_at_start(casampi, own_cluster):
    fresh = own_cluster(n=2)
    responses = fresh.push_command_request("callable(partition) and casalog is not None", True, SERVERS)
    assert [(r["successful"], r["ret"]) for r in responses] == [(True, True), (True, True)]


def test_requests_run_in_the_clients_directory(casampi, client, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    responses = client.push_command_request("os.getcwd()", True, SERVERS)
    assert [r["ret"] for r in responses] == [str(tmp_path)] * 2
    assert casampi.MPIInterface.MPIInterface().get_engine_store(2) == str(tmp_path)


# ------------------------------------------------------ MPIInterface's _cluster
def test_pgc_runs_on_every_server_blocking_or_not(casampi, client):
    core = casampi.MPIInterface.MPIInterface.getCluster()._cluster
    responses = core.pgc("casa_server_id * 10")
    assert [(r["server"], r["ret"]) for r in responses] == [(1, 10), (2, 20)]
    ids = core.pgc("pgc_flag = True", False)
    assert len(ids) == 2 and all(isinstance(i, int) for i in ids)
    client.get_command_response(ids, True, True)
    by_dict = core.pgc({2: "casa_server_id", 1: "pgc_flag"})
    assert [(r["server"], r["ret"]) for r in by_dict] == [(2, 2), (1, True)]


def test_odo_and_check_job_report_progress_and_raise_on_failure(casampi, client):
    core = casampi.MPIInterface.MPIInterface.getCluster()._cluster
    good = core.odo("1 + 1", 2)
    client.get_command_response(good, True, True)
    assert core.check_job(good, False) is True
    bad = core.odo("1 / 0", 1)
    client.get_command_response(bad, True, True)
    with pytest.raises(Exception, match=r"^Exception executing command in server 1: Traceback") as raised:
        core.check_job(bad, False)
    assert "ZeroDivisionError: division by zero" in str(raised.value)
    waiting = core.odo("import time; time.sleep(1)", 1)
    assert core.check_job(waiting, False) is False
    client.get_command_response(waiting, True, True)


def test_pull_push_and_get_engines(casampi):
    core = casampi.MPIInterface.MPIInterface.getCluster()._cluster
    assert core.get_engines() == SERVERS
    assert core.pull("casa_server_id") == {1: 1, 2: 2}
    assert core.pull("casa_server_id + 1", 2) == {2: 3}
    assert core.pull("name_nobody_defined") == {1: None, 2: None}
    pushed = core.push({"kept_value": [1, 2]})
    assert [(r["mode"], r["successful"]) for r in pushed] == [("push", True), ("push", True)]
    assert core.pull("kept_value") == {1: [1, 2], 2: [1, 2]}


def test_cpp_mpi_worker_start_is_not_sent_and_says_so(casampi, client, capsys):
    core = casampi.MPIInterface.MPIInterface.getCluster()._cluster
    before = set(client.get_command_request_list())
    assert core.pgc("si.initmpi()", False) == []
    assert set(client.get_command_request_list()) == before
    assert capsys.readouterr().err == (
        "casa_magics: cube imaging runs serially in this process: CASA's C++ MPI cannot use these servers "
        "(see 'Which CASA code runs in parallel' in casa_magics' documentation)\n"
    )


def test_cpp_mpi_tasks_are_routed_to_the_gang_while_the_layer_is_on(casampi):
    import casatasks  # noqa: F401  (imported after enable_casampi: routed on import)

    wrapper = sys.modules["casatasks.tclean"]
    assert getattr(wrapper._tclean_t, "__casa_magics_routed__", False)
    original = wrapper._tclean_t.__wrapped__
    task = sys.modules["casatasks.private.task_tclean"]
    assert task.mpi_available is True
    casa_magics.disable_casampi()
    try:
        assert wrapper._tclean_t is original
        assert not getattr(sys.modules["casatasks.deconvolve"]._deconvolve_t, "__casa_magics_routed__", False)
        # casatasks imported while the layer was on sees no casampi again.
        assert task.mpi_available is False
        assert "MPIEnvironment" not in vars(task) and "MPIInterface" not in vars(task)
    finally:
        casa_magics.enable_casampi()
    assert wrapper._tclean_t.__wrapped__ is original
    assert task.mpi_available is True and task.MPIEnvironment is casa_magics.MPIEnvironment


# ---------------------------------------------------------------- log level
def test_set_log_level_sets_the_servers_casa_log_priority(casampi, client, session):
    def note_in_log(marker: str, server: int) -> bool:
        client.push_command_request(f"'{marker}'", True, server)
        return marker in (session.run_dir / f"casa-server-{server}.log").read_text(errors="replace")

    client.set_log_level("DEBUG")
    level = "__import__('casa_magics.server.runner', fromlist=['_'])._command_log_level"
    assert [r["ret"] for r in client.push_command_request(level, True, SERVERS)] == ["DEBUG", "DEBUG"]
    assert not note_in_log("hidden-at-debug-level", 1)
    client.set_log_level("INFO")
    assert note_in_log("shown-at-info-level", 1)
    with pytest.raises(casa_magics.CommandRequestError, match=r"^unknown log level 'CHATTY'$"):
        client.set_log_level("CHATTY")


def test_the_imaging_helpers_job_polls_end_when_the_jobs_do(casampi, client):
    import time

    from casatasks.private.imagerhelpers import parallel_imager_helper as helper

    from casa_magics.casampi.mpi_interface import JobClock

    casampi.MPIInterface.MPIInterface.getCluster()
    assert isinstance(helper.time, JobClock) and helper.time.monotonic is time.monotonic
    ids = client.push_command_request("import time; time.sleep(0.5)", False, 1)
    helper.time.sleep(WAIT)  # returns once the request is answered, well before WAIT
    assert [r["status"] for r in client.get_command_response(ids)] == ["response received"]
    casa_magics.disable_casampi()
    assert helper.time is time
    casa_magics.enable_casampi()
