"""Clusters that outlive the kernel: started detached, listed, re-attached, stopped for good.

``ClusterSession.start(keep=True)`` (``%casa_cluster start --keep``,
``CASA_MAGICS_KEEP_CLUSTER=1``) starts a cluster that does not stop at
interpreter exit: ipyparallel's ``Cluster(shutdown_atexit=False)``, whose
controller and ``mpiexec`` run in sessions of their own. The cluster is noted
in this user's registry (``CASA_MAGICS_DETACHED_DIR``, default
``~/.casa_magics/detached``): one JSON file per cluster with ipyparallel's
cluster file, the run directory, the server map and the launch plan. While a
process is attached it touches a heartbeat file every :data:`HEARTBEAT`
seconds, so a later process knows when the last one went away.

:func:`reattach` connects a new process to such a cluster: the same engines,
their namespaces as they were, the same server map (read from the registry,
so busy servers need not answer first). Its controller keeps the last 1024
messages and their results (ipyparallel's ``DictDB``), from which
:func:`previous_requests` tells what became of the requests the previous
process had in flight. Stopping the session stops the cluster for good and
removes it from the registry.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import logging
import os
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from casa_magics.core.checks import short
from casa_magics.core.errors import ClusterError

if TYPE_CHECKING:
    from casa_magics.core.config import Settings

# The ``session`` arguments below are ClusterSession objects; the session imports this
# module (never the other way round), so they are typed loosely here.

__all__ = [
    "DetachedCluster",
    "detached_clusters",
    "register",
    "save_server_map",
    "forget",
    "find_detached",
    "connect_detached",
    "attach",
    "previous_requests",
    "registry_dir",
    "CONTROLLER_ARGS",
    "HEARTBEAT",
]

log = logging.getLogger("casa_magics")

#: Seconds between two heartbeats of the process attached to a detached cluster.
HEARTBEAT = 2.0
#: The controller of a detached cluster keeps recent messages and results for a re-attaching client.
CONTROLLER_ARGS = [
    "--IPController.db_class=DictDB",
    "--DictDB.record_limit=1024",
    f"--DictDB.size_limit={256 * 1024**2}",
]


def registry_dir(settings: "Settings", create: bool = False) -> Path:
    """This user's directory of detached clusters (with ``create``, made readable by the user only)."""
    path = Path(settings.detached_dir).expanduser() if settings.detached_dir else Path.home() / ".casa_magics" / "detached"
    if create:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _pid_alive(pid: int | None) -> bool:
    import psutil

    try:
        return pid is not None and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@dataclasses.dataclass
class DetachedCluster:
    """One entry of the registry: a detached cluster of this user."""

    cluster_id: str
    entry: Path
    cluster_file: str
    run_dir: str
    created: float
    description: str
    servers: list[dict[str, Any]]
    mpi: bool
    engine_kwargs: dict[str, Any]
    memory_limit: int | None
    replace_lost: bool
    owner_pid: int | None
    #: The Slurm job whose tasks the servers are (None: not started through Slurm).
    slurm_job_id: str | None = None

    @property
    def heartbeat(self) -> Path:
        return self.entry.with_suffix(".alive")

    @property
    def last_alive(self) -> float | None:
        """When a process attached to it last gave a sign of life (None: never)."""
        try:
            return self.heartbeat.stat().st_mtime
        except OSError:
            return None

    @property
    def attached(self) -> bool:
        """True while a live process is attached (its heartbeat is fresh)."""
        last = self.last_alive
        return _pid_alive(self.owner_pid) and last is not None and time.time() - last < 3 * HEARTBEAT

    @property
    def running(self) -> bool:
        """True while ipyparallel's cluster file exists (the cluster was not stopped)."""
        return Path(self.cluster_file).exists()

    def row(self) -> dict[str, Any]:
        """For ``%casa_cluster list``."""
        return {
            "cluster": self.cluster_id,
            "servers": len(self.servers),
            "age": _age(time.time() - self.created),
            "attached": f"yes (pid {self.owner_pid})" if self.attached else "no",
            "run dir": self.run_dir,
        }

    def _save(self) -> None:
        data = dataclasses.asdict(self)
        data["entry"] = str(self.entry)
        partial = self.entry.with_suffix(".partial")
        partial.write_text(json.dumps(data, indent=1))
        partial.replace(self.entry)


