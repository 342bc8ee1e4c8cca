"""The mapping between CASA server IDs and ipyparallel engine IDs.

casampi numbers its servers by MPI rank (rank 0 is the client, so servers are
1..N). Here every server is an engine, and engines register with the
controller in whatever order they come up, so the engine ID says nothing
about the rank. The map is read from the engines themselves: server ID =
MPI rank + 1. This module is the only place a server ID becomes an engine ID.

Runs in the client.
"""

from __future__ import annotations

import enum
import socket
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

from casa_magics.core.checks import short
from casa_magics.core.errors import CommandRequestError

if TYPE_CHECKING:
    import psutil

__all__ = ["ServerInfo", "ServerMap", "Liveness", "ALIVE", "STOPPED", "GONE", "UNKNOWN"]

class Liveness(enum.Enum):
    """What :meth:`ServerInfo.liveness` can say about a server's process."""

    ALIVE = "alive"
    STOPPED = "stopped"  #: e.g. SIGSTOP
    GONE = "gone"
    UNKNOWN = "unknown"  #: on another host: not seen from here


ALIVE, STOPPED, GONE, UNKNOWN = Liveness.ALIVE, Liveness.STOPPED, Liveness.GONE, Liveness.UNKNOWN


@dataclass(frozen=True)
class ServerInfo:
    """One server: its IDs and where it runs."""

    server: int
    engine: int
    rank: int | None
    host: str
    pid: int
    #: True for a server that replaced a lost one: its engine runs in an MPI world of its own.
    replaced: bool = False

    @property
    def on_this_host(self) -> bool:
        """True when the server runs on the client's machine (its process can be seen and signalled)."""
        return self.host == socket.gethostname()

    def process(self) -> "psutil.Process | None":
        """The server's process, if it runs on this host and still exists."""
        import psutil

        if not self.on_this_host:
            return None
        try:
            return psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return None

    def liveness(self) -> Liveness:
        """:data:`ALIVE`, :data:`STOPPED` (e.g. SIGSTOP), :data:`GONE`, or :data:`UNKNOWN` on another host."""
        import psutil

        if not self.on_this_host:
            return UNKNOWN
        process = self.process()
        try:
            status = process.status() if process is not None else psutil.STATUS_DEAD
        except psutil.NoSuchProcess:
            return GONE
        if status in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return GONE
        if status in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP):
            return STOPPED
        return ALIVE


