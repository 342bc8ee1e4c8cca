"""Starting, connecting to and stopping the ipyparallel cluster behind the servers.

A :class:`ClusterSession` is one client connection to one cluster. It either
started that cluster itself (an *embedded* cluster: a controller on loopback
and N engines launched by ``mpiexec``), and then stops it again, or it
connected to a running one (``ipcluster start --engines=MPI``), and then
leaves it running.

The process-wide session used by :class:`~casa_magics.MPICommandClient` and
the magics is reached through :func:`current_session`.

Runs in the client.
"""

from __future__ import annotations

import atexit
import json
import dataclasses
import functools
import logging
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable, Collection, Optional

import ipyparallel as ipp

from casa_magics.cluster import casa_env
from casa_magics.core.checks import check_positive_int, tail
from casa_magics.core.config import Settings, load_settings
from casa_magics.core.errors import ClusterError
from casa_magics.cluster.launcher import LaunchPlan, find_mpiexec, is_hydra, plan_launch
from casa_magics.cluster.memory_limit import effective_memory_limit
from casa_magics.core.units import parse_memory_size
from casa_magics.server.memory import start_memory_watch
from casa_magics.cluster.orphan_reaper import OrphanReaper
from casa_magics.cluster.replacement import Replacer
from casa_magics.cluster import detached
from casa_magics.core.world import set_client_world, mpi_library_report
from casa_magics.cluster.run_dir import default_run_dir, keep_run_dir
from casa_magics.cluster.slurm import SlurmJob
from casa_magics.cluster.slurm_launch import Placement, place_servers
from casa_magics.cluster.registration import LauncherWatch, Outcome, wait_for_engines
from casa_magics.cluster.control_channel import prepare_server
from casa_magics.cluster.server_map import ServerInfo, ServerMap
from casa_magics.server.runner import (
    SERVER_ROLE,
    casa_import_state_path,
    engine_identity,
    join_casa_import,
    server_report,
    set_command_log_level,
    start_casa_import,
)

__all__ = [
    "ClusterSession",
    "current_session",
    "set_current_session",
    "has_current_session",
    "live_current_session",
    "visible_clusters",
    "default_run_dir",
    "add_server_setup",
    "remove_server_setup",
]

log = logging.getLogger("casa_magics")


def visible_clusters() -> list[str]:
    """Describe the clusters ipyparallel can see, one string each.

    Used in connection errors, so a user sees what they could connect to.
    """
    try:
        clusters = ipp.ClusterManager().load_clusters(init_default_clusters=False)
    except Exception as error:  # listing is best effort: say why it failed
        return [f"(could not list clusters: {error})"]
    found = []
    for key, cluster in sorted(clusters.items()):
        n = sum(getattr(es, "n", 0) or 0 for es in cluster.engines.values())
        found.append(f"{key} (profile {Path(cluster.profile_dir).name}, cluster_id {cluster.cluster_id!r}, {n} engines)")
    return found


def _with_memory_limit(settings: Settings, memory_limit: int | str) -> Settings:
    """``settings`` with another memory limit; a bad size is a one-line ClusterError naming it."""
    import dataclasses

    try:
        return dataclasses.replace(settings, memory_limit=parse_memory_size(memory_limit))
    except ValueError as error:
        raise ClusterError(f"memory_limit: {error}") from None


def _private_dir(path: Path) -> Path:
    """Create ``path`` readable by its owner only: it will hold connection keys."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def _mpi_usable(mpiexec: str) -> str | None:
    """Return why MPI cannot be used here, or None if it can."""
    if find_mpiexec(mpiexec) is None:
        return f"{mpiexec!r} was not found on PATH"
    try:
        import mpi4py  # noqa: F401
    except ImportError as error:
        return f"mpi4py cannot be imported ({error})"
    return None


def _profile_connection_file(profile: str, cluster_id: str) -> Path:
    """Where ``ipcluster start --profile P --cluster-id C`` writes the client's connection file."""
    from IPython.paths import get_ipython_dir

    name = f"ipcontroller-{cluster_id}-client.json" if cluster_id else "ipcontroller-client.json"
    return Path(get_ipython_dir()) / f"profile_{profile}" / "security" / name


def _start_settings(
    settings: Settings | None, memory_limit: int | str | None, keep: bool | None, scheduler: str | None
) -> tuple[Settings, bool]:
    """The settings of one start (``memory_limit`` applied), and whether the cluster is kept."""
    settings = settings or load_settings()
    if memory_limit is not None:
        settings = _with_memory_limit(settings, memory_limit)
    # A kept Slurm cluster lives until it is stopped (which cancels its job) or its time limit.
    keep = settings.keep_cluster if keep is None else keep
    return settings, keep


