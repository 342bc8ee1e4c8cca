"""Talking to Slurm: what to submit, what its answers mean, and the few commands that ask.

The decisions are pure functions, tested without a Slurm: checking the
options (:func:`check_time_limit`, :func:`check_name`), the ``sbatch`` command
line (:func:`sbatch_command`), the batch script (:func:`batch_script`), and
reading ``scontrol show job`` (:func:`parse_job`) and ``sbatch --parsable``
(:func:`parse_job_id`). The rest are thin wrappers that run ``sbatch``,
``scontrol`` and ``scancel`` with a finite timeout, and :class:`SlurmJob`,
which follows one submitted job.

Runs in the client.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Mapping

from casa_magics.core.errors import ClusterError

__all__ = [
    "JobInfo",
    "JobOptions",
    "SlurmJob",
    "Allocation",
    "current_allocation",
    "check_time_limit",
    "check_name",
    "sbatch_command",
    "batch_script",
    "parse_job",
    "parse_job_id",
    "ENDED_STATES",
    "COMMAND_TIMEOUT",
    "POLL_INTERVAL",
    "WATCH_INTERVAL",
]

#: Seconds any one Slurm command may take before it counts as failed.
COMMAND_TIMEOUT = 30.0
#: Seconds between two looks at a job's state.
POLL_INTERVAL = 1.0
#: Seconds between the watchdog's own looks at a running job (a server seen lost asks at once).
WATCH_INTERVAL = 5.0
#: Job states after which a job's processes are gone or going.
ENDED_STATES = frozenset(
    {
        "BOOT_FAIL", "CANCELLED", "COMPLETED", "COMPLETING", "DEADLINE", "FAILED",
        "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "REVOKED", "SPECIAL_EXIT", "TIMEOUT",
    }
)
#: What ``squeue``/``scontrol`` show for "nothing".
_NOTHING = {"", "(null)", "None", "n/a", "N/A"}

_TIME_LIMIT = re.compile(r"^(\d+|\d+:\d+|\d+:\d+:\d+|\d+-\d+|\d+-\d+:\d+|\d+-\d+:\d+:\d+|infinite|unlimited)$", re.I)


# ---------------------------------------------------------------- checks
def check_time_limit(value: object) -> str:
    """Refuse a time limit Slurm would not take; return it as text.

    Slurm's forms: ``minutes``, ``minutes:seconds``, ``hours:minutes:seconds``,
    ``days-hours``, ``days-hours:minutes``, ``days-hours:minutes:seconds``.

    Examples
    --------
    >>> check_time_limit("04:00:00")
    '04:00:00'
    >>> check_time_limit("4h")
    Traceback (most recent call last):
    ...
    casa_magics.core.errors.ClusterError: time limit must be a Slurm time such as 30, 04:00:00 or 1-00:00:00, got '4h'
    """
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not _TIME_LIMIT.match(text):
        raise ClusterError(f"time limit must be a Slurm time such as 30, 04:00:00 or 1-00:00:00, got {value!r}")
    return text


def check_name(value: object, what: str) -> str:
    """Refuse a partition or account name that is empty or holds spaces; ``what`` names it."""
    if not isinstance(value, str) or not value or any(c.isspace() for c in value) or value.startswith("-"):
        raise ClusterError(f"{what} must be a Slurm name (no spaces, not starting with '-'), got {value!r}")
    return value


def check_sbatch_args(values: object) -> list[str]:
    """Refuse extra ``sbatch`` arguments that are not a list of options."""
    if isinstance(values, str) or not isinstance(values, (list, tuple)):
        raise ClusterError(f"sbatch_args must be a list of strings such as ['--mem=4G'], got {values!r}")
    for value in values:
        if not isinstance(value, str) or not value.startswith("-"):
            raise ClusterError(f"each of sbatch_args must be an sbatch option such as '--mem=4G', got {value!r}")
    return list(values)


# ---------------------------------------------------------------- what to submit
@dataclass(frozen=True)
class JobOptions:
    """What ``sbatch`` is told about the servers' job.

    Attributes
    ----------
    ntasks : int
        One task per server (``--ntasks``).
    output : str
        The job's output file (``--output``; ``%j`` is the job ID).
    workdir : str
        The job's working directory (``--chdir``).
    job_name : str
        ``--job-name``.
    partition, time_limit, account : str or None
        ``--partition``, ``--time``, ``--account`` when given.
    extra : list of str
        The user's own ``sbatch`` options, last, so they win.
    """

    ntasks: int
    output: str
    workdir: str
    job_name: str = "casa-servers"
    partition: str | None = None
    time_limit: str | None = None
    account: str | None = None
    extra: list[str] = field(default_factory=list)


def sbatch_command(options: JobOptions, script: str) -> list[str]:
    """The ``sbatch`` command line that submits ``script``.

    Examples
    --------
    >>> sbatch_command(JobOptions(2, "/run/slurm-%j.out", "/data", partition="p"), "/run/job.sh")
    ['sbatch', '--parsable', '--job-name=casa-servers', '--ntasks=2', '--output=/run/slurm-%j.out', \
'--chdir=/data', '--partition=p', '/run/job.sh']
    """
    command = [
        "sbatch",
        "--parsable",
        f"--job-name={options.job_name}",
        f"--ntasks={options.ntasks}",
        f"--output={options.output}",
        f"--chdir={options.workdir}",
    ]
    if options.partition:
        command.append(f"--partition={options.partition}")
    if options.time_limit:
        command.append(f"--time={options.time_limit}")
    if options.account:
        command.append(f"--account={options.account}")
    return command + list(options.extra) + [script]


def batch_script(launch: list[str], environment: Mapping[str, str]) -> str:
    """The batch script: export the servers' environment, then run the MPI launch line.

    The launch line is the same ``mpiexec -n N ...`` an embedded cluster runs
    (see :func:`casa_magics.cluster.launcher.launch_command`); inside the job, the MPI
    launcher finds Slurm's allocation and starts the ranks with ``srun``.
    """
    lines = ["#!/bin/sh", "# casa_magics: the CASA servers, the MPI ranks of this one job."]
    for name, value in sorted(environment.items()):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ClusterError(f"environment variable name {name!r} cannot be exported by a batch script")
        lines.append(f"export {name}={shlex.quote(value)}")
    lines.append("exec " + shlex.join(launch))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- what Slurm says
@dataclass(frozen=True)
class JobInfo:
    """One job as Slurm describes it.

    Attributes
    ----------
    job_id : str
    state : str
        ``PENDING``, ``RUNNING``, ``CANCELLED``, ... (``GONE`` once Slurm has
        forgotten the job).
    reason : str
        Why it is pending or ended (``Resources``, ``Priority``, ...), or ``''``.
    nodes : str
        The nodes it runs on (Slurm's host list), or ``''`` while pending.
    partition : str
    """

    job_id: str
    state: str
    reason: str = ""
    nodes: str = ""
    partition: str = ""

    @property
    def pending(self) -> bool:
        return self.state in ("PENDING", "CONFIGURING", "REQUEUED", "RESIZING")

    @property
    def ended(self) -> bool:
        """True once the job's processes are gone or going."""
        return self.state in ENDED_STATES or self.state == "GONE"

    def describe(self) -> str:
        """One line: ``Slurm job 12: PENDING (Resources)``, ``Slurm job 12: RUNNING on node[1-2]``.

        Examples
        --------
        >>> JobInfo("12", "PENDING", "Priority").describe()
        'Slurm job 12: PENDING (Priority)'
        >>> JobInfo("12", "RUNNING", nodes="n[1-2]").describe()
        'Slurm job 12: RUNNING on n[1-2]'
        """
        text = f"Slurm job {self.job_id}: {self.state}"
        if self.reason:
            text += f" ({self.reason})"
        if self.nodes and not self.pending:
            text += f" on {self.nodes}"
        return text


def parse_job(text: str) -> JobInfo:
    """Read one job from ``scontrol show job --oneliner`` output.

    Values may hold spaces (a ``Command=`` path); a word without ``=`` belongs
    to the value before it.

    Raises
    ------
    ValueError
        If the text names no job.
    """
    fields: dict[str, str] = {}
    key = None
    for word in text.split():
        name, sep, value = word.partition("=")
        if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9_:/]*", name):
            key = name
            fields[key] = value
        elif key is not None:
            fields[key] += " " + word
    if "JobId" not in fields or "JobState" not in fields:
        raise ValueError(f"no job in Slurm's answer: {' '.join(text.split())[:200]!r}")

    def value(name: str) -> str:
        found = fields.get(name, "").strip()
        return "" if found in _NOTHING else found

    return JobInfo(
        job_id=value("JobId"),
        state=value("JobState"),
        reason=value("Reason"),
        nodes=value("NodeList"),
        partition=value("Partition"),
    )