def _load(path: Path) -> DetachedCluster | None:
    try:
        data = json.loads(path.read_text())
        data["entry"] = path
        return DetachedCluster(**data)
    except (OSError, ValueError, TypeError):
        return None


def detached_clusters(settings: "Settings") -> list[DetachedCluster]:
    """This user's detached clusters, oldest first; entries of clusters stopped elsewhere are removed."""
    found = []
    for path in sorted(registry_dir(settings).glob("*.json")):
        cluster = _load(path)
        if cluster is None:
            continue
        if not cluster.running:
            _remove(cluster)
            continue
        found.append(cluster)
    return sorted(found, key=lambda c: c.created)


def _remove(cluster: DetachedCluster) -> None:
    for path in (cluster.entry, cluster.heartbeat):
        try:
            path.unlink()
        except OSError:
            pass


def _server_rows(session: Any) -> list[dict[str, Any]]:
    return [dataclasses.asdict(info) for info in session.servers]


class _Heartbeat(threading.Thread):
    """Touches the heartbeat file while its session runs."""

    def __init__(self, session: Any, path: Path) -> None:
        super().__init__(name="casa-magics-heartbeat", daemon=True)
        self.session, self.path = session, path

    def run(self) -> None:
        while not self.session.stopped:
            try:
                self.path.touch()
            except OSError:  # the registry went away: nothing to keep fresh
                return
            time.sleep(HEARTBEAT)


def _attach(session: Any, cluster: DetachedCluster) -> None:
    """Make ``session`` the one attached to ``cluster``: it keeps the cluster at exit and beats."""
    from casa_magics.cluster import run_dir
    session.detached = cluster
    atexit.unregister(session.stop)  # the cluster outlives this process
    if run_dir._created is not None and Path(cluster.run_dir) == run_dir._created:  # this process made it
        run_dir.keep_run_dir(_keeps(cluster))
    cluster.owner_pid = os.getpid()
    cluster._save()
    _Heartbeat(session, cluster.heartbeat).start()
    atexit.register(_last_beat, session, cluster.heartbeat)


def _last_beat(session: Any, path: Path) -> None:
    """At exit, note when this process let the cluster go (it keeps running)."""
    if not session.stopped:
        try:
            path.touch()
        except OSError:
            pass


def register(session: Any, engine_kwargs: dict[str, Any]) -> DetachedCluster:
    """Note a just-started detached cluster in the registry and attach ``session`` to it."""
    settings = session.settings
    cluster_id = session.cluster.cluster_id
    cluster = DetachedCluster(
        cluster_id=cluster_id,
        entry=registry_dir(settings, create=True) / f"{cluster_id}.json",
        cluster_file=session.cluster.cluster_file,
        run_dir=str(session.run_dir),
        created=time.time(),
        description=session.description,
        servers=_server_rows(session),
        mpi=session.servers.mpi,
        engine_kwargs=engine_kwargs,
        memory_limit=settings.memory_limit,
        replace_lost=session.replacer is not None,
        owner_pid=os.getpid(),
        slurm_job_id=session.slurm_job.job_id if getattr(session, "slurm_job", None) is not None else None,
    )
    _attach(session, cluster)
    return cluster


def save_server_map(session: Any) -> None:
    """Record a changed server map (after a replacement) for whoever re-attaches."""
    cluster: DetachedCluster | None = getattr(session, "detached", None)
    if cluster is not None:
        cluster.servers = _server_rows(session)
        cluster._save()


def _keeps(cluster: DetachedCluster) -> str:
    return f"detached cluster {cluster.cluster_id} uses it"


