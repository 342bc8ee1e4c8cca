"""Where each server's CASA log is, and reading its end.

Runs in the client.
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path

from casa_magics.cluster.casa_env import LOGFILE_ENV, SERVER_LOG_TEMPLATE, expand_logfile
from casa_magics.core.checks import check_positive_int
from casa_magics.core.errors import CommandRequestError
from casa_magics.cluster.session import ClusterSession, current_session

__all__ = ["server_log_path", "read_tail", "casa_log_tail"]


def server_log_path(session: ClusterSession, server: int) -> Path:
    """The CASA log file of a server (``<run_dir>/casa-server-<id>.log`` by default)."""
    if server not in session.servers:
        raise CommandRequestError(f"unknown server {server!r}: servers are {session.servers.server_ids}")
    template = os.environ.get(LOGFILE_ENV) or str(session.run_dir / SERVER_LOG_TEMPLATE)
    return Path(expand_logfile(template, {"CASA_MAGICS_SERVER_ID": str(server)}))


def read_tail(path: str | os.PathLike[str], lines: int = 20) -> str:
    """The last ``lines`` lines of a text file ('' if it does not exist yet)."""
    try:
        with open(path, errors="replace") as handle:
            return "".join(deque(handle, maxlen=lines))
    except FileNotFoundError:
        return ""


def casa_log_tail(server: int, lines: int = 20, session: ClusterSession | None = None) -> str:
    """The end of a server's CASA log.

    Parameters
    ----------
    server : int
        Server ID.
    lines : int
        How many lines (default 20).
    session : ClusterSession, optional
        Default: the process-wide session.

    Returns
    -------
    str
        The lines, or '' while the server has not logged anything (CASA
        writes its log only once ``casatools`` is imported there).

    Examples
    --------
    >>> print(casa_log_tail(1, lines=5))   # doctest: +SKIP
    """
    check_positive_int(lines, "lines")
    session = session or current_session()
    path = server_log_path(session, server)
    info = session.servers.info(server)
    if info.on_this_host:
        return read_tail(path, lines)
    # Another host: the server reads its own file.
    view = session.client[info.engine]
    return view.apply_sync(read_tail, str(path), lines)