def parse_job_id(text: str) -> str:
    """The job ID in ``sbatch --parsable`` output (``123`` or ``123;cluster``).

    Raises
    ------
    ValueError
        If there is none.
    """
    first = text.strip().splitlines()[0] if text.strip() else ""
    job_id = first.split(";")[0].strip()
    if not job_id.isdigit():
        raise ValueError(f"sbatch gave no job ID: {text.strip()[:200]!r}")
    return job_id


@dataclass(frozen=True)
class Allocation:
    """The Slurm allocation this process runs in.

    Attributes
    ----------
    job_id : str
    ntasks : int
        ``SLURM_NTASKS``: the servers it holds.
    nodes : int
        ``SLURM_JOB_NUM_NODES`` (1 when not set).
    """

    job_id: str
    ntasks: int
    nodes: int = 1


def current_allocation(environ: Mapping[str, str] | None = None) -> Allocation | None:
    """The allocation named by ``SLURM_JOB_ID`` and ``SLURM_NTASKS``, or None outside one.

    Examples
    --------
    >>> current_allocation({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "3"})
    Allocation(job_id='7', ntasks=3, nodes=1)
    >>> current_allocation({"SLURM_JOB_ID": "7"}) is None
    True
    """
    env = os.environ if environ is None else environ
    job_id, ntasks = env.get("SLURM_JOB_ID", ""), env.get("SLURM_NTASKS", "")
    if not job_id or not ntasks.isdigit() or int(ntasks) < 1:
        return None
    nodes = env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or "1"
    return Allocation(job_id, int(ntasks), int(nodes) if nodes.isdigit() else 1)