def forget(session: Any) -> None:
    """Remove a stopped detached cluster from the registry, and its temporary run directory.

    The run directory stays when something this process noted needs its
    logs (a lost server), as for any cluster.
    """
    import shutil

    from casa_magics.cluster import run_dir
    cluster: DetachedCluster | None = getattr(session, "detached", None)
    if cluster is None:
        return
    _remove(cluster)
    unneeded = run_dir.release_run_dir(_keeps(cluster))
    mine = run_dir._created is not None and Path(cluster.run_dir) == run_dir._created  # removed at exit, as usual
    if unneeded and not mine and run_dir.is_temporary_run_dir(cluster.run_dir):
        shutil.rmtree(cluster.run_dir, ignore_errors=True)  # made by the process that started the cluster


def find_detached(cluster_id: str | None, settings: "Settings") -> DetachedCluster:
    """The detached cluster of this user to re-attach to (see :meth:`ClusterSession.reattach`).

    Raises
    ------
    ClusterError
        When there is no such cluster, several and none was named, or
        another live process is attached to it; the message lists them.
    """
    clusters = detached_clusters(settings)
    listing = "; ".join(f"{c.cluster_id} ({len(c.servers)} servers, started {_age(time.time() - c.created)} ago)" for c in clusters)
    chosen = [c for c in clusters if cluster_id is None or c.cluster_id == cluster_id]
    if not chosen:
        what = "no detached cluster" if cluster_id is None else f"no detached cluster {cluster_id!r}"
        raise ClusterError(f"{what} of this user (in {registry_dir(settings)}); detached clusters: {listing or 'none'}")
    if len(chosen) > 1:
        raise ClusterError(f"{len(chosen)} detached clusters, name one with its cluster ID: {listing}")
    (cluster,) = chosen
    if cluster.attached:
        raise ClusterError(f"detached cluster {cluster.cluster_id} is in use by process {cluster.owner_pid}")
    return cluster


def connect_detached(cluster: DetachedCluster, timeout: float) -> tuple[Any, Any]:
    """Connect to a detached cluster's controller: ``(ipyparallel Cluster, Client)``, one engine registered."""
    import ipyparallel as ipp

    try:
        ipp_cluster = ipp.Cluster.from_file(cluster.cluster_file, log=logging.getLogger("casa_magics.cluster"))
        client = ipp_cluster.connect_client_sync()
        client.wait_for_engines(1, timeout=timeout, interactive=False)
    except Exception as error:
        raise ClusterError(f"cannot re-attach to detached cluster {cluster.cluster_id}: {short(' '.join(str(error).split()))}") from None
    return ipp_cluster, client


def attach(session: Any, cluster: DetachedCluster, since: float | None) -> None:
    """Attach a re-attached ``session`` to ``cluster``, and note what became of the earlier requests."""
    _attach(session, cluster)
    hub = _hub_requests(session)  # the controller's record, read once: it can be large
    session.previous_requests = previous_requests(session, since, hub)
    # Request IDs go on from the previous client's: a server's cancel board names requests by ID.
    session.first_request_id = max((request.id for _, requests in hub for request in requests), default=0) + 1

def _hub_requests(session: Any) -> list[tuple[dict, list]]:
    """The controller's records of other clients' request messages, each with its requests."""
    from ipyparallel.serialize import unpack_apply_message

    from casa_magics.server.runner import request_runner

    client = session.client
    keys = ["msg_id", "buffers", "engine_uuid", "started", "completed", "result_content", "result_buffers"]
    try:
        records = client.db_query({"client_uuid": {"$ne": client.session.session}}, keys=keys)
    except Exception as error:  # e.g. a controller without a task database
        log.warning("the controller cannot say what happened to earlier requests: %s", error)
        return []
    found = []
    for record in records:
        try:
            function, args, _ = unpack_apply_message(record["buffers"], copy=True)
        except Exception:  # not a message this package sent
            continue
        if function is request_runner and args:
            found.append((record, list(args[0])))
    return found


