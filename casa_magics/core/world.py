"""casampi's ``MPIEnvironment``: what a script asks about the MPI world.

Runs in every process: the client (the user's kernel or script) and every
server. It imports nothing of the client side at module level, so a server
can import it cheaply; the client's answers ask the current session only
when an attribute needs the servers.

casampi decides every attribute once, at import, from the process's MPI
rank. Here a process learns its role when casa_magics launches or prepares
it (``CASA_MAGICS_ROLE``, see :func:`process_role`), which may be after
this module was imported, so the role-dependent attributes are read when
asked, through a metaclass: ``MPIEnvironment.mpi_processor_rank`` is a
plain int, exactly as in casampi.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import socket
import sys
from typing import Any, Callable, Iterator, Protocol

__all__ = [
    "MPIEnvironment",
    "process_role",
    "serial_view",
    "mpi_library_report",
    "CLIENT_ROLE",
    "SERVER_ROLE",
    "SERVER_COUNT_VARIABLE",
    "ClientWorld",
    "set_client_world",
]

#: The value of ``CASA_MAGICS_ROLE`` in a server's environment, set when it is launched.
SERVER_ROLE = "server"
CLIENT_ROLE = "client"
#: Environment variable through which a server learns how many servers its cluster has.
SERVER_COUNT_VARIABLE = "CASA_MAGICS_SERVER_COUNT"

#: casampi's execution role of its client (its servers have an empty role in Python).
_CLIENT_EXECUTION_ROLE = "MPIClient"
_THREAD_LEVEL_NAMES = {0: "MPI THREAD SINGLE", 1: "MPI THREAD FUNNELED", 2: "MPI THREAD SERIALIZED", 3: "MPI THREAD MULTIPLE"}
_SERIAL = "serial"
#: Set while a task runs serially on a server (see serial_view): CASA then sees no MPI.
_serial: contextvars.ContextVar[bool] = contextvars.ContextVar("casa_magics_serial_view", default=False)


def process_role(environ: "os._Environ[str] | dict[str, str] | None" = None) -> str:
    """``'server'`` in a process casa_magics launched (or prepared) as a server, else ``'client'``.

    Read from ``CASA_MAGICS_ROLE``, which the launcher sets in every
    server's environment (and :func:`~casa_magics.server.runner.prepare_engine`
    sets on engines started by hand), never guessed.
    """
    environ = os.environ if environ is None else environ
    return SERVER_ROLE if environ.get("CASA_MAGICS_ROLE") == SERVER_ROLE else CLIENT_ROLE


@contextlib.contextmanager
def serial_view() -> Iterator[None]:
    """Within the block (in this thread only), ``MPIEnvironment`` describes a serial CASA session.

    A server uses it to run a task serially that casatasks would otherwise
    parallelise: ``is_mpi_enabled`` is then False, as in CASA without MPI.
    """
    token = _serial.set(True)
    try:
        yield
    finally:
        _serial.reset(token)


def mpi_library_report() -> dict[str, Any] | None:
    """The MPI library of this process, as casampi describes it (None when MPI is not initialised).

    Called on the servers: the client, which is no MPI process, reports
    the servers' MPI.
    """
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is None or not mpi.Is_initialized():
        return None
    vendor, vendor_version = mpi.get_vendor()
    return {
        "version": tuple(mpi.Get_version()),
        "vendor": (vendor, tuple(vendor_version)),
        "thread_level": mpi.Query_thread(),
        "any_tag": mpi.ANY_TAG,
        "any_source": mpi.ANY_SOURCE,
    }


def _dotted(numbers: Any) -> str:
    return ".".join(str(number) for number in numbers)


class _Role:
    """What one kind of process answers; subclasses fill in the parts that differ."""

    name = _SERIAL
    is_mpi_enabled = False
    is_mpi_client = True
    execution_role = _CLIENT_EXECUTION_ROLE

    def rank(self) -> int:
        return 0

    def server_ids(self) -> list[int]:
        return []

    def library(self) -> dict[str, Any] | None:
        return None

    def initialized(self) -> bool:
        return False


class _ClientRole(_Role):
    """The client: rank 0 of a world made of it and the current session's servers."""

    name = CLIENT_ROLE
    is_mpi_enabled = True

    def server_ids(self) -> list[int]:
        return list(_client_world().server_ids())

    def library(self) -> dict[str, Any] | None:
        return _client_world().library()

    def initialized(self) -> bool:
        return True


class _ServerRole(_Role):
    """A server: rank = its server ID, in a world of the client and its cluster's servers."""

    name = SERVER_ROLE
    is_mpi_enabled = True
    is_mpi_client = False
    execution_role = ""  # casampi's servers leave it empty in Python (their C++ logs "MPIServer")

    def rank(self) -> int:
        return int(os.environ.get("CASA_MAGICS_SERVER_ID", "0"))

    def server_ids(self) -> list[int]:
        count = int(os.environ.get(SERVER_COUNT_VARIABLE, "0"))
        return list(range(1, count + 1))

    def library(self) -> dict[str, Any] | None:
        return mpi_library_report()

    def initialized(self) -> bool:
        return mpi_library_report() is not None


