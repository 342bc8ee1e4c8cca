"""Measure the REAL reference, CASA's ``casampi``, on the workloads of ``bench_dispatch.py``.

Two ways to use this file:

* as a script, rank 0 of an OpenMPI job with 1 client + N servers::

      mpirun --oversubscribe -n 3 /tmp/refvenv/bin/python benchmarks/reference_casampi.py --n 400

  (as root, see "by hand" below). It prints ONE JSON line on stdout with ``round_trip_ms``,
  ``throughput_per_s``, ``makespan_overhead_ms``, ``n_throughput`` (and a few
  extra keys) and exits after ``stop_services()``;
* from Python: ``run_reference(python, mpirun, n)`` launches the script under
  mpirun in a subprocess, with the environment it needs and a finite timeout,
  and returns that JSON as a dict (``bench_dispatch.py --reference`` calls it).

Workloads (the same as ``bench_dispatch.py``, 2 servers by default):

* round trip: blocking ``"1+1"`` on server 1, median of ``--repeat`` (default 20; it barely varies);
* throughput: ``n`` non-blocking ``"1+1"`` with ``target_server=None``, then one
  blocking ``get_command_response`` of all of them; requests per second;
* makespan overhead: ``"import time; time.sleep(1)"`` on every server in one
  blocking push, minus 1 s.

The reference is NOT part of ``make install``: it needs casampi, which only runs
under OpenMPI's launcher (``casampi.MPIEnvironment`` enables MPI only when
``OMPI_COMM_WORLD_RANK`` is set, and needs ``MPI_THREAD_MULTIPLE``), and an
mpi4py built against that OpenMPI. It lives in its own venv, outside the repo
(the project's venv has the MPICH wheel, whose ``mpirun`` comes first on its
PATH). Set-up, as root on Debian 12, as done and timed here (about 12 minutes,
nearly 10 of them compiling mpi4py on 2 cores)::

    apt-get update
    apt-get install -y openmpi-bin libopenmpi-dev        # OpenMPI 4.1.4, /usr/bin/mpirun
    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install --upgrade pip
    MPICC=/usr/bin/mpicc /tmp/refvenv/bin/pip install --no-binary mpi4py --no-cache-dir "mpi4py>=4.0"
    /tmp/refvenv/bin/pip install casatools==6.7.0.31 casatasks==6.7.0.31 casaconfig casadata \
        casampi==0.6.0 six scipy matplotlib

(mpi4py is compiled against Debian's OpenMPI; its binary wheel was not tried.
casampi's servers import all of casatasks, which needs six, scipy and
matplotlib although casatasks does not declare them.) Then::

    python benchmarks/bench_dispatch.py --reference          # or, alone:
    python benchmarks/reference_casampi.py --python /tmp/refvenv/bin/python --n 400

or by hand (as root)::

    OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
        /usr/bin/mpirun --oversubscribe -n 3 /tmp/refvenv/bin/python benchmarks/reference_casampi.py --n 400

Measured here (2 cores, 2 servers, n=400, OpenMPI 4.1.4, casampi 0.6.0): round
trip 501 ms, 5.5 requests/s, makespan overhead 505 ms, about 2 minutes in all.
The servers log a SEVERE "Exception deploying virtual frame buffer" (no Xvfb
installed); it is harmless for these workloads.

``run_reference`` finds the venv's python from ``$REFERENCE_CASAMPI_PYTHON``
(default ``/tmp/refvenv/bin/python``) and OpenMPI's mpirun from
``$REFERENCE_MPIRUN`` or else the first ``mpirun``/``mpirun.openmpi`` whose
``--version`` says "Open MPI". It sets, for the job: ``OMPI_ALLOW_RUN_AS_ROOT``
and ``..._CONFIRM`` (needed as root), ``--oversubscribe`` (3 processes, 2
cores), and ``CASASITECONFIG`` pointing at a site config that runs CASA
offline (``measurespath`` = ``casadata.datapath``, no auto updates); CASA's log
files go into a temporary directory, the job's working directory, removed on
success and named in the error otherwise.
"""

from __future__ import annotations

import json
import os

# Runs in every rank before anything imports casatools: CASA offline.
_SITE_CONFIG = """\
# CASA site config written by benchmarks/reference_casampi.py: offline CASA.
measurespath = {measurespath!r}
measures_auto_update = False
data_auto_update = False
log2term = False
nologfile = False
"""

#: Keys of the JSON line that the script prints.
RESULT_KEYS = ("round_trip_ms", "throughput_per_s", "makespan_overhead_ms", "n_throughput")

DEFAULT_PYTHON = "/tmp/refvenv/bin/python"
DEFAULT_N = 400
DEFAULT_REPEAT = 20
DEFAULT_SERVERS = 2

SETUP_HINT = "see the set-up at the top of benchmarks/reference_casampi.py"


def _write_site_config(directory: str) -> str:
    """Write the offline site config into ``directory`` and return its path."""
    import casadata  # small: defines datapath only

    path = os.path.join(directory, "casasiteconfig.py")
    with open(path, "w") as handle:
        handle.write(_SITE_CONFIG.format(measurespath=str(casadata.datapath)))
    return path


