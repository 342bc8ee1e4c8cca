"""A casampi client written the way real ones (e.g. CASA's pipeline) are written.

The client builds :class:`Job` objects, pushes each one as
``casampi_job_client.run(job)`` with ``parameters={'job': job}`` to any free
server, and collects the responses with ``get_command_response``. Each server
runs :func:`run`: it learns its rank, role and host from
``casampi.MPIEnvironment``, runs ``visstat`` and a small ``tclean`` on its
selection, notes all that on the job and returns ``(result, None)``. The client
then reads the server's copy of the job from ``response['parameters']['job']``
and merges what the server noted into its own copy.

Nothing here depends on casa_magics: the same code runs against CASA's real
casampi under ``mpirun`` (``benchmarks/conformance_casampi.py``) and against
casa_magics' servers (``tests/test_casampi_clients.py``). This module must be
importable on the servers (they get it on ``PYTHONPATH``); :func:`drive` imports
it there with a cluster-wide push, as pipelines import their own modules.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

#: Name of this module on the servers (the commands name it).
MODULE = "casampi_job_client"

#: casampi's ``MPIEnvironment`` attributes a script may read to learn who it is.
ROLE_ATTRIBUTES = (
    "is_mpi_enabled",
    "is_mpi_client",
    "mpi_processor_rank",
    "mpi_world_size",
    "mpi_client_rank",
    "mpi_execution_role",
    "hostname",
    "hostname_wo_domain",
    "processor_origin",
    "log_to_console",
)

#: What every job images: small and quick (64x64, a few channels, 20 iterations).
TCLEAN = dict(specmode="mfs", imsize=64, cell="15arcsec", niter=20, datacolumn="data", parallel=False)

#: A CASA log line: time, priority, origin (``task::::casa`` and, on a casampi server,
#: ``::MPIServer-<rank>``), message.
_LOG_LINE = re.compile(r"^[^\t\n]*\t[^\t\n]*\t(?P<origin>[^\t\n]*)\t(?P<message>[^\n]*)$", re.M)
#: A task's first and last message.
_TASK_LINE = re.compile(r"(?P<edge>Begin|End) Task: (?P<task>\w+)")


class Job:
    """One unit of work: a visstat and a tclean on one field and a few channels.

    Picklable (plain attributes only). The client fills the selection; the
    server fills the notes (``rank``, ``host``, ``is_mpi_client``,
    ``execution_role``, ``pid``, ``cwd``, ``results``, ``task_log``: the
    Begin/End Task lines of its CASA log, ``log_tag``: the processor tag
    CASA puts on this process's log lines).
    """

    def __init__(self, number: int, vis: str, field: str, spw: str) -> None:
        self.number = number
        self.vis = vis
        self.field = field
        self.spw = spw
        self.imagename = f"job{number:02d}"
        # Noted where the job runs.
        self.rank: int | None = None
        self.host: str | None = None
        self.is_mpi_client: bool | None = None
        self.execution_role: str | None = None
        self.pid: int | None = None
        self.cwd: str | None = None
        self.results: dict[str, Any] = {}
        self.task_log: list[str] = []
        self.log_tag: str | None = None

    #: The attributes a server notes (and the client merges back).
    NOTES = ("rank", "host", "is_mpi_client", "execution_role", "pid", "cwd", "results", "task_log", "log_tag")

    def merge(self, noted: "Job") -> None:
        """Take what the server noted on its copy of this job."""
        if noted.number != self.number:
            raise ValueError(f"job {noted.number} is not job {self.number}")
        for name in self.NOTES:
            setattr(self, name, getattr(noted, name))

    def summary(self) -> dict[str, Any]:
        """Selection and notes as plain values (for JSON and comparisons)."""
        return plain({name: value for name, value in vars(self).items()})

    def __repr__(self) -> str:
        return f"Job({self.number}, field={self.field!r}, spw={self.spw!r}, rank={self.rank})"


def make_jobs(vis: str, count: int = 12) -> list[Job]:
    """``count`` jobs on the MS ``vis``: the three NGC 5921 fields, four channels each, moving along the band."""
    return [Job(i, vis, field=str(i % 3), spw=f"0:{10 + 4 * (i // 3)}~{13 + 4 * (i // 3)}") for i in range(count)]


# ------------------------------------------------------------------ on a server
def perform(job: Job) -> dict[str, Any]:
    """Run the job's CASA tasks here, in the current directory; note and return their results (no timings)."""
    import casatasks
    from casatools import image

    log_start = _log_size()
    stats = casatasks.visstat(vis=job.vis, field=job.field, spw=job.spw, axis="amp", datacolumn="data")
    summary = casatasks.tclean(vis=job.vis, imagename=job.imagename, field=job.field, spw=job.spw, **TCLEAN)
    ia = image()
    ia.open(job.imagename + ".image")
    try:
        peak = float(ia.statistics(verbose=False)["max"][0])
    finally:
        ia.close()
    job.results = {"visstat": plain(stats), "tclean": untimed(summary), "image_max": peak}
    _note_task_log(job, log_start)
    return job.results


def run(job: Job) -> tuple[dict[str, Any], None]:
    """The job's command on a server: note who runs it, run its tasks, return ``(result, None)``."""
    from casampi.MPIEnvironment import MPIEnvironment

    job.rank = MPIEnvironment.mpi_processor_rank
    job.host = MPIEnvironment.hostname
    job.is_mpi_client = MPIEnvironment.is_mpi_client
    job.execution_role = MPIEnvironment.mpi_execution_role
    job.pid = os.getpid()
    job.cwd = os.getcwd()
    return perform(job), None


def environment_report(environment: Any = None) -> dict[str, Any]:
    """casampi's ``MPIEnvironment`` (or ``environment``) as this process sees it, with each value's type name.

    Attributes it lacks are left out.
    """
    if environment is None:
        from casampi.MPIEnvironment import MPIEnvironment as environment
    report = {name: getattr(environment, name) for name in ROLE_ATTRIBUTES if hasattr(environment, name)}
    report["mpi_server_rank_list"] = environment.mpi_server_rank_list()
    report["types"] = {name: type(value).__name__ for name, value in report.items()}
    return report


def _log_size() -> int:
    from casatasks import casalog

    try:
        return os.path.getsize(casalog.logfile())
    except OSError:
        return 0


def _log_tag(origin: str) -> str:
    """The processor tag at the end of a log line's origin column: ``'MPIServer-<rank>'`` or ``''``."""
    found = re.search(r"MPIServer-\d+$", origin)
    return found.group(0) if found else ""


def _note_task_log(job: Job, offset: int) -> None:
    """Note this process's log tag and its task lines (``'Begin Task: visstat'``, ...) after ``offset``.

    casampi's servers share one log file and CASA tags each server's lines
    ``MPIServer-<rank>``; this process's tag is read from a line it posts
    itself, and only lines with that tag are noted.
    """
    from casatasks import casalog

    marker = f"casampi_job_client: job {job.number} in process {os.getpid()}"
    casalog.post(marker, "INFO")
    try:
        with open(casalog.logfile(), errors="replace") as log:
            log.seek(offset)
            lines = list(_LOG_LINE.finditer(log.read()))
    except OSError:
        lines = []
    tags = [_log_tag(m["origin"]) for m in lines if m["message"].endswith(marker)]
    job.log_tag = tags[0] if tags else None
    job.task_log = [
        f"{t['edge']} Task: {t['task']}"
        for m in lines
        if _log_tag(m["origin"]) == job.log_tag and (t := _TASK_LINE.search(m["message"]))
    ]


# ------------------------------------------------------------------ on the client
def drive(client: Any, servers: list[int], workdir: str, jobs: list[Job]) -> dict[str, Any]:
    """Run ``jobs`` on the servers through a casampi ``MPICommandClient``.

    Cluster-wide first (``target_server=servers``): import this module, change
    to ``workdir``, report each server's ``MPIEnvironment``. Then every job is
    pushed to any free server and collected one by one, as pipelines do; the
    server's copy of each job is merged into ``jobs``.

    Returns plain values: ``setup`` (the cluster-wide responses' server,
    success and ``ret``), ``environment`` ({server: report}), ``responses``
    (one per job, in job order: id, server, success, traceback, ``ret``) and
    ``jobs`` (:meth:`Job.summary` of each).
    """
    setup = [
        client.push_command_request(f"import os, {MODULE}", block=True, target_server=servers),
        client.push_command_request(f"os.chdir({workdir!r})", block=True, target_server=servers),
    ]
    report = client.push_command_request(f"{MODULE}.environment_report()", block=True, target_server=servers)
    pushed = []
    for job in jobs:
        (request_id,) = client.push_command_request(
            f"{MODULE}.run(job)", block=False, target_server=None, parameters={"job": job}
        )
        pushed.append((request_id, job))
    responses = []
    for request_id, job in pushed:
        (response,) = client.get_command_response([request_id], block=True, verbose=False)
        if response["successful"]:
            job.merge(response["parameters"]["job"])
        responses.append(_brief(response))
    return plain(
        {
            "setup": [[_brief(r) for r in step] for step in setup],
            "environment": {r["server"]: r["ret"] for r in report},
            "environment_ok": [r["successful"] for r in report],
            "responses": responses,
            "jobs": [job.summary() for job in jobs],
        }
    )


def _brief(response: dict[str, Any]) -> dict[str, Any]:
    return {key: response.get(key) for key in ("id", "server", "successful", "traceback", "ret")}


# ------------------------------------------------------------------ checks
def expected_environment(rank: int, world_size: int, hostname: str) -> dict[str, Any]:
    """casampi's ``MPIEnvironment`` values for ``rank`` (0: the client) in an MPI world of ``world_size``."""
    short = hostname.split(".")[0]
    client = rank == 0
    return {
        "is_mpi_enabled": True,
        "is_mpi_client": client,
        "mpi_processor_rank": rank,
        "mpi_world_size": world_size,
        "mpi_client_rank": 0,
        "mpi_execution_role": "MPIClient" if client else "",
        "hostname": hostname,
        "hostname_wo_domain": short,
        "processor_origin": f"@{short}:MPIClient" if client else f"@{short}",
        "log_to_console": client,
        "mpi_server_rank_list": list(range(1, world_size)),
    }


def expected_types() -> dict[str, str]:
    """The type names of casampi's ``MPIEnvironment`` attributes."""
    names = dict.fromkeys(("is_mpi_enabled", "is_mpi_client", "log_to_console"), "bool")
    names.update(dict.fromkeys(("mpi_processor_rank", "mpi_world_size", "mpi_client_rank"), "int"))
    names.update(dict.fromkeys(("mpi_execution_role", "hostname", "hostname_wo_domain", "processor_origin"), "str"))
    names["mpi_server_rank_list"] = "list"
    return names


def differences(mine: Any, reference: Any, where: str = "", rel: float = 1e-5) -> list[str]:
    """Where two plain values differ (floats within ``rel`` relative tolerance count as equal)."""
    if isinstance(mine, dict) and isinstance(reference, dict):
        found = [f"{where}: key {k!r} only in one" for k in sorted(set(mine) ^ set(reference), key=str)]
        for key in sorted(set(mine) & set(reference), key=str):
            found += differences(mine[key], reference[key], f"{where}/{key}", rel)
        return found
    if isinstance(mine, list) and isinstance(reference, list):
        if len(mine) != len(reference):
            return [f"{where}: {len(mine)} items, not {len(reference)}"]
        return [d for i, (a, b) in enumerate(zip(mine, reference)) for d in differences(a, b, f"{where}[{i}]", rel)]
    if isinstance(mine, float) or isinstance(reference, float):
        if isinstance(mine, (int, float)) and isinstance(reference, (int, float)):
            same = math.isclose(mine, reference, rel_tol=rel, abs_tol=1e-12) or (math.isnan(mine) and math.isnan(reference))
            return [] if same else [f"{where}: {mine!r} != {reference!r}"]
    return [] if mine == reference else [f"{where}: {mine!r} != {reference!r}"]


def plain(value: Any) -> Any:
    """Values as JSON holds them: numpy arrays and scalars become lists and numbers, dict keys strings."""
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return plain(value.tolist())
    return value


def untimed(result: Any) -> Any:
    """A task's return value without its timings (which differ from run to run)."""
    if not isinstance(result, dict):
        return plain(result)
    return {k: v for k, v in plain(result).items() if "time" not in k}