class ClientWorld(Protocol):
    """What the client's side tells :class:`MPIEnvironment` about the current cluster."""

    def server_ids(self) -> list[int]:
        """The server IDs, bringing a cluster up if none runs (as casampi's world exists from the start)."""

    def library(self) -> dict[str, Any] | None:
        """The servers' MPI library (see :func:`mpi_library_report`)."""

    def stop(self) -> None:
        """Stop the current cluster, if one runs."""


_world: ClientWorld | None = None


def set_client_world(world: ClientWorld) -> None:
    """Register the client side's view of the current cluster (``casa_magics.cluster.session`` does, on import)."""
    global _world
    _world = world


def _client_world() -> ClientWorld:
    if _world is None:
        raise RuntimeError(
            "no cluster session in this process: use casa_magics.MPIEnvironment (import casa_magics), "
            "which brings one up when asked"
        )
    return _world


def _role() -> _Role:
    if _serial.get():
        return _Role()
    return _ServerRole() if process_role() == SERVER_ROLE else _ClientRole()


def _library_value(key: str, default: Any) -> Callable[[_Role], Any]:
    def read(role: _Role) -> Any:
        library = role.library()
        return default if library is None else library[key]

    return read


def _vendor_version(role: _Role) -> str:
    library = role.library()
    return "" if library is None else _dotted(library["vendor"][1])


def _vendor(role: _Role) -> str:
    library = role.library()
    if library is None:
        return ""
    name, version = library["vendor"]
    return f"{name} v{_dotted(version)}" if version else name


def _thread_level(role: _Role) -> int:
    library = role.library()
    return -1 if library is None else library["thread_level"]


def _hostname_wo_domain(_role: _Role) -> str:
    return socket.gethostname().split(".")[0]


def _processor_origin(role: _Role) -> str:
    if not role.is_mpi_enabled:
        return ""
    origin = "@" + socket.gethostname().split(".")[0]
    return origin + ":" + _CLIENT_EXECUTION_ROLE if role.is_mpi_client else origin


def _info_message(role: _Role) -> str:
    return (
        f"MPI enabled on host {socket.gethostname()}, rank {role.rank()} as {role.execution_role or 'server'}, "
        f"MPI {_dotted(_library_value('version', ())(role))} from {_vendor(role) or 'an unknown vendor'}"
    )


#: Every role-dependent attribute, and how it is read for a role.
_ATTRIBUTES: dict[str, Callable[[_Role], Any]] = {
    "is_mpi_enabled": lambda role: role.is_mpi_enabled,
    "is_mpi_client": lambda role: role.is_mpi_client,
    "mpi_execution_role": lambda role: role.execution_role,
    "mpi_processor_rank": lambda role: role.rank(),
    "mpi_world_size": lambda role: len(role.server_ids()) + 1 if role.is_mpi_enabled else 1,
    "mpi_initialized": lambda role: role.initialized(),
    "mpi_pid": lambda _role: os.getpid(),
    "hostname_wo_domain": _hostname_wo_domain,
    "processor_origin": _processor_origin,
    "log_to_console": lambda role: not (role.is_mpi_enabled and not role.is_mpi_client),
    "mpi_version_info": _library_value("version", None),
    "mpi_vendor_info": _library_value("vendor", None),
    "mpi_version_str": lambda role: _dotted(_library_value("version", ())(role)),
    "mpi_vendor_str": _vendor,
    "mpi_vendor_version_str": _vendor_version,
    "mpi_thread_safe_level": _thread_level,
    "mpi_thread_safe_level_str": lambda role: _THREAD_LEVEL_NAMES.get(_thread_level(role), str(_thread_level(role))),
    "is_mpi_thread_safe": lambda role: _thread_level(role) == 3,
    "mpi_any_tag": _library_value("any_tag", -1),
    "mpi_any_source": _library_value("any_source", -1),
    "mpi_info_msg": _info_message,
}


class _MPIEnvironmentType(type):
    """Reads :data:`_ATTRIBUTES` for the asking process's role, as plain class attributes."""

    def __getattr__(cls, name: str) -> Any:
        reader = _ATTRIBUTES.get(name)
        if reader is None:
            raise AttributeError(f"type object {cls.__name__!r} has no attribute {name!r}")
        return reader(_role())

    def __dir__(cls) -> list[str]:
        return sorted(set(super().__dir__()) | set(_ATTRIBUTES))


