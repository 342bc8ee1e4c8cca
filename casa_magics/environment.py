"""casampi's ``MPIEnvironment``: what a script asks about the MPI world."""

from __future__ import annotations

import os
import socket

from . import session as _session
from .server_side import SERVER_ROLE

__all__ = ["MPIEnvironment", "process_role"]


def process_role(environ: "os._Environ[str] | dict[str, str] | None" = None) -> str:
    """``'server'`` in a process casa_magics launched (or prepared) as a server, else ``'client'``.

    Read from ``CASA_MAGICS_ROLE``, which the launcher sets in every
    server's environment (and :func:`~casa_magics.server_side.prepare_engine`
    sets on engines started by hand), never guessed.
    """
    environ = os.environ if environ is None else environ
    return "server" if environ.get("CASA_MAGICS_ROLE") == SERVER_ROLE else "client"


class MPIEnvironment:
    """The MPI world as casampi scripts (and casatasks) see it.

    In mpicasa the world exists from process start; here it exists once the
    cluster is up, so asking for the server list brings the cluster up.

    In the client, ``is_mpi_enabled`` and ``is_mpi_client`` are True. On a
    server both are False: CASA code there runs serially and never reaches
    for a cluster of its own (casatasks then treats the server like a plain
    CASA session).
    """

    #: Name of this process's host.
    hostname: str = socket.gethostname()
    #: True in the client: casatasks may send work to the servers.
    is_mpi_enabled: bool = process_role() == "client"
    #: True in the client, False on a server.
    is_mpi_client: bool = process_role() == "client"
    #: The client's rank in casampi's numbering (servers are 1..N).
    mpi_client_rank: int = 0
    #: The CASA log priority of the servers' per-request notes (casampi's name).
    command_handling_log_level: str = "NORMAL"

    @staticmethod
    def mpi_server_rank_list() -> list[int]:
        """Server IDs ``[1, ..., N]`` (MPI rank + 1 of each engine), a new list each call."""
        return list(_session.current_session().servers.server_ids)

    @staticmethod
    def mpi_processor_rank() -> int:
        """The client's rank: 0, as in mpicasa."""
        return 0

    @classmethod
    def is_mpi_disabled_or_client(cls) -> bool:
        """True unless this process is a server (casampi's helper)."""
        return cls.is_mpi_client or not cls.is_mpi_enabled