# --------------------------------------------------------------------------------------
# The MPI program (rank 0 is the client; ranks 1..N become servers on the import below).
# --------------------------------------------------------------------------------------


def _mpi_main(argv: list[str] | None = None) -> int:
    import argparse
    import statistics
    import sys
    import tempfile
    import time

    parser = argparse.ArgumentParser(description="casampi reference benchmark (rank 0 under mpirun)")
    parser.add_argument("--n", type=int, default=DEFAULT_N, help=f"requests in the throughput burst, default {DEFAULT_N}")
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT, help=f"round trips to time, default {DEFAULT_REPEAT}")
    parser.add_argument("--warmup", type=int, default=3, help="untimed round trips first, default 3")
    args = parser.parse_args(argv)
    # casaconfig parses sys.argv itself when casatools is imported (argparse with
    # abbreviations: "--n" would be taken as an ambiguous "--noconfig"/"--nositeconfig").
    sys.argv = sys.argv[:1]

    if "CASASITECONFIG" not in os.environ:
        os.environ["CASASITECONFIG"] = _write_site_config(tempfile.mkdtemp(prefix="refcasa-"))

    # What casashell does under mpicasa: ranks > 0 enter the server loop here and
    # leave with os._exit(0) when the client stops them; rank 0 goes on.
    import casampi.private.start_mpi  # noqa: F401
    from casampi.MPICommandClient import MPICommandClient
    from casampi.MPIEnvironment import MPIEnvironment

    if not MPIEnvironment.is_mpi_enabled:
        print(f"casampi: MPI is not enabled: {getattr(MPIEnvironment, 'mpi_error_msg', '?')}", file=sys.stderr)
        return 2
    servers = MPIEnvironment.mpi_server_rank_list()

    started = time.perf_counter()
    client = MPICommandClient()
    client.set_log_mode("redirect")
    client.start_services()
    start_services_s = time.perf_counter() - started
    try:
        def round_trip() -> float:
            t0 = time.perf_counter()
            response = client.push_command_request("1+1", block=True, target_server=servers[0])
            elapsed = time.perf_counter() - t0
            assert response[0]["successful"] and response[0]["ret"] == 2, response
            return elapsed

        for _ in range(args.warmup):
            round_trip()
        round_trip_ms = statistics.median(round_trip() for _ in range(args.repeat)) * 1000

        t0 = time.perf_counter()
        ids = [client.push_command_request("1+1", block=False, target_server=None)[0] for _ in range(args.n)]
        responses = client.get_command_response(ids, block=True)
        elapsed = time.perf_counter() - t0
        assert len(responses) == args.n and all(r["ret"] == 2 for r in responses), responses[:3]
        throughput_per_s = args.n / elapsed
        served_by = sorted({r["server"] for r in responses})

        t0 = time.perf_counter()
        responses = client.push_command_request("import time; time.sleep(1)", block=True, target_server=servers)
        makespan_overhead_ms = (time.perf_counter() - t0 - 1) * 1000
        assert all(r["successful"] for r in responses), responses
    finally:
        client.stop_services()

    result = {
        "round_trip_ms": round_trip_ms,
        "throughput_per_s": throughput_per_s,
        "makespan_overhead_ms": makespan_overhead_ms,
        "n_throughput": args.n,
        "repeat": args.repeat,
        "servers": servers,
        "throughput_served_by": served_by,
        "start_services_s": start_services_s,
        "mpi": MPIEnvironment.mpi_vendor_str,
    }
    print(json.dumps(result), flush=True)
    return 0


# --------------------------------------------------------------------------------------
# The launcher, used by bench_dispatch.py --reference.
# --------------------------------------------------------------------------------------