class ServerMap:
    """Server IDs (1..N) and the engines behind them.

    Parameters
    ----------
    identities : dict
        ``{engine_id: identity}`` where each identity is the dict returned by
        ``casa_magics.server.runner.engine_identity()`` on that engine.

    Notes
    -----
    When the engines are not MPI processes, there is no rank to read; servers
    are then numbered engine ID + 1 in engine order, with a warning.
    """

    def __init__(self, identities: dict[int, dict[str, Any]]) -> None:
        if not identities:
            raise ValueError("a server map needs at least one engine")
        ranks = [identity.get("rank") for identity in identities.values()]
        self.mpi = all(identity.get("mpi") for identity in identities.values()) and len(set(ranks)) == len(ranks)
        if not self.mpi:
            warnings.warn(
                "engines are not MPI processes: server IDs follow engine IDs (server = engine + 1)",
                RuntimeWarning,
                stacklevel=2,
            )
        #: The servers' MPI library as :func:`~casa_magics.core.world.mpi_library_report` gives it (None: unknown).
        self.library: dict[str, Any] | None = next(
            (identity["library"] for identity in identities.values() if identity.get("library")), None
        )
        servers = {}
        for engine, identity in sorted(identities.items()):
            server = identity["rank"] + 1 if self.mpi else engine + 1
            servers[server] = ServerInfo(server, engine, identity.get("rank"), identity["host"], identity["pid"])
        self._index(servers.values())

    def _index(self, infos: Any) -> None:
        """Hold ``infos`` by server ID (in increasing order) and by engine ID."""
        self._servers = {info.server: info for info in sorted(infos, key=lambda info: info.server)}
        self._by_engine = {info.engine: info for info in self._servers.values()}

    @classmethod
    def from_infos(cls, infos: list[ServerInfo], mpi: bool) -> "ServerMap":
        """A map of known servers, e.g. a detached cluster's as recorded when it started."""
        self = cls.__new__(cls)
        self.mpi = mpi
        self.library = None
        self._index(infos)
        return self

    def __len__(self) -> int:
        return len(self._servers)

    def __iter__(self):
        return iter(self._servers.values())

    def __contains__(self, server: object) -> bool:
        return server in self._servers

    @property
    def server_ids(self) -> list[int]:
        """Server IDs in increasing order: ``[1, ..., N]`` on MPI engines."""
        return list(self._servers)

    def info(self, server: int) -> ServerInfo:
        """The :class:`~casa_magics.cluster.server_map.ServerInfo` of a server ID (KeyError if unknown)."""
        return self._servers[server]

    def engine_of(self, server: int) -> int:
        """The engine ID behind a server ID. The one place the conversion happens."""
        return self._servers[server].engine

    def server_of(self, engine: int) -> int:
        """The server ID of an engine ID."""
        return self._by_engine[engine].server

    @property
    def one_world(self) -> bool:
        """True when every server is a rank of one MPI world, server ID = rank + 1.

        MPI-based CASA code that needs all servers in one world (e.g. the
        parallel cube imaging) can run only then. False for engines that are
        not MPI processes, and after a server was replaced (the replacement
        is an MPI world of its own).
        """
        return self.mpi and not any(info.replaced for info in self._servers.values())

    def replace(self, server: int, engine: int, identity: dict[str, Any]) -> ServerInfo:
        """Map ``server`` to a new engine that replaced its lost one; return its new info.

        The server ID is given, not read from the rank: the replacement is
        rank 0 of its own MPI world.
        """
        info = ServerInfo(server, engine, identity.get("rank"), identity["host"], identity["pid"], replaced=True)
        self._index([*(i for i in self._servers.values() if i.server != server), info])
        return info

    def parse_targets(self, target_server: Any) -> list[int] | None:
        """Check a ``target_server`` argument and return a list of server IDs.

        Parameters
        ----------
        target_server : None, int or list of int
            None means "the first free server" and is returned as None.

        Raises
        ------
        CommandRequestError
            For a wrong type, an empty list, or a server ID that is not in
            the map; the message names the bad value.
        """
        if target_server is None:
            return None
        items: Iterable[Any]
        if isinstance(target_server, (list, tuple)):
            if not target_server:
                raise CommandRequestError(f"target_server must not be an empty list, got {short(target_server)}")
            items = target_server
        else:
            items = [target_server]
        servers = []
        for item in items:
            if isinstance(item, bool) or not isinstance(item, int):
                raise CommandRequestError(
                    f"target_server must be None, a server ID or a list of server IDs, got {short(item)}"
                )
            if item not in self._servers:
                raise CommandRequestError(f"unknown server {item}: servers are {self.server_ids}")
            servers.append(item)
        return servers

    def rows(self) -> list[dict[str, Any]]:
        """One dict per server (server, engine, rank, host, pid), for tables."""
        return [
            {"server": i.server, "engine": i.engine, "rank": i.rank, "host": i.host, "pid": i.pid}
            for i in self
        ]

    def __repr__(self) -> str:
        lines = [f"{'server':>6} {'engine':>6} {'rank':>4}  host (pid)"]
        for i in self:
            rank = "-" if i.rank is None else i.rank
            lines.append(f"{i.server:>6} {i.engine:>6} {rank:>4}  {i.host} ({i.pid})")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from casa_magics.core.tables import html_table

        return html_table(self.rows(), caption="CASA servers")