@dataclasses.dataclass
class _StartPlan:
    """What one :meth:`ClusterSession.start` launches, worked out before anything starts."""

    settings: Settings
    placement: Placement
    n: int
    timeout: float
    hostfile: str | None
    extra_args: list[str]
    keep: bool
    run_dir: Path
    environment: dict[str, str]
    #: ``'mpi'`` or ``'local'`` (ipyparallel's engine launcher), set by :meth:`plan_engines`.
    engines: str = "mpi"
    plan: LaunchPlan | None = None
    engine_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def make(
        cls, settings: Settings, placement: Placement, n: int | None, *,
        timeout: float | None, hostfile: str | None, mpiexec_args: list[str] | None, keep: bool,
    ) -> "_StartPlan":
        """Check the number of servers and the hostfile; make the run directory and the servers' environment."""
        n = placement.servers(n)
        n = settings.engines if n is None else n
        check_positive_int(n, "number of servers", ClusterError)
        hostfile = hostfile or settings.hostfile
        if placement.job is not None and hostfile:
            raise ClusterError(f"a hostfile ({hostfile}) does not apply to scheduler='slurm': Slurm chooses the nodes")
        run_dir = default_run_dir(settings)
        # The role is fixed at launch: casa_magics in an engine knows it is a server.
        environment = {**casa_env.casa_environment(run_dir), "CASA_MAGICS_ROLE": SERVER_ROLE}
        environment["CASA_MAGICS_RUN_DIR"] = str(run_dir)  # where each server's keeper notes how it ended
        return cls(
            settings, placement, n,
            timeout=settings.start_timeout if timeout is None else timeout,
            hostfile=hostfile,
            extra_args=list(settings.mpiexec_args if mpiexec_args is None else mpiexec_args),
            keep=keep, run_dir=run_dir, environment=environment,
        )

    def plan_engines(self, engine_command: list[str] | None) -> None:
        """Choose MPI engines (and their ``mpiexec`` line) or, where allowed without MPI, plain local ones."""
        why_not = _mpi_usable(self.settings.mpiexec)
        self.engine_kwargs = {"environment": self.environment}
        if engine_command:
            self.engine_kwargs["engine_cmd"] = list(engine_command)
        if why_not is None:
            self.engines = "mpi"
            mpiexec = find_mpiexec(self.settings.mpiexec)
            self.plan = plan_launch(
                mpiexec, hydra=is_hydra(mpiexec), extra_args=self.extra_args, hostfile=self.hostfile,
                engine_command=engine_command,
            )
            self.engine_kwargs.update(mpi_cmd=self.plan.mpi_cmd, mpi_args=self.plan.mpi_args, engine_cmd=self.plan.engine_cmd)
            self.environment.update(self.plan.environment)
        elif self.settings.allow_no_mpi and not (self.extra_args or self.hostfile) and self.placement.job is None:
            # stacklevel: warnings point at the caller of ClusterSession.start
            warnings.warn(f"MPI is not available ({why_not}): starting plain local engines", RuntimeWarning, stacklevel=3)
            self.engines = "local"
        else:
            raise ClusterError(f"cannot start MPI servers: {why_not}")

    def make_cluster(self) -> ipp.Cluster:
        """The ipyparallel Cluster to launch (nothing starts yet)."""
        return ipp.Cluster(
            engines=self.engines,
            n=self.n,
            cluster_id=f"casa-magics-{uuid.uuid4().hex[:8]}",
            profile_dir=str(_private_dir(self.run_dir / "ipython-profile")),
            controller_ip=self.placement.controller_ip,
            # No task database: the client keeps what it needs, the controller need not.
            # A detached cluster's keeps recent results for a client that re-attaches.
            controller_args=detached.CONTROLLER_ARGS if self.keep else ["--IPController.db_class=NoDB"],
            load_profile=False,
            log_level=logging.WARNING,
            # Its own logger, so launcher output does not land in a notebook cell.
            log=logging.getLogger("casa_magics.cluster"),
            shutdown_atexit=not self.keep,
        )

    @property
    def kind(self) -> str:
        """``'MPI'`` or ``'local'``, as descriptions say."""
        return "MPI" if self.engines == "mpi" else "local"

    def describe(self) -> str:
        """``'embedded cluster of 2 MPI servers'``."""
        return f"embedded cluster of {self.n} {self.kind} server{'s' if self.n != 1 else ''}"