def _is_openmpi(mpirun: str) -> bool:
    import subprocess

    try:
        out = subprocess.run([mpirun, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return "Open MPI" in out.stdout + out.stderr


def find_openmpi_mpirun() -> str | None:
    """Return the path of OpenMPI's mpirun, or None (MPICH's ``mpirun`` does not count)."""
    import shutil

    candidates = [os.environ.get("REFERENCE_MPIRUN")]
    candidates += [shutil.which(name) for name in ("mpirun.openmpi", "mpirun", "orterun")]
    candidates += ["/usr/bin/mpirun.openmpi", "/usr/bin/mpirun"]
    for candidate in candidates:
        if candidate and os.path.exists(candidate) and _is_openmpi(candidate):
            return candidate
    return None


def run_reference(
    python: str | None = None,
    mpirun: list[str] | None = None,
    n: int = DEFAULT_N,
    *,
    repeat: int = DEFAULT_REPEAT,
    servers: int = DEFAULT_SERVERS,
    timeout: float | None = None,
) -> dict:
    """Run the casampi reference under OpenMPI's mpirun and return its JSON result.

    Parameters
    ----------
    python
        Python of the reference venv (casampi + an mpi4py built on OpenMPI).
        Default ``$REFERENCE_CASAMPI_PYTHON`` or ``/tmp/refvenv/bin/python``.
    mpirun
        The launcher command, without ``-n``; default
        ``[<OpenMPI mpirun>, "--oversubscribe"]``.
    n
        Requests in the throughput burst.
    repeat, servers, timeout
        Round trips to time; casampi servers (the job has ``servers + 1``
        processes); seconds before the job is killed (default: generous for
        ~6 requests/s, from ``n`` and ``repeat``).

    Returns
    -------
    dict
        At least ``round_trip_ms``, ``throughput_per_s``,
        ``makespan_overhead_ms``, ``n_throughput``.

    Raises
    ------
    RuntimeError
        One line, when casampi or OpenMPI's mpirun is missing, or the job
        fails or times out.
    """
    import shutil
    import subprocess
    import tempfile

    python = python or os.environ.get("REFERENCE_CASAMPI_PYTHON", DEFAULT_PYTHON)
    if not (os.path.isfile(python) and os.access(python, os.X_OK)):
        raise RuntimeError(f"reference casampi: no python at {python} ({SETUP_HINT})")
    probe = subprocess.run(
        [python, "-c", "import importlib.util as u; import casadata; "
                       "print(all(u.find_spec(m) for m in ('casampi', 'mpi4py', 'casatools')))"],
        capture_output=True, text=True, timeout=120,
    )
    if probe.returncode != 0 or probe.stdout.strip() != "True":
        raise RuntimeError(f"reference casampi: casampi, mpi4py, casatools or casadata not installed for {python} ({SETUP_HINT})")
    if mpirun is None:
        found = find_openmpi_mpirun()
        if found is None:
            raise RuntimeError(f"reference casampi: OpenMPI's mpirun not found (apt-get install openmpi-bin; {SETUP_HINT})")
        mpirun = [found, "--oversubscribe"]
    elif not _is_openmpi(mpirun[0]):
        raise RuntimeError(f"reference casampi: {mpirun[0]} is not OpenMPI's mpirun; casampi needs OpenMPI ({SETUP_HINT})")
    if timeout is None:
        timeout = 180 + n / 2 + repeat * 2  # ~6 requests/s and ~0.5 s round trips, doubled

    workdir = tempfile.mkdtemp(prefix="reference-casampi-")  # CASA's log files land here
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("OMPI_", "PMI_", "PMIX_", "HYDRA_", "MPIR_", "I_MPI_"))}
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = os.path.dirname(os.path.abspath(mpirun[0])) + os.pathsep + env.get("PATH", "")
    env["CASASITECONFIG"] = _write_site_config_with(python, workdir)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
        env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    command = [*mpirun, "-n", str(servers + 1), python, os.path.abspath(__file__),
               "--n", str(n), "--repeat", str(repeat)]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=workdir, env=env,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"reference casampi: timed out after {timeout:.0f} s: {' '.join(command)} (logs in {workdir})") from None
    for line in reversed(proc.stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                result = json.loads(line)
            except ValueError:
                continue
            if all(key in result for key in RESULT_KEYS):
                result["exit_code"] = proc.returncode
                shutil.rmtree(workdir, ignore_errors=True)  # kept only when the job failed
                return result
    lines = [line.strip() for line in (proc.stderr + "\n" + proc.stdout).splitlines()]
    lines = [line for line in lines if line and not set(line) <= set("-=*")]
    errors = [line for line in lines if "Error" in line or "error" in line]
    last = errors[0] if errors else (lines or ["no output"])[-1]
    raise RuntimeError(f"reference casampi: mpirun exited {proc.returncode} without a result: {last} (logs in {workdir})")


def _write_site_config_with(python: str, directory: str) -> str:
    """Write the offline site config, with the reference venv's casadata path."""
    import subprocess

    out = subprocess.run([python, "-c", "import casadata; print(casadata.datapath)"],
                         capture_output=True, text=True, timeout=120, check=True)
    path = os.path.join(directory, "casasiteconfig.py")
    with open(path, "w") as handle:
        handle.write(_SITE_CONFIG.format(measurespath=out.stdout.strip()))
    return path


def _launcher_main(argv: list[str]) -> int:
    import argparse
    import time

    parser = argparse.ArgumentParser(description="launch the casampi reference under OpenMPI's mpirun")
    parser.add_argument("--python", default=None, help=f"reference venv's python (default {DEFAULT_PYTHON})")
    parser.add_argument("--n", type=int, default=DEFAULT_N)
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT)
    parser.add_argument("--servers", type=int, default=DEFAULT_SERVERS)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    result = run_reference(args.python, None, args.n, repeat=args.repeat, servers=args.servers)
    result["wall_s"] = time.perf_counter() - t0
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    import sys

    # Under mpirun (OpenMPI sets OMPI_COMM_WORLD_RANK): the MPI program;
    # otherwise: launch it (``--python ...``).
    if "OMPI_COMM_WORLD_RANK" in os.environ:
        sys.exit(_mpi_main(sys.argv[1:]))
    sys.exit(_launcher_main(sys.argv[1:]))
