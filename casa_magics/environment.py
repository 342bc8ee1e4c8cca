"""casampi's ``MPIEnvironment``: what a script asks about the MPI world."""

from __future__ import annotations

import socket

from . import session as _session

__all__ = ["MPIEnvironment"]


class MPIEnvironment:
    """The MPI world as casampi scripts see it.

    In mpicasa the world exists from process start; here it exists once the
    cluster is up, so asking for the server list brings the cluster up.
    """

    #: Name of this (the client's) host.
    hostname: str = socket.gethostname()
    #: The client is never a server; mirrors casampi.
    is_mpi_client: bool = True

    @staticmethod
    def mpi_server_rank_list() -> list[int]:
        """Server IDs ``[1, ..., N]`` (MPI rank + 1 of each engine)."""
        return _session.current_session().servers.server_ids

    @staticmethod
    def mpi_processor_rank() -> int:
        """The client's rank: 0, as in mpicasa."""
        return 0
