"""Where the servers start with respect to Slurm, and starting them as one Slurm job.

:func:`place_servers` decides, before anything starts, how a
:class:`~casa_magics.ClusterSession` gets its servers:

- ``scheduler='slurm'``: one batch job whose ranks are the servers. The batch
  script runs the same ``mpiexec`` line an embedded cluster runs, so each MPI
  (Open MPI, MPICH's hydra, a system MPI that knows Slurm) works the same way;
- inside an allocation (``SLURM_JOB_ID`` and ``SLURM_NTASKS`` set) and no
  scheduler: ``SLURM_NTASKS`` servers by ``mpiexec``, inside the allocation;
- otherwise: the embedded cluster, on 127.0.0.1 (with a hostfile, on this
  host's address, as the hosts it names must reach the controller).

It also decides the address the controller listens on: the compute nodes
must reach it, so outside a one-node case it is this host's address
(``CASA_MAGICS_CONTROLLER_IP`` or what the host name resolves to), never every
interface unless asked. :meth:`Placement.launch` submits the job and waits,
bounded by the start timeout, while saying on stderr what the queue does.

Runs in the client.
"""

from __future__ import annotations

import os
import socket
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from casa_magics.core.checks import controller_address, tail
from casa_magics.core.errors import ClusterError
from casa_magics.cluster.launcher import LaunchPlan, launch_command
from casa_magics.cluster.registration import wait_for_engines
from casa_magics.cluster.slurm import (
    POLL_INTERVAL,
    Allocation,
    JobInfo,
    JobOptions,
    SlurmJob,
    batch_script,
    check_name,
    check_sbatch_args,
    check_time_limit,
    current_allocation,
    sbatch_command,
)

__all__ = ["Placement", "place_servers", "default_controller_ip", "starting_job", "SCHEDULERS"]

#: The ``scheduler`` values :meth:`ClusterSession.start` takes.
SCHEDULERS = (None, "slurm")
LOOPBACK = "127.0.0.1"

_starting: SlurmJob | None = None


def starting_job() -> JobInfo | None:
    """The Slurm job a start in progress waits for (None when no start waits on Slurm)."""
    job = _starting
    if job is None:
        return None
    try:
        return job.info(fresh=False)
    except ClusterError:
        return None


def default_controller_ip(configured: str | None = None) -> str:
    """The address compute nodes use to reach this host: ``configured``, else what the host name resolves to."""
    if configured:
        return check_controller_ip(configured)
    name = socket.gethostname()
    try:
        return socket.gethostbyname(name)
    except OSError as error:
        raise ClusterError(
            f"cannot find this host's address ({name!r} does not resolve: {error}): "
            "set CASA_MAGICS_CONTROLLER_IP or pass controller_ip"
        ) from None


def check_controller_ip(value: object) -> str:
    """Refuse a controller address that is not an IP address (``'*'`` means every interface, when asked)."""
    try:
        return controller_address(value)
    except ValueError:
        raise ClusterError(f"controller_ip must be an IP address (or '*' for every interface), got {value!r}") from None