def _stamp(moment: datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()


def previous_requests(
    session: Any, since: float | None = None, hub: list[tuple[dict, list]] | None = None
) -> list[dict[str, Any]]:
    """What became of the requests other clients sent, as the controller and the servers tell.

    Parameters
    ----------
    since : float, optional
        When the previous client was last alive (a Unix time). Requests
        answered before then are left out (that client had their answers);
        None lists every request the controller remembers.
    hub : list, optional
        The controller's record as already read (default: read it now).

    Returns
    -------
    list of dict
        One per request, in request ID order: ``id``, ``server``,
        ``command``, ``state`` (``'queued'``, ``'running'``, ``'ran; its
        batch is still running'``, ``'waiting in its batch'``, ``'finished'``
        or ``'lost with its server'``), and for finished ones
        ``successful``, ``ret`` and ``traceback`` (the response the previous
        client never got). Call again later to see running ones finish.

    Notes
    -----
    Requests the previous client still held (not yet sent to a server) died
    with it and are not listed. The controller keeps the last 1024 messages.
    The running one is known from the server's cancel board (same host).
    """
    client = session.client
    engines = {uuid: engine for engine, uuid in client._engines.items()}
    running_now = _running_now(session)
    found = []
    for record, requests in _hub_requests(session) if hub is None else hub:
        completed = _stamp(record.get("completed"))
        if completed is not None and since is not None and completed < since - HEARTBEAT:
            continue
        engine = engines.get(record.get("engine_uuid"))
        server = session.servers.server_of(engine) if engine in {i.engine for i in session.servers} else None
        running = running_now.get(server, 0) if server is not None else 0
        if running not in {request.id for request in requests}:
            running = 0  # this message has not started: the server runs an earlier one
        found += _message_rows(record, requests, server, running)
    return sorted(found, key=lambda row: row["id"])


def _running_now(session: Any) -> dict[int, int]:
    """The request each server runs now (0: none).

    Read from the cancel board of a server on this host; a server on another
    host is asked (its control channel); one that does not answer is left out.
    """
    from casa_magics.cluster.control_channel import ask_reports
    from casa_magics.core.cancel_board import CancelBoard, board_path

    running_now: dict[int, int] = {}
    elsewhere = {}
    for info in session.servers:
        if not info.on_this_host:
            elsewhere[info.server] = info.engine
            continue
        try:
            board = CancelBoard(board_path(session.run_dir, info.server))
            running_now[info.server] = board.running
            board.close()
        except OSError:
            pass
    for server, report in (ask_reports(session.client, elsewhere) if elsewhere else {}).items():
        if isinstance(report, dict):
            running_now[server] = report["running"]
    return running_now


def _message_rows(record: dict, requests: list, server: int | None, running: int) -> list[dict[str, Any]]:
    """The rows of :func:`previous_requests` for one message's requests (``running``: the one running, or 0)."""
    from ipyparallel.serialize import deserialize_object

    from casa_magics.core.wire import read_outcome

    completed = record.get("completed") is not None
    outcomes: list[dict] = []
    if completed and (record.get("result_content") or {}).get("status") == "ok":
        outcomes, _ = deserialize_object(record["result_buffers"])
    by_id = {outcome["id"]: outcome for outcome in outcomes}
    rows = []
    for request in requests:
        row: dict[str, Any] = {"id": request.id, "server": server, "command": request.source}
        if completed:
            outcome = by_id.get(request.id)
            if outcome is None:
                row["state"] = "lost with its server"
            else:
                successful, ret, _parameters, traceback = read_outcome(outcome, None, request.id, server)
                row.update(state="finished", successful=successful, ret=ret, traceback=traceback)
        elif not running:
            row["state"] = "queued"
        elif request.id == running:
            row["state"] = "running"
        elif request.id < running:
            row["state"] = "ran; its batch is still running"
        else:
            row["state"] = "waiting in its batch"
        rows.append(row)
    return rows
