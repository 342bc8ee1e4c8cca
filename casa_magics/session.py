"""Starting, connecting to and stopping the ipyparallel cluster behind the servers.

A :class:`ClusterSession` is one client connection to one cluster. It either
started that cluster itself (an *embedded* cluster: a controller on loopback
and N engines launched by ``mpiexec``), and then stops it again, or it
connected to a running one (``ipcluster start --engines=MPI``), and then
leaves it running.

The process-wide session used by :class:`~casa_magics.MPICommandClient` and
the magics is reached through :func:`current_session`.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import functools
import logging
import threading
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable

import ipyparallel as ipp

from . import casa_env
from .checks import check_positive_int, tail
from .config import Settings, load_settings
from .errors import ClusterError
from .launcher import find_mpiexec, is_hydra, plan_launch
from .memory import effective_memory_limit, parse_memory_size, start_memory_watch
from .orphan_reaper import OrphanReaper
from .replacement import Replacer
from . import detached
from .environment import mpi_library_report
from .run_dir import default_run_dir, keep_run_dir
from .slurm import SlurmJob
from .slurm_launch import place_servers
from .server_map import ServerMap
from .server_side import (
    SERVER_ROLE,
    casa_import_state_path,
    engine_identity,
    join_casa_import,
    prepare_engine,
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
        self._only = threading.local()  # run_on_servers' targets while a replacement is prepared
        #: The registry entry of a detached cluster (see casa_magics.detached), else None.
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
            :mod:`casa_magics.replacement`). Not for Slurm jobs.
        keep : bool, optional
            Start the cluster detached: it outlives this process, and a later
            one re-attaches with :func:`casa_magics.detached.reattach`
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
        settings = settings or load_settings()
        if memory_limit is not None:
            settings = _with_memory_limit(settings, memory_limit)
        keep = settings.keep_cluster if keep is None else keep
        if keep and scheduler is not None:
            raise ClusterError("keep=True does not apply to scheduler='slurm': the Slurm job ends with its time limit")
        placement = place_servers(
            scheduler, partition=partition, time_limit=time_limit, account=account, sbatch_args=sbatch_args,
            controller_ip=controller_ip, configured_ip=settings.controller_ip, hostfile=bool(hostfile or settings.hostfile),
        )
        n = placement.servers(n)
        n = settings.engines if n is None else n
        check_positive_int(n, "number of servers", ClusterError)
        timeout = settings.start_timeout if timeout is None else timeout
        hostfile = hostfile or settings.hostfile
        extra_args = list(settings.mpiexec_args if mpiexec_args is None else mpiexec_args)
        if placement.job is not None and hostfile:
            raise ClusterError(f"a hostfile ({hostfile}) does not apply to scheduler='slurm': Slurm chooses the nodes")

        run_dir = default_run_dir(settings)
        # The role is fixed at launch: casa_magics in an engine knows it is a server.
        environment = {**casa_env.casa_environment(run_dir), "CASA_MAGICS_ROLE": SERVER_ROLE}
        environment["CASA_MAGICS_RUN_DIR"] = str(run_dir)  # where each server's keeper notes how it ended

        why_not = _mpi_usable(settings.mpiexec)
        engine_kwargs: dict[str, Any] = {"environment": environment}
        if engine_command:
            engine_kwargs["engine_cmd"] = list(engine_command)
        if why_not is None:
            engines = "mpi"
            mpiexec = find_mpiexec(settings.mpiexec)
            plan = plan_launch(
                mpiexec, hydra=is_hydra(mpiexec), extra_args=extra_args, hostfile=hostfile, engine_command=engine_command
            )
            engine_kwargs.update(mpi_cmd=plan.mpi_cmd, mpi_args=plan.mpi_args, engine_cmd=plan.engine_cmd)
            environment.update(plan.environment)
        elif settings.allow_no_mpi and not (extra_args or hostfile) and placement.job is None:
            warnings.warn(f"MPI is not available ({why_not}): starting plain local engines", RuntimeWarning, stacklevel=2)
            engines = "local"
        else:
            raise ClusterError(f"cannot start MPI servers: {why_not}")

        cluster_id = f"casa-magics-{uuid.uuid4().hex[:8]}"
        cluster = ipp.Cluster(
            engines=engines,
            n=n,
            cluster_id=cluster_id,
            profile_dir=str(_private_dir(run_dir / "ipython-profile")),
            controller_ip=placement.controller_ip,
            # No task database: the client keeps what it needs, the controller need not.
            # A detached cluster's keeps recent results for a client that re-attaches.
            controller_args=detached.CONTROLLER_ARGS if keep else ["--IPController.db_class=NoDB"],
            load_profile=False,
            log_level=logging.WARNING,
            # Its own logger, so launcher output does not land in a notebook cell.
            log=logging.getLogger("casa_magics.cluster"),
            shutdown_atexit=not keep,
        )
        kind = "MPI" if engines == "mpi" else "local"
        what = f"embedded cluster of {n} {kind} server{'s' if n != 1 else ''}"
        # Ends the cluster if this process dies without stopping it; a kept cluster must outlive it.
        reaper = None if keep else OrphanReaper(cluster_id)
        if placement.job is not None:
            placement.job.reaper = reaper  # and scancels the job
        try:
            if placement.job is not None:
                client = placement.launch(cluster, n, timeout, plan, environment, run_dir)
            else:
                client = cls._launch(cluster, n, timeout, engine_kwargs)
            description = placement.describe(what)
            session = cls._open(client, cluster=cluster, run_dir=run_dir, settings=settings, description=description)
            session.slurm_job = placement.job
            session.reaper = reaper
            if reaper is not None:
                reaper.watch_cluster(cluster, session.servers)
            if (settings.replace_lost if replace_lost is None else replace_lost) and placement.job is None:
                session.replacer = Replacer(session, engine_kwargs)
            if keep:
                detached.register(session, engine_kwargs)
            return session
        except BaseException as error:
            placement.cancel()
            cluster.stop_cluster_sync()
            if reaper is not None:
                reaper.release()
            if not isinstance(error, KeyboardInterrupt):
                keep_run_dir(f"the {what} did not start")
            raise

    @staticmethod
    def _launch(cluster: ipp.Cluster, n: int, timeout: float, engine_kwargs: dict[str, Any]) -> ipp.Client:
        cluster.start_controller_sync()
        engine_set_id = cluster.start_engines_sync(n, **engine_kwargs)
        engine_set = cluster.engines[engine_set_id]
        stopped: concurrent.futures.Future = concurrent.futures.Future()

        def watch_launcher() -> None:
            try:
                code = engine_set.process.wait()
            except Exception as error:  # the process may already be reaped by ipyparallel
                code = error
            if not stopped.done():
                stopped.set_result(code)

        if getattr(engine_set, "process", None) is not None:  # one mpiexec (local engine sets have none)
            threading.Thread(target=watch_launcher, name="casa-magics-launch-watch", daemon=True).start()
        client = cluster.connect_client_sync()
        registered = client.wait_for_engines(n, block=False, timeout=timeout, interactive=False)
        done, _ = concurrent.futures.wait([registered, stopped], timeout=timeout + 5, return_when="FIRST_COMPLETED")
        if registered in done and registered.exception() is None:
            return client
        client.close()
        output = tail(engine_set.get_output() or "(no output)")
        if stopped in done:
            reason = f"the engines exited during start-up (mpiexec exit status {stopped.result()})"
        else:
            reason = f"only {len(client.ids)} of {n} engines registered within {timeout:g} s"
        command = " ".join(engine_set.args) if getattr(engine_set, "args", None) else "?"
        raise ClusterError(f"cannot start servers: {reason}\ncommand: {command}\nengine output:\n{output}")

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
            If the cluster cannot be reached; the message lists the clusters
            that are visible.
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
            client.wait_for_engines(n or 1, timeout=timeout, interactive=False)
        except Exception as error:
            visible = visible_clusters()
            listing = "; ".join(visible) if visible else "none"
            why = " ".join(str(error).split())  # one line
            raise ClusterError(f"cannot connect to cluster ({target}): {why}. Visible clusters: {listing}") from None
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
    def _prepare_servers(self) -> None:
        """Give every engine its server ID, run directory and CASA set-up, then run the server setups."""
        environment = casa_env.casa_environment(self.run_dir)
        pending = [
            self.client[info.engine].apply_async(
                prepare_engine, info.server, str(self.run_dir), environment, len(self.servers)
            )
            for info in self.servers
            if getattr(self._only, "servers", None) is None or info.server in self._only.servers
        ]
        for result in pending:
            result.get(timeout=self.settings.start_timeout)
        self.run_on_servers(start_memory_watch, self.memory_limit)
        for setup in list(_server_setups):
            setup(self)
        self._start_casa_import()

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
        self._only.servers = {server}
        try:
            self._prepare_servers()
        finally:
            self._only.servers = None

    def servers_share_one_world(self) -> bool:
        """True when the servers are the ranks of one MPI world (see :attr:`ServerMap.one_world`).

        MPI-based CASA code that needs every server in one world, with
        server 1 = rank 0, can use the servers only then.
        """
        return self.servers.one_world

    def _start_casa_import(self) -> None:
        """Import CASA on every server in the background, so the first CASA command need not wait."""
        self._casa_installed = casa_env.casa_available()
        self._casa_import_started = self._casa_installed and self.settings.import_casa
        if self._casa_import_started:
            self.run_on_servers(start_casa_import)

    def wait_for_casa(self, timeout: float | None = None) -> dict[int, str]:
        """Wait (at most ``timeout`` s) for the background CASA import to end; return each server's state."""
        if self._casa_import_started:
            self.run_on_servers(join_casa_import, timeout, timeout=None if timeout is None else timeout + 30)
        return {info.server: self.casa_state(info.server) for info in self.servers}

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

    def run_on_servers(self, function: Any, *args: Any, timeout: float | None = None) -> dict[int, Any]:
        """Call ``function(*args)`` once on every registered server and wait.

        Returns ``{server_id: result}``. Engines run it in order with the
        requests sent before it, so it never overlaps a running command.
        """
        timeout = self.settings.start_timeout if timeout is None else timeout
        registered = set(self.client.ids)
        only = getattr(self._only, "servers", None)  # set while a replacement is prepared
        pending = {
            info.server: self.client[info.engine].apply_async(function, *args)
            for info in self.servers
            if info.engine in registered and (only is None or info.server in only)
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
        :data:`casa_magics.slurm.WATCH_INTERVAL` unless ``fresh``.
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

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "running"
        return f"<ClusterSession {self.description}, {len(self.servers)} servers, {state}>"


#: Called with every new session once its servers are prepared (see add_server_setup).
_server_setups: list[Callable[[ClusterSession], None]] = []


def add_server_setup(setup: Callable[[ClusterSession], None]) -> None:
    """Run ``setup(session)`` for every session from now on, as it starts or connects.

    Used for state every server must have after each (re)start, such as
    the casampi namespace. Adding the same setup twice adds it once.
    """
    if setup not in _server_setups:
        _server_setups.append(setup)


def remove_server_setup(setup: Callable[[ClusterSession], None]) -> None:
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