@dataclass
class Placement:
    """How one start gets its servers (see the module's notes).

    Attributes
    ----------
    controller_ip : str
        Where the controller listens.
    allocation : Allocation or None
        The allocation this process runs in, when the servers go into it.
    options : dict
        ``partition``, ``time_limit``, ``account``, ``sbatch_args`` for the job.
    job : SlurmJob or None
        The batch job (submitted by :meth:`launch`).
    """

    controller_ip: str
    allocation: Allocation | None = None
    options: dict[str, Any] | None = None
    job: SlurmJob | None = None

    def servers(self, n: int | None) -> int | None:
        """The number of servers: ``n`` if given, else the allocation's ``SLURM_NTASKS`` (None: the default)."""
        if n is None and self.allocation is not None:
            return self.allocation.ntasks
        return n

    def describe(self, n: int, kind: str = "MPI") -> str:
        """The session's description, e.g. ``'2 MPI servers in Slurm job 12'``.

        Parameters
        ----------
        n : int
            The number of servers.
        kind : {'MPI', 'local'}
            What the engines are.
        """
        servers = f"{n} {kind} server{'s' if n != 1 else ''}"
        if self.job is not None:
            return f"{servers} in Slurm job {self.job.job_id}"
        if self.allocation is not None:
            return f"embedded cluster of {servers} in Slurm allocation {self.allocation.job_id} (SLURM_NTASKS={self.allocation.ntasks})"
        return f"embedded cluster of {servers}"

    def cancel(self) -> None:
        """Cancel the batch job, if one was submitted (failures are not hidden, but never mask another)."""
        if self.job is not None:
            try:
                self.job.cancel()
            except ClusterError as error:
                print(f"casa_magics: {error}", file=sys.stderr)

    def launch(self, cluster: Any, n: int, timeout: float, plan: LaunchPlan, environment: dict[str, str], run_dir: Path) -> Any:
        """Start the controller, submit the servers' job and wait for every engine.

        Returns the connected ``ipyparallel.Client``. While the job waits in
        the queue, each change of its state is one line on stderr. After
        ``timeout`` seconds, or if the job ends first, the job is cancelled
        and a ClusterError says why (job ID, state, Slurm's reason, and the
        end of the job's output).
        """
        global _starting
        assert self.job is not None and self.options is not None
        cluster.start_controller_sync()
        engine_args = [f"--profile-dir={cluster.profile_dir}", f"--cluster-id={cluster.cluster_id}"]
        launch = launch_command(plan, n, engine_args)
        tag = uuid.uuid4().hex[:8]
        script = run_dir / f"slurm-servers-{tag}.sh"
        script.write_text(batch_script(launch, environment))
        script.chmod(0o700)
        output = run_dir / "slurm-servers-%j.out"
        options = JobOptions(ntasks=n, output=str(output), workdir=os.getcwd(), **self.options)
        _starting = self.job  # one reference, read by starting_job() without a lock
        try:
            self.job.submit(sbatch_command(options, str(script)))
            return self._wait(cluster, n, timeout, launch, output)
        finally:
            _starting = None

    def _wait(self, cluster: Any, n: int, timeout: float, launch: list[str], output: Path) -> Any:
        """Wait for ``n`` engines while saying what the queue does; cancel the job and say why if they do not come."""
        job = self.job
        assert job is not None
        client = cluster.connect_client_sync()
        last: list[JobInfo] = []  # the job as last seen

        def job_ended() -> bool:
            info = job.info(fresh=True)
            if info is None:
                return False
            if not last or (info.state, info.reason) != (last[0].state, last[0].reason):
                if info.pending and info.reason or info.ended:
                    print(f"casa_magics: {info.describe()}; waiting up to {timeout:g} s in all", file=sys.stderr)
            last[:] = [info]
            return info.ended

        registration = wait_for_engines(client, n, timeout, check=job_ended, check_every=POLL_INTERVAL)
        if registration.ok:
            return client
        client.close()
        info = job.info(fresh=True) or (last[0] if last else None)
        state = info.describe() if info is not None else f"Slurm job {job.job_id}"
        if info is not None and info.ended:
            reason = f"{state}: it ended before the servers started"
        elif info is not None and info.pending:
            reason = f"{state} after {timeout:g} s, the start timeout: cancelled it"
        else:
            reason = (
                f"only {len(registration.engines)} of {n} engines registered within {timeout:g} s ({state}): cancelled it"
                f" (the nodes must reach the controller at {cluster.controller_ip or '?'} and read the run directory)"
            )
        self.cancel()
        text = _read_tail(Path(str(output).replace("%j", job.job_id or "")))
        raise ClusterError(f"cannot start servers: {reason}\ncommand: {' '.join(launch)}\njob output:\n{text}")


def _read_tail(path: Path) -> str:
    try:
        return tail(path.read_text(errors="replace")) or "(no output)"
    except OSError:
        return "(no output)"


def place_servers(
    scheduler: str | None,
    *,
    partition: str | None = None,
    time_limit: str | int | None = None,
    account: str | None = None,
    sbatch_args: Any = (),
    controller_ip: str | None = None,
    configured_ip: str | None = None,
    hostfile: bool = False,
    environ: dict[str, str] | None = None,
) -> Placement:
    """Check the Slurm options and decide where the servers go (nothing starts).

    Parameters
    ----------
    scheduler : {None, 'slurm'}
    partition, time_limit, account, sbatch_args
        For ``scheduler='slurm'`` only.
    controller_ip : str, optional
        Where the controller listens (default: loopback for an embedded
        cluster on one node, else ``configured_ip`` or this host's address).
    configured_ip : str, optional
        ``CASA_MAGICS_CONTROLLER_IP``.
    hostfile : bool
        True when ``mpiexec`` gets a hostfile: ranks on the hosts it names
        must reach the controller, so it is not on loopback.
    environ : dict, optional
        Read instead of :data:`os.environ` (for ``SLURM_*``).

    Raises
    ------
    ClusterError
        One line naming a bad value; nothing has started.
    """
    if scheduler not in SCHEDULERS:
        raise ClusterError(f"scheduler must be None or 'slurm', got {scheduler!r}")
    slurm_options = {"partition": partition, "time_limit": time_limit, "account": account}
    given = [name for name, value in slurm_options.items() if value is not None] + (["sbatch_args"] if sbatch_args else [])
    if scheduler is None and given:
        raise ClusterError(f"{given[0]} applies only to scheduler='slurm'")
    explicit_ip = check_controller_ip(controller_ip) if controller_ip is not None else None
    if scheduler == "slurm":
        options = {
            "partition": check_name(partition, "partition") if partition is not None else None,
            "time_limit": check_time_limit(time_limit) if time_limit is not None else None,
            "account": check_name(account, "account") if account is not None else None,
            "extra": check_sbatch_args(sbatch_args),
        }
        ip = explicit_ip or default_controller_ip(configured_ip)
        return Placement(ip, options=options, job=SlurmJob())
    allocation = current_allocation(environ)
    if explicit_ip:
        ip = explicit_ip
    elif hostfile or (allocation is not None and allocation.nodes > 1):
        ip = default_controller_ip(configured_ip)  # ranks on other nodes must reach the controller
    else:
        ip = LOOPBACK
    return Placement(ip, allocation=allocation)