def _launch(cluster: ipp.Cluster, n: int, timeout: float, engine_kwargs: dict[str, Any]) -> ipp.Client:
    """Start the controller and ``n`` engines; return a client once all registered.

    Raises
    ------
    ClusterError
        If the launcher exits first or the timeout passes; with the command
        and the end of the engines' output.
    """
    cluster.start_controller_sync()
    engine_set_id = cluster.start_engines_sync(n, **engine_kwargs)
    engine_set = cluster.engines[engine_set_id]
    launcher = LauncherWatch(engine_set)  # one mpiexec (local engine sets have none)
    client = cluster.connect_client_sync()
    registration = wait_for_engines(client, n, timeout, launcher=launcher)
    if registration.ok:
        return client
    client.close()
    output = tail(engine_set.get_output() or "(no output)")
    if registration.outcome is Outcome.LAUNCHER_EXITED:
        reason = f"the engines exited during start-up (mpiexec exit status {registration.exit_code})"
    else:
        reason = f"only {len(registration.engines)} of {n} engines registered within {timeout:g} s"
    command = " ".join(engine_set.args) if getattr(engine_set, "args", None) else "?"
    raise ClusterError(f"cannot start servers: {reason}\ncommand: {command}\nengine output:\n{output}")


def _engine_logs(connection_file: Path) -> list[Path]:
    """The log files of the engines of the cluster behind ``connection_file``, newest first.

    ``ipcluster start`` notes each engine set's output file in the profile's
    cluster file (``security/cluster-<cluster_id>.json``); without one, the
    newest ``ipengine-*.log`` / ``ipcluster-*.log`` of the profile's ``log/``
    directory stand in.
    """
    security = connection_file.parent
    name = connection_file.name  # ipcontroller-<cluster_id>-client.json or ipcontroller-client.json
    cluster_id = name[len("ipcontroller-") : -len("-client.json")] if name != "ipcontroller-client.json" else ""
    found: list[Path] = []
    try:
        sets = json.loads((security / f"cluster-{cluster_id}.json").read_text())["engines"]["sets"]
        found = [Path(s["output_file"]) for s in sets.values() if s.get("output_file")]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    found = [path for path in found if path.is_file()]
    if not found:
        log_dir = security.parent / "log"
        prefix = f"-{cluster_id}-" if cluster_id else "-"
        patterns = (f"ipengine{prefix}*.log", f"ipcluster{prefix}*.log")
        found = [path for pattern in patterns for path in log_dir.glob(pattern)]
    return sorted(found, key=_modified, reverse=True)


