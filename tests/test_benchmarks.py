"""The benchmarks measure what users get: their probes change no result and no timing path.

``bench_casa_tasks.py`` counts the sleeps of casatasks' parallel imager helper
during ``tclean(parallel=True)``. Its probe must leave casa_magics' ``JobClock``
(installed by ``MPIInterface.getCluster()``) doing the sleeping, or the
benchmark times one-second sleeps that users never have. Checked here on the
shared two-server cluster with casatasks' own helper, as tclean drives it.
Its CPU readings must send the servers nothing (a request would change the
dispatcher's batching), and bench_startup's floor must be launched as the
servers are.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

import casa_magics
from casa_magics.cluster.casa_env import casa_available
from casa_magics.cluster.launcher import find_mpiexec, is_hydra, open_mpi_environment

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

if not casa_available():
    pytest.skip("needs the casa extra (casatools, casatasks): make install", allow_module_level=True)


@pytest.fixture(scope="module")
def bench():
    """``benchmarks/bench_casa_tasks.py`` as a module (it imports only the standard library)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_casa_tasks

        yield bench_casa_tasks
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def casampi(client):
    """casa_magics' casampi layer on the shared cluster, disabled again afterwards."""
    assert casa_magics.enable_casampi() is True
    import casampi

    yield casampi
    casa_magics.disable_casampi()


@pytest.mark.needs_mpi
@pytest.mark.casa
def test_the_tclean_probe_leaves_the_job_clock_doing_the_sleeping(bench, casampi, client):
    from casatasks.private.imagerhelpers import parallel_imager_helper as helper

    from casa_magics.casampi.mpi_interface import JobClock

    original = helper.PyParallelImagerHelper.checkJobs
    probe = bench.CheckJobsProbe(client).install()  # where the benchmark installs it: before tclean runs
    try:
        imager = helper.PyParallelImagerHelper()  # as tclean(parallel=True) does: getCluster() on the way
        clock = helper.time
        assert isinstance(clock, JobClock), f"the product's clock is not in place: {clock!r}"

        # A job of 0.2 s: the JobClock's sleep ends when it is answered, time.sleep(1) would not.
        jobs = [imager.CL.odo("import time; time.sleep(0.2)", server) for server in imager.getNodeList()]
        assert imager.checkJobs(jobs) is None  # casatasks' own result
        # The JobClock's sleeps end on answers: every job is answered when checkJobs returns.
        answered = client.get_command_response_list()
        assert all(request in answered for ids in jobs for request in ids)
        assert helper.time is clock  # the same object put back, not a copy
        imager.checkJobs()  # a call without a job list sends its own (casatasks' takedownCluster)
        assert helper.time is clock

        assert probe.clocks == {"JobClock": 2}
        assert probe.sleeps >= 2
        assert [len(call["ids"]) for call in probe.calls] == [2, 2]
        idle = bench.idle_after_jobs_done(probe.calls, client.get_command_response_list())
        assert 0 <= idle < bench.GOAL_TCLEAN_IDLE_S
    finally:
        probe.remove()
        client.set_log_level("INFO")  # the helper set 'DEBUG'
    assert helper.PyParallelImagerHelper.checkJobs is original


@pytest.mark.needs_mpi
def test_the_cpu_readings_send_the_servers_nothing(bench, client, session):
    """Requests would feed the dispatcher's duration estimate, which sizes batches: none are sent."""
    record: dict = {}
    pids = [info.pid for info in session.servers]
    hooks = bench._cpu_hooks(lambda: bench._pids_cpu(pids), record)
    sent = len(client.get_command_request_list())
    hooks["before"]("work")
    client.push_command_request("sum(range(10**7))", True, [1, 2])
    hooks["after"]("work")
    assert len(client.get_command_request_list()) == sent + 2
    assert record["servers_cpu"]["work"] > 0.1


@pytest.mark.needs_mpi
@pytest.mark.casa
def test_the_probe_counts_without_the_product_too(bench, client, monkeypatch):
    """Where nothing is installed (the reference's own casampi, a serial process), it passes sleeps to time."""
    from casatasks.private.imagerhelpers import parallel_imager_helper as helper

    monkeypatch.setattr(helper, "time", time)
    assert bench._clock_name(helper.time) == "time"

    class Recording:
        """A clock that notes the sleeps handed to it (and is the time module otherwise)."""

        def __init__(self):
            self.asked = []

        def sleep(self, seconds):
            self.asked.append(seconds)

        def __getattr__(self, name):
            return getattr(time, name)

    inner = Recording()
    probe = bench.CheckJobsProbe(client)
    counting = bench.CountingClock(inner, probe)
    counting.sleep(0.05)
    assert inner.asked == [0.05]  # passed on, not replaced
    assert (probe.sleeps, counting.monotonic) == (1, time.monotonic)


def test_the_startup_floor_is_launched_as_the_servers_are(monkeypatch):
    """bench_startup's plain-ipyparallel floor gets the servers' launcher, arguments and environment."""
    monkeypatch.setenv("PATH", os.environ["PATH"])  # the script puts the venv's bin first when imported
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_startup
    finally:
        sys.path.remove(str(BENCHMARKS))
    floor = bench_startup.floor_engine_settings()
    mpiexec = find_mpiexec("mpiexec")
    assert floor["mpi_cmd"] == [mpiexec]
    if is_hydra(mpiexec):
        assert floor["mpi_args"] == ["-disable-auto-cleanup"] and floor["environment"] == {}
    else:
        assert {"--oversubscribe", "--enable-recovery"} <= set(floor["mpi_args"])
        assert ("--allow-run-as-root" in floor["mpi_args"]) == (os.geteuid() == 0)
        assert floor["environment"] == open_mpi_environment()


def test_the_time_no_server_was_busy_counts_overlaps_once(bench):
    assert bench.union_length([(0, 1), (0.5, 2), (3, 4), (3.5, 3.6)]) == 3.0
    assert bench.union_length([]) == 0.0
    assert bench.limit(10.0, 1.0, 12.0, 2) == pytest.approx(10 / 7)


def test_the_machines_own_spread_is_read_per_task_across_rounds(bench):
    others = {task: 2.0 for task in bench.DATA_PARALLEL if task != "split"}
    rounds = [{"times": {**others, "split": 1.0}, "checks": {}, "machine": {"split": 0.10, "tclean": 0.10}},
              {"times": {**others, "split": 1.5}, "checks": {}, "machine": {"split": 0.12, "tclean": 0.10}},
              {"times": {**others, "split": 1.2}, "checks": {}, "machine": {"split": 0.11, "tclean": 0.15}}]
    side = bench._best(rounds)
    assert side["times"]["split"] == 1.0
    assert side["spread"]["split"] == pytest.approx(0.5)
    assert side["machine_rounds"] == [r["machine"] for r in rounds]
    assert bench.machine_spreads(side) == pytest.approx({"split": 0.2, "tclean": 0.5})
    assert bench.machine_spreads({"machine_rounds": []}) == {}


def test_the_machine_is_read_before_each_task_outside_its_timing(bench, monkeypatch):
    calls = []
    monkeypatch.setattr(bench, "machine_seconds", lambda: calls.append("machine") or 0.25)
    record = {}
    assert bench._timed(record, "nothing", lambda **kwargs: calls.append("task") or kwargs, a=1) == {"a": 1}
    assert calls == ["machine", "task"]
    assert record["machine"] == {"nothing": 0.25}
    assert set(record) == {"machine", "times", "cpu"}