# ---------------------------------------------------------------- asking Slurm
def _run(command: list[str], timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess:
    """Run one Slurm command; a missing command or a hang is a one-line ClusterError."""
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise ClusterError(f"{command[0]} was not found on PATH: is this a Slurm login node?") from None
    except subprocess.TimeoutExpired:
        raise ClusterError(f"{command[0]} did not answer within {timeout:g} s") from None


def _one_line(text: str) -> str:
    return " ".join(text.split())


class SlurmJob:
    """One job submitted by casa_magics, followed until it is cancelled.

    A new handle has no job yet; :meth:`submit` gives it one. :meth:`cancel`
    is safe at any point (no job: nothing to do).

    Attributes
    ----------
    job_id : str or None
    """

    def __init__(self) -> None:
        self.job_id: str | None = None
        self._lock = threading.Lock()
        self._last: JobInfo | None = None
        self._last_time = 0.0
        self._cancelled = False
        #: Told the job ID, to scancel it if this process dies (see casa_magics.cluster.orphan_reaper).
        self.reaper = None

    @classmethod
    def following(cls, job_id: str) -> "SlurmJob":
        """A handle on a job submitted earlier (by the process that started a detached cluster)."""
        job = cls()
        job.job_id = job_id
        return job

    def submit(self, command: list[str]) -> str:
        """Run ``sbatch`` (``command`` from :func:`sbatch_command`) and keep the job ID."""
        done = _run(command)
        if done.returncode != 0:
            raise ClusterError(f"sbatch refused the servers' job: {_one_line(done.stderr or done.stdout)}")
        try:
            self.job_id = parse_job_id(done.stdout)
        except ValueError as error:
            raise ClusterError(str(error)) from None
        if self.reaper is not None:
            self.reaper.scancel(self.job_id)
        return self.job_id

    def info(self, fresh: bool = True) -> JobInfo | None:
        """The job as Slurm describes it now (or as of the last look, at most :data:`WATCH_INTERVAL` ago).

        None before :meth:`submit`. A job Slurm no longer knows is ``GONE``;
        once a job has ended it is not asked about again.
        """
        if self.job_id is None:
            return None
        with self._lock:
            if self._last is not None and (self._last.ended or (not fresh and time.monotonic() - self._last_time < WATCH_INTERVAL)):
                return self._last
            done = _run(["scontrol", "show", "job", "--oneliner", self.job_id])
            if done.returncode != 0:
                if "Invalid job id" not in done.stderr:
                    raise ClusterError(f"scontrol could not describe Slurm job {self.job_id}: {_one_line(done.stderr)}")
                self._last = JobInfo(self.job_id, "GONE", "Slurm no longer knows it")
            else:
                try:
                    self._last = parse_job(done.stdout)
                except ValueError as error:
                    raise ClusterError(str(error)) from None
            self._last_time = time.monotonic()
            return self._last

    def ended_reason(self, fresh: bool = False) -> str | None:
        """``"Slurm job 12 ended: CANCELLED"`` once the job has ended, else None.

        Looks at most every :data:`WATCH_INTERVAL` seconds unless ``fresh``. A
        failure to ask says nothing (None): only Slurm's own word ends servers.
        """
        try:
            info = self.info(fresh=fresh)
        except ClusterError:
            return None
        if info is None or not info.ended:
            return None
        text = f"Slurm job {info.job_id} ended: {info.state}"
        return text + (f" ({info.reason})" if info.reason else "")

    def cancel(self, timeout: float = 30.0) -> None:
        """``scancel`` the job and wait (at most ``timeout`` s) until it has left the queue."""
        if self.job_id is None or self._cancelled:
            return
        self._cancelled = True
        _run(["scancel", self.job_id])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = _run(["squeue", "--noheader", "--jobs", self.job_id, "--format=%T"])
            if done.returncode != 0 or not done.stdout.strip():
                return  # squeue no longer lists it (or no longer knows it)
            time.sleep(0.2)
        raise ClusterError(f"Slurm job {self.job_id} is still in the queue {timeout:g} s after scancel")