class MPIEnvironment(metaclass=_MPIEnvironmentType):
    """The MPI world as casampi scripts (and casatasks) see it, in the client and on every server.

    Every public attribute of casampi 0.6.0's ``MPIEnvironment`` is here,
    with the same type and meaning, read as class attributes:

    ======================================  ======================  ===========================
    attribute                               in the client           on server *k* of *N*
    ======================================  ======================  ===========================
    ``is_mpi_enabled``                      True                    True
    ``is_mpi_client``                       True                    False
    ``mpi_execution_role``                  ``'MPIClient'``         ``''``
    ``mpi_processor_rank``                  0                       *k* (the server ID)
    ``mpi_client_rank``                     0                       0
    ``mpi_world_size``                      *N* + 1                 *N* + 1
    ``mpi_server_rank_list()``              ``[1, ..., N]``         ``[1, ..., N]``
    ``log_to_console``                      True                    False
    ``processor_origin``                    ``'@host:MPIClient'``   ``'@host'``
    ======================================  ======================  ===========================

    The MPI version, vendor and thread level (``mpi_version_str``,
    ``mpi_vendor_str``, ``mpi_thread_safe_level``, ...) are the servers'
    MPI's: the client itself is no MPI process. In mpicasa the world
    exists from process start; in the client here it is the current
    session's, so asking for the world's size or server list brings the
    cluster up if none is running.

    While a server runs a task serially for the client's sake (see
    ``serial_view()`` in this module), it describes a serial CASA session instead
    (``is_mpi_enabled`` False), so casatasks starts no nested cluster.
    """

    #: Name of this process's host.
    hostname: str = socket.gethostname()
    #: The client's rank in casampi's numbering (servers are 1..N).
    mpi_client_rank: int = 0
    #: The CASA log priority of the servers' per-request notes (casampi's name).
    command_handling_log_level: str = "NORMAL"
    #: casampi's buffered-send buffer: none is needed here, so none is allocated and none is missing.
    mpi_buffer_size_in_mb: int = 0
    mpi_buffer_allocated: bool = True
    #: casampi's polling intervals, in seconds. casa_magics polls nothing (answers arrive as
    #: callbacks); the values are casampi's, for scripts that pace their own loops by them.
    mpi_start_service_sleep_time: float = 0.1
    mpi_stop_service_sleep_time: float = 3
    mpi_check_start_service_sleep_time: float = 0.1
    mpi_check_stop_service_sleep_time: float = 0.1
    mpi_monitor_status_service_heartbeat: float = 5
    mpi_ping_status_request_handler_service_sleep_time: float = 3
    mpi_ping_status_response_handler_service_sleep_time: float = 3
    mpi_command_request_handler_service_sleep_time: float = 0.1
    mpi_command_response_handler_service_sleep_time: float = 0.1
    mpi_command_request_queue_service_sleep_time: float = 0.1
    mpi_push_command_request_block_mode_sleep_time: float = 0.1
    #: Whether silent servers are declared lost, and after how many seconds (casa_magics'
    #: server timeout, ``CASA_MAGICS_SERVER_TIMEOUT``; read when this module is imported).
    mpi_monitor_status_service_timeout_enabled: bool = True
    mpi_monitor_status_service_timeout: float = float(os.environ.get("CASA_MAGICS_SERVER_TIMEOUT", "30") or 30)
    mpi_ping_status_request_handler_service_timeout: float = mpi_monitor_status_service_timeout

    @staticmethod
    def mpi_server_rank_list() -> list[int]:
        """Server IDs ``[1, ..., N]`` (MPI rank + 1 of each engine), a new list each call."""
        return _role().server_ids()

    @classmethod
    def is_mpi_disabled_or_client(cls) -> bool:
        """True unless this process is a server (casampi's helper)."""
        return not cls.is_mpi_enabled or cls.is_mpi_client

    @staticmethod
    def mpi_comm_world_factory() -> Any:
        """A duplicate of this server's ``MPI.COMM_WORLD`` (the servers' world, without the client).

        Raises
        ------
        RuntimeError
            In the client, which is no MPI process here.
        """
        role = _role()
        if not isinstance(role, _ServerRole) or mpi_library_report() is None:
            raise RuntimeError(
                f"mpi_comm_world_factory() needs an MPI process: this is the casa_magics {role.name}, "
                "which reaches the servers through MPICommandClient"
            )
        from mpi4py import MPI

        return MPI.COMM_WORLD.Dup()

    @staticmethod
    def finalize_mpi_environment() -> None:
        """Nothing to do: a server's MPI ends with its engine, and the client has none."""

    @staticmethod
    def abort_mpi_environment() -> None:
        """End the whole world: in the client, stop the current cluster (every server).

        Raises
        ------
        RuntimeError
            On a server: a server cannot end its cluster (casampi would abort every rank).
        """
        if isinstance(_role(), _ServerRole):
            raise RuntimeError("abort_mpi_environment() is for the client: a casa_magics server cannot end its cluster")
        _client_world().stop()

    @staticmethod
    def setup_logger(origin: str, show: bool) -> None:
        """Set CASA's log origin (and show it on the console when ``show``), as casampi does at import."""
        from casatools import logsink

        casalog = logsink()
        casalog.setglobal(True)
        casalog.processorOrigin(origin)
        casalog.showconsole(show)