def _modified(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed meanwhile
        return 0.0


def _engine_log_tail(connection_file: Path) -> str:
    """Why engines may not have registered: the end of the newest engine log, or where none was found."""
    logs = _engine_logs(connection_file)
    if not logs:
        return f"no engine log in {connection_file.parent.parent / 'log'} says why"
    try:
        text = tail(logs[0].read_text(errors="replace")) or "(empty)"
    except OSError as error:
        text = f"(cannot read it: {error})"
    return f"the engine log {logs[0]} ends:\n{text}"


class ClusterSession:
    """A client connection to a cluster of servers.

    Create one with :meth:`start` or :meth:`connect`; both wait until every
    engine has registered and read the server map from the engines.

    Attributes
    ----------
    client : ipyparallel.Client
    servers : ServerMap
    cluster : ipyparallel.Cluster or None
        The cluster this session started, or None when it connected.
    run_dir : pathlib.Path
        Where servers write their logs (CASA's included).
    """

    def __init__(
        self,
        client: ipp.Client,
        servers: ServerMap,
        *,
        cluster: ipp.Cluster | None,
        run_dir: Path,
        settings: Settings,
        description: str,
    ) -> None:
        """Hold an open connection; use :meth:`start` or :meth:`connect` to get one."""
        self.client = client
        self.servers = servers
        self.cluster = cluster
        self.run_dir = run_dir
        self.settings = settings
        self.description = description
        self._stopped = False
        self._lock = threading.Lock()
        self._casa_installed = False
        self._casa_import_started = False
        #: Launches replacements for lost servers (None: lost servers stay lost).
        self.replacer: Replacer | None = None
        #: The registry entry of a detached cluster (see casa_magics.cluster.detached), else None.
        self.detached: Any = None
        #: On re-attaching a detached cluster: what became of the previous client's requests.
        self.previous_requests: list[dict[str, Any]] = []

    @classmethod
    def _open(
        cls, client: ipp.Client, *, cluster: ipp.Cluster | None, run_dir: Path, settings: Settings, description: str
    ) -> "ClusterSession":
        """Read the server map from the engines, prepare every server, and stop at exit."""
        try:
            identities = client[:].apply_sync(engine_identity)
        except ipp.error.CompositeError as error:
            if "No module named 'casa_magics'" in str(error):
                raise ClusterError(
                    "the engines cannot import casa_magics: install it in the engines' Python environment"
                ) from None
            raise
        servers = ServerMap(dict(zip(client.ids, identities)))
        session = cls(client, servers, cluster=cluster, run_dir=run_dir, settings=settings, description=description)
        session._prepare_servers()
        atexit.register(session.stop)
        return session

    # ------------------------------------------------------------------ start
    @classmethod
    def start(
        cls,
        n: int | None = None,
        *,
        mpiexec_args: list[str] | None = None,
        hostfile: str | None = None,
        timeout: float | None = None,
        engine_command: list[str] | None = None,
        settings: Settings | None = None,
        memory_limit: int | str | None = None,
        replace_lost: bool | None = None,
        keep: bool | None = None,
        scheduler: str | None = None,
        partition: str | None = None,
        time_limit: str | None = None,
        account: str | None = None,
        sbatch_args: list[str] = (),
        controller_ip: str | None = None,
    ) -> "ClusterSession":
        """Start an embedded cluster: a controller on loopback and ``n`` MPI engines.

        With ``scheduler='slurm'`` the servers are the MPI ranks of one Slurm
        batch job instead, and the controller listens on this host's address.
        Inside a Slurm allocation (``SLURM_JOB_ID`` and ``SLURM_NTASKS`` set)
        with no ``n``, the allocation's ``SLURM_NTASKS`` servers are started
        in it by ``mpiexec``.

        Parameters
        ----------
        n : int, optional
            Number of servers (default ``CASA_MAGICS_ENGINES``, else one per
            core, at least 2).
        mpiexec_args : list of str, optional
            Extra arguments for ``mpiexec``, as mpicasa users pass them.
        hostfile : str, optional
            A hostfile for ``mpiexec`` (passed as ``-f`` to MPICH's hydra,
            ``--hostfile`` to others).
        timeout : float, optional
            Seconds to wait for all engines (default ``CASA_MAGICS_START_TIMEOUT``).
        engine_command : list of str, optional
            The program ``mpiexec`` runs for each engine (default: this
            Python running ``ipyparallel.engine``), e.g. to wrap engines.
        settings : Settings, optional
            Defaults for all of the above (default: read the environment).
        memory_limit : int or str, optional
            Resident memory each server may use (bytes, or ``'4GB'``,
            ``'500MB'``); over it, its running request is ended (default
            ``CASA_MAGICS_MEMORY_LIMIT``, else CASA's ``.casarc`` setting).
        replace_lost : bool, optional
            Replace a lost server with a new one under the same server ID
            (default ``CASA_MAGICS_REPLACE_LOST``, else on; see
            ``casa_magics.cluster.replacement``). Not for Slurm jobs.
        keep : bool, optional
            Start the cluster detached: it outlives this process, and a later
            one re-attaches with :meth:`ClusterSession.reattach`
            (default ``CASA_MAGICS_KEEP_CLUSTER``, else off). Not for Slurm jobs.
        scheduler : {None, 'slurm'}, optional
            ``'slurm'``: submit the servers as one job with ``sbatch``. The
            start timeout then bounds the time in the queue too; after it the
            job is cancelled and the error says why (job ID, state, reason).
        partition, time_limit, account : str, optional
            ``sbatch --partition``, ``--time`` (e.g. ``'04:00:00'``), ``--account``.
        sbatch_args : list of str, optional
            More ``sbatch`` options, e.g. ``['--mem-per-cpu=4G']``.
        controller_ip : str, optional
            The address the controller listens on (default: loopback, or for
            Slurm ``CASA_MAGICS_CONTROLLER_IP``, else this host's address;
            ``'*'`` only if you mean every interface).

        Raises
        ------
        ClusterError
            If ``n`` is not positive, ``mpiexec`` fails, or the engines do not
            all register in time; the message includes the engines' output.
        """
        settings, keep = _start_settings(settings, memory_limit, keep, scheduler)
        placement = place_servers(
            scheduler, partition=partition, time_limit=time_limit, account=account, sbatch_args=sbatch_args,
            controller_ip=controller_ip, configured_ip=settings.controller_ip, hostfile=bool(hostfile or settings.hostfile),
        )
        start = _StartPlan.make(settings, placement, n, timeout=timeout, hostfile=hostfile, mpiexec_args=mpiexec_args, keep=keep)
        start.plan_engines(engine_command)
        cluster = start.make_cluster()
        # Ends the cluster if this process dies without stopping it; a kept cluster must outlive it.
        reaper = None if keep else OrphanReaper(cluster.cluster_id)
        if placement.job is not None:
            placement.job.reaper = reaper  # and scancels the job
        try:
            session = cls._launch_and_open(start, cluster)
            session._wire(start, reaper, replace_lost)
            return session
        except BaseException as error:
            placement.cancel()
            cluster.stop_cluster_sync()
            if reaper is not None:
                reaper.release()
            if not isinstance(error, KeyboardInterrupt):
                keep_run_dir(f"the {start.describe()} did not start")
            raise

    @classmethod
    def _launch_and_open(cls, start: "_StartPlan", cluster: ipp.Cluster) -> "ClusterSession":
        """Launch the controller and the engines as ``start`` plans, and open a session on them."""
        placement = start.placement
        if placement.job is not None:
            client = placement.launch(cluster, start.n, start.timeout, start.plan, start.environment, start.run_dir)
        else:
            client = _launch(cluster, start.n, start.timeout, start.engine_kwargs)
        description = placement.describe(start.n, start.kind)
        return cls._open(client, cluster=cluster, run_dir=start.run_dir, settings=start.settings, description=description)

    def _wire(self, start: "_StartPlan", reaper: OrphanReaper | None, replace_lost: bool | None) -> None:
        """Give a just-started session its Slurm job, orphan reaper, replacer and detached record."""
        self.slurm_job = start.placement.job
        self.reaper = reaper
        if reaper is not None:
            reaper.watch_cluster(self.cluster, self.servers)
        if (start.settings.replace_lost if replace_lost is None else replace_lost) and start.placement.job is None:
            self.replacer = Replacer(self, start.engine_kwargs)
        if start.keep:
            detached.register(self, start.engine_kwargs)

    @classmethod
    def reattach(
        cls, cluster_id: str | None = None, *, settings: Settings | None = None, timeout: float | None = None
    ) -> "ClusterSession":
        """Connect this process to a detached cluster of this user (``%casa_cluster connect``).

        Parameters
        ----------
        cluster_id : str, optional
            Which one; may be left out when there is exactly one.
        timeout : float, optional
            Seconds to wait for the controller and engines (default
            ``CASA_MAGICS_START_TIMEOUT``).

        Returns
        -------
        ClusterSession
            With the server map the cluster had; ``previous_requests``
            holds what became of the previous client's requests.

        Raises
        ------
        ClusterError
            When there is no such cluster, several and none was named, or
            another live process is attached to it; the message lists them.
        """
        settings = settings or load_settings()
        timeout = settings.start_timeout if timeout is None else timeout
        record = detached.find_detached(cluster_id, settings)
        since = record.last_alive
        ipp_cluster, client = detached.connect_detached(record, timeout)
        servers = ServerMap.from_infos([ServerInfo(**row) for row in record.servers], mpi=record.mpi)
        settings = dataclasses.replace(settings, memory_limit=record.memory_limit, run_dir=record.run_dir)
        session = cls(
            client, servers, cluster=ipp_cluster, run_dir=Path(record.run_dir), settings=settings,
            description=f"detached cluster {record.cluster_id} of {len(servers)} servers",
        )
        # CASA was imported (or not) when the cluster started; its state files say how it went.
        session._casa_installed = casa_env.casa_available()
        session._casa_import_started = session._casa_installed and settings.import_casa
        if record.replace_lost and record.engine_kwargs:
            session.replacer = Replacer(session, record.engine_kwargs)
        if record.slurm_job_id is not None:  # stopping it cancels the job; the watchdog follows the job
            session.slurm_job = SlurmJob.following(record.slurm_job_id)
        detached.attach(session, record, since)
        return session

    # ---------------------------------------------------------------- connect
    @classmethod
    def connect(
        cls,
        *,
        profile: str | None = None,
        cluster_id: str | None = None,
        connection_file: str | None = None,
        n: int | None = None,
        timeout: float | None = None,
        settings: Settings | None = None,
    ) -> "ClusterSession":
        """Connect to a running cluster, e.g. one from ``ipcluster start --engines=MPI``.

        Parameters
        ----------
        profile, cluster_id : str, optional
            The IPython profile and cluster ID given to ``ipcluster``.
        connection_file : str, optional
            Path of ``ipcontroller-client.json``; wins over profile/cluster_id.
        n : int, optional
            Wait until this many engines have registered (default: those
            registered now, at least one).
        timeout : float, optional
            Seconds to wait (default ``CASA_MAGICS_START_TIMEOUT``).

        Raises
        ------
        ClusterError
            If the cluster cannot be reached (the message lists the clusters
            that are visible), or fewer than ``n`` engines register within
            ``timeout`` (the message ends with the last lines of the newest
            engine log in the profile's ``log/`` directory, e.g. Open MPI's
            "not enough slots").
        """
        settings = settings or load_settings()
        timeout = settings.start_timeout if timeout is None else timeout
        profile = profile or settings.profile
        cluster_id = settings.cluster_id if cluster_id is None else cluster_id
        connection_file = connection_file or settings.connection_file
        if not connection_file:
            connection_file = str(_profile_connection_file(profile or "default", cluster_id or ""))
            target = f"profile {profile or 'default'!r}, cluster_id {cluster_id or ''!r}"
        else:
            target = connection_file
        try:
            if not Path(connection_file).exists():
                raise FileNotFoundError(f"no connection file {connection_file}")
            client = ipp.Client(connection_file, timeout=timeout)
        except Exception as error:
            visible = visible_clusters()
            listing = "; ".join(visible) if visible else "none"
            why = " ".join(str(error).split())  # one line
            raise ClusterError(f"cannot connect to cluster ({target}): {why}. Visible clusters: {listing}") from None
        registration = wait_for_engines(client, n or 1, timeout)
        if not registration.ok:
            client.close()
            why = f"only {len(registration.engines)} of {n or 1} engines registered within {timeout:g} s"
            raise ClusterError(f"cannot connect to cluster ({target}): {why}; {_engine_log_tail(Path(connection_file))}")
        run_dir = default_run_dir(settings)
        return cls._open(client, cluster=None, run_dir=run_dir, settings=settings, description=f"cluster at {target}")

    def mpi_library(self) -> dict[str, Any] | None:
        """The servers' MPI library (version, vendor, thread level), read from a server once.

        Returns None when the servers are not MPI processes.
        """
        if self.servers.library is None and self.servers.mpi:
            first = self.servers.info(self.servers.server_ids[0])
            self.servers.library = self.client[first.engine].apply_sync(mpi_library_report)
        return self.servers.library

    # ------------------------------------------------------------------ state
    def _prepare_servers(self, servers: Collection[int] | None = None) -> None:
        """Give engines their server ID, run directory and CASA set-up, then run the server setups.

        ``servers``: the server IDs to prepare (default: every server).
        """
        environment = casa_env.casa_environment(self.run_dir)
        pending = [
            self.client[info.engine].apply_async(
                prepare_server, info.server, str(self.run_dir), environment, len(self.servers)
            )
            for info in self.servers
            if servers is None or info.server in servers
        ]
        for result in pending:
            result.get(timeout=self.settings.start_timeout)
        self.run_on_servers(start_memory_watch, self.memory_limit, servers=servers)
        for setup in list(_server_setups):
            setup(self, servers)
        self._start_casa_import(servers)

    @functools.cached_property
    def memory_limit(self) -> int | None:
        """Resident memory, in bytes, each server may use before its running request is ended (None: no limit).

        Worked out once per session (it may read ``~/.casarc``).
        """
        return effective_memory_limit(self.settings.memory_limit)[0]

    def prepare_replacement(self, server: int) -> None:
        """Prepare the engine that replaced a lost server as every server is prepared.

        Server ID, run directory, memory watcher, the server setups and the
        background CASA import all run on that server only.
        """
        self._prepare_servers({server})
        detached.save_server_map(self)  # a detached cluster's record says who the server is now

    def servers_share_one_world(self) -> bool:
        """True when the servers are the ranks of one MPI world (see :attr:`ServerMap.one_world`).

        MPI-based CASA code that needs every server in one world, with
        server 1 = rank 0, can use the servers only then.
        """
        return self.servers.one_world

    def _start_casa_import(self, servers: Collection[int] | None = None) -> None:
        """Import CASA on the servers (default: all) in the background, so the first CASA command need not wait."""
        self._casa_installed = casa_env.casa_available()
        self._casa_import_started = self._casa_installed and self.settings.import_casa
        if self._casa_import_started:
            self.run_on_servers(start_casa_import, servers=servers)

    def wait_for_casa(self, timeout: float | None = None) -> dict[int, str]:
        """Wait (at most ``timeout`` s) for the background CASA import to end; return each server's state."""
        reports = {}
        if self._casa_import_started:
            self.run_on_servers(join_casa_import, timeout, timeout=None if timeout is None else timeout + 30)
            reports = self.run_on_servers(server_report)  # each server's own word, wherever it runs
        return {info.server: (reports.get(info.server) or {}).get("casa") or self.casa_state(info.server)
                for info in self.servers}

    def casa_state(self, server: int) -> str:
        """Whether CASA is imported on a server.

        One of ``'ready'``, ``'importing'`` (the background import started
        with the servers is still running), ``'on first use'`` (no background
        import: ``CASA_MAGICS_IMPORT_CASA=0``), ``'not installed'`` (no
        ``casa`` extra here) or ``'failed: <why>'``. Read from the server's
        state file in the run directory, without disturbing the server.
        """
        if not self._casa_installed:
            return "not installed"
        if not self._casa_import_started:
            return "on first use"
        try:
            return casa_import_state_path(self.run_dir, server).read_text() or "importing"
        except OSError:  # not written yet, or on another host's disk
            return "importing"

    def run_on_servers(
        self, function: Any, *args: Any, timeout: float | None = None, servers: Collection[int] | None = None
    ) -> dict[int, Any]:
        """Call ``function(*args)`` once on each registered server and wait.

        Parameters
        ----------
        function : callable
            Sent to the servers (it must pickle).
        *args
            Its arguments.
        timeout : float, optional
            Seconds to wait for each answer (default ``CASA_MAGICS_START_TIMEOUT``).
        servers : collection of int, optional
            The server IDs to run it on (default: every server), e.g. only
            the one a replacement just took over.

        Returns
        -------
        dict
            ``{server_id: result}``. Engines run it in order with the
            requests sent before it, so it never overlaps a running command.
        """
        timeout = self.settings.start_timeout if timeout is None else timeout
        registered = set(self.client.ids)
        pending = {
            info.server: self.client[info.engine].apply_async(function, *args)
            for info in self.servers
            if info.engine in registered and (servers is None or info.server in servers)
        }
        return {server: result.get(timeout=timeout) for server, result in pending.items()}

    def set_command_log_level(self, level: str | None) -> None:
        """CASA log priority at which every server notes each request (None: no notes)."""
        self.run_on_servers(set_command_log_level, level)

    #: The Slurm job whose ranks are the servers (``scheduler='slurm'``), else None.
    slurm_job: "SlurmJob | None" = None
    #: Ends the embedded cluster if this process dies without stopping it (None: kept or connected).
    reaper: OrphanReaper | None = None

    def lost_reason(self, fresh: bool = False) -> str | None:
        """Why every server is gone at once (``"Slurm job 12 ended: CANCELLED"``), or None.

        Asked by the dispatcher's watchdog; Slurm is asked at most once per
        ``casa_magics.cluster.slurm.WATCH_INTERVAL`` unless ``fresh``.
        """
        return None if self.slurm_job is None else self.slurm_job.ended_reason(fresh)

    def scheduler_status(self) -> str | None:
        """The Slurm job as Slurm describes it now (``"Slurm job 12: RUNNING on node1"``), or None."""
        if self.slurm_job is None:
            return None
        try:
            info = self.slurm_job.info(fresh=True)
        except ClusterError as error:
            return f"Slurm job {self.slurm_job.job_id}: {error}"
        return None if info is None else info.describe()

    @property
    def owns_cluster(self) -> bool:
        """True when this session started the cluster (and will stop it)."""
        return self.cluster is not None

    @property
    def stopped(self) -> bool:
        return self._stopped

    def stop(self) -> None:
        """Close the client; stop the cluster only if this session started it.

        Engines of an embedded cluster are asked to shut down (even while a
        command runs), then the controller and ``mpiexec`` are stopped and any
        engine process still alive after a few seconds is killed. Safe to
        call more than once, and called at interpreter exit.
        """
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        atexit.unregister(self.stop)
        if self.cluster is not None:
            try:
                self.client.shutdown(targets="all", block=False)
            except Exception as error:  # engines may be gone already
                log.debug("engine shutdown request: %s", error)
            self._wait_for_engines_to_exit(grace=5.0)
            self._wait_for_remote_engines_to_unregister(grace=5.0)
        try:
            self.client.close()
        except Exception as error:  # closing is best effort; stopping is what matters
            log.debug("closing client: %s", error)
        if self.cluster is not None:
            self.cluster.stop_cluster_sync()
            self._wait_for_engines_to_exit(grace=0.0)
        if self.slurm_job is not None:
            try:
                self.slurm_job.cancel()  # whatever the engines did, nothing stays queued or running
            except ClusterError as error:  # say so, but stopping goes on (this also runs at exit)
                log.warning("%s", error)
        if self.reaper is not None:
            self.reaper.release()  # stopped cleanly: nothing left for it to end
        detached.forget(self)  # a detached cluster is stopped for good

    def _wait_for_engines_to_exit(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for this host's engines, then kill what is left."""
        import psutil

        processes = [process for process in (info.process() for info in self.servers) if process is not None]
        _, alive = psutil.wait_procs(processes, timeout=grace)
        for process in alive:
            process.kill()
        psutil.wait_procs(alive, timeout=5)

    def _wait_for_remote_engines_to_unregister(self, grace: float) -> None:
        """Wait up to ``grace`` seconds until the engines on other hosts have unregistered.

        Each such engine's nanny tells the controller when its engine has
        exited; with the controller stopped first, a nanny could wait forever
        to deliver that and outlive its job. (Engines on this host were
        waited for, by process.)
        """
        remote = {info.engine for info in self.servers if not info.on_this_host}
        deadline = time.monotonic() + grace
        while remote & set(self.client.ids) and time.monotonic() < deadline:
            time.sleep(0.05)

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "running"
        return f"<ClusterSession {self.description}, {len(self.servers)} servers, {state}>"


#: A server setup: ``setup(session, servers)``, ``servers`` the server IDs to set up (None: all).
ServerSetup = Callable[[ClusterSession, Optional[Collection[int]]], None]
#: Called with every new session once its servers are prepared (see add_server_setup).
_server_setups: list[ServerSetup] = []


def add_server_setup(setup: ServerSetup) -> None:
    """Run ``setup(session, servers)`` for every session from now on, as it starts or connects.

    Used for state every server must have after each (re)start, such as
    the casampi namespace. ``servers`` is None when every server of the
    session is to be set up, else the server IDs to set up (a replacement:
    the one new server), to pass on to :meth:`ClusterSession.run_on_servers`.
    Adding the same setup twice adds it once.

    Parameters
    ----------
    setup : callable
        ``setup(session, servers)``.
    """
    if setup not in _server_setups:
        _server_setups.append(setup)


def remove_server_setup(setup: ServerSetup) -> None:
    """Undo :func:`add_server_setup` (no error if it was not added)."""
    if setup in _server_setups:
        _server_setups.remove(setup)


_current: ClusterSession | None = None
_current_lock = threading.RLock()


def has_current_session() -> bool:
    """True when a live session exists (none is started by asking)."""
    return _current is not None and not _current.stopped


def live_current_session() -> ClusterSession | None:
    """The process-wide session if one is running, else None (none is started by asking)."""
    current = _current
    return current if current is not None and not current.stopped else None


def current_session() -> ClusterSession:
    """The process-wide session, started or connected on first use.

    It connects when ``CASA_MAGICS_PROFILE``, ``CASA_MAGICS_CLUSTER_ID`` or
    ``CASA_MAGICS_CONNECTION_FILE`` is set, and otherwise starts an embedded
    cluster.
    """
    global _current
    with _current_lock:
        if _current is None or _current.stopped:
            settings = load_settings()
            _current = ClusterSession.connect(settings=settings) if settings.wants_connection else ClusterSession.start(settings=settings)
        return _current


def set_current_session(session: ClusterSession | None) -> None:
    """Make ``session`` the process-wide one (None forgets the current one)."""
    global _current
    with _current_lock:
        _current = session


class _CurrentSessionWorld:
    """The MPI world :class:`~casa_magics.MPIEnvironment` describes in the client: the current session's."""

    def server_ids(self) -> list[int]:
        return list(current_session().servers.server_ids)

    def library(self) -> dict[str, Any] | None:
        return current_session().mpi_library()

    def stop(self) -> None:
        session = live_current_session()
        if session is not None:
            session.stop()


set_client_world(_CurrentSessionWorld())
