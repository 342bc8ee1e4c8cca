"""casampi's ``get_server_status()``: one dict per server.

Runs in the client. Its one job: describe each server as casampi's status
dict does (rank, host, pid, busy, the command it runs and for how long, what
is queued for it, timeout), with what casa_magics adds (lost and why,
replaced, its CASA log, whether CASA is imported, memory figures). The part
read from the dispatcher's records is taken under its lock
(:func:`status_rows`); the rest (files and ``/proc`` for servers on this
host, the servers' own reports for the others) without it
(:func:`add_machine_figures`), since answers and the watchdog need the lock.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Mapping

from casa_magics.client.server_record import ServerRecord
from casa_magics.cluster.logs import server_log_path
from casa_magics.cluster.control_channel import ask_reports
from casa_magics.cluster.memory_limit import available_memory, memory_figures

__all__ = ["status_row", "status_rows", "add_machine_figures", "RemoteReports", "REPORT_TIMEOUT"]

#: Seconds a status waits for the reports of servers on other hosts.
REPORT_TIMEOUT = 2.0


def status_row(server: ServerRecord, now: float, log: str) -> dict[str, Any]:
    """One server's status, from the dispatcher's record (no files read).

    Parameters
    ----------
    server : ServerRecord
        The server.
    now : float
        The time the status is for.
    log : str
        The server's CASA log file.
    """
    info = server.info
    head = server.in_flight[0].requests[0] if server.in_flight else None
    return {
        "rank": info.rank,
        "processor": info.host,
        "pid": info.pid,
        "engine": info.engine,
        "busy": bool(server.in_flight),
        "command": head.compiled.source if head else None,
        "command_start_time": server.head_since if head else None,
        "running_for": now - server.head_since if head and server.head_since else None,
        "queued": sum(len(m.requests) for m in server.in_flight) + len(server.waiting),
        "timeout": server.timed_out or server.loss is not None,
        "lost": server.loss.text if server.loss is not None else None,
        "log": log,
        "replaced": server.replaced,
    }


def status_rows(servers: Mapping[int, ServerRecord], session: Any, now: float) -> dict[int, dict[str, Any]]:
    """Every server's status from the dispatcher's records (call with its lock held).

    Parameters
    ----------
    servers : mapping
        Server ID -> its record.
    session : ClusterSession
        The session (for the log paths).
    now : float
        The time the status is for.
    """
    return {
        server_id: status_row(server, now, str(server_log_path(session, server_id)))
        for server_id, server in servers.items()
    }


class RemoteReports:
    """The latest reports of servers on other hosts, asked at most once per ``max_age`` seconds.

    The live view draws twice a second and a status may be asked in a loop:
    this keeps the control messages to a server at about one a second (the
    watchdog's pace), however often the figures are read.

    Parameters
    ----------
    max_age : float
        Seconds a report is used before the server is asked again.
    """

    def __init__(self, max_age: float = 1.0) -> None:
        self.max_age = max_age
        self._lock = threading.Lock()
        self._reports: dict[int, tuple[float, int, dict | str]] = {}  # server -> (when, engine, report)

    def get(self, client: Any, engines: Mapping[int, int]) -> dict[int, dict | str]:
        """Each server's report (see :func:`~casa_magics.cluster.control_channel.ask_reports`), fresh enough.

        Parameters
        ----------
        client : ipyparallel.Client
            The session's client.
        engines : mapping
            Server ID -> its engine ID now (a replaced server is asked afresh).
        """
        now = time.monotonic()
        with self._lock:
            kept = {server: entry for server, entry in self._reports.items()
                    if server in engines and entry[1] == engines[server] and now - entry[0] < self.max_age}
            stale = {server: engine for server, engine in engines.items() if server not in kept}
            if stale:
                for server, report in ask_reports(client, stale, REPORT_TIMEOUT).items():
                    kept[server] = (time.monotonic(), stale[server], report)
            self._reports = kept
            return {server: entry[2] for server, entry in kept.items()}


def add_machine_figures(
    status: dict[int, dict[str, Any]], infos: Mapping[int, Any], session: Any, reports: RemoteReports | None = None
) -> dict[int, dict[str, Any]]:
    """Add each server's CASA state and memory figures to its status (no lock held).

    A server on this host is read from outside (its process in ``/proc``,
    its CASA state file), which needs nothing from it. A server on another
    host reports itself, through its engine's control channel, within
    :data:`REPORT_TIMEOUT` seconds; one that does not answer gets ``None``
    figures and says why in ``casa``. Lost servers and servers that stopped
    answering are not asked.

    Parameters
    ----------
    status : dict
        Server ID -> its status so far (e.g. from :func:`status_rows`); changed in place.
    infos : mapping
        Server ID -> ServerInfo, taken with the status.
    session : ClusterSession
        The session (its client, memory limit, its servers' CASA state).
    reports : RemoteReports, optional
        Where recent reports are kept (default: ask afresh).

    Returns
    -------
    dict
        ``status``.
    """
    available, limit = available_memory(), session.memory_limit
    remote = {}
    for server_id, info in infos.items():
        if info.on_this_host:
            status[server_id]["casa"] = session.casa_state(server_id)
            status[server_id].update(memory_figures(info, limit, available))
        else:
            status[server_id].update(casa=None, memory=None, memory_limit=limit, available_memory=None)
            if not (status[server_id].get("lost") or status[server_id].get("timeout")):
                remote[server_id] = info.engine
    if remote:
        answers = reports.get(session.client, remote) if reports is not None else ask_reports(
            session.client, remote, REPORT_TIMEOUT)
    else:
        answers = {}
    for server_id, report in answers.items():
        if isinstance(report, str):
            status[server_id]["casa"] = f"unknown: {report}"
            continue
        status[server_id].update(memory=report["memory"], available_memory=report["available_memory"])
        status[server_id]["casa"] = report["casa"] or session.casa_state(server_id)
    return status
