"""One command request and the response dict it turns into.

A :class:`Request` is kept small (slots, no dict) because a long session
holds many thousands of them; the casampi-style response dict is built only
when a caller asks for it.

Runs in the client.
"""

from __future__ import annotations

from typing import Any

from casa_magics.client.commands import CompiledCommand
from casa_magics.core.errors import CommandRequestError
from casa_magics.core.wire import GangTicket
from casa_magics.core.wire import WireRequest, pack_value, read_outcome, type_name, why_one_line

__all__ = [
    "Request",
    "HOLDING",
    "SENT",
    "RECEIVED",
    "TIMEOUT",
    "CANCELLED",
    "FINISHED_STATUSES",
    "RESPONSE_KEYS",
    "pack_parameters",
    "read_outcome",
]

HOLDING = "holding queue"
SENT = "request sent"
RECEIVED = "response received"
TIMEOUT = "timeout"
CANCELLED = "cancelled"
#: A request in one of these states has a response; a blocking get returns it.
FINISHED_STATUSES = frozenset({RECEIVED, TIMEOUT, CANCELLED})

#: Keys of every response dict, in display order.
RESPONSE_KEYS = (
    "id",
    "server",
    "command",
    "parameters",
    "mode",
    "status",
    "successful",
    "ret",
    "traceback",
    "command_start_time",
    "command_stop_time",
    "stdout",
    "stderr",
    "engine",
    "host",
    "pid",
    "target_server",
)


def pack_parameters(parameters: dict[str, Any] | None) -> dict[str, Any] | None:
    """The parameters of a push as they travel (see :func:`~casa_magics.server.runner.pack_value`).

    Done once per push, whatever the number of target servers.

    Raises
    ------
    CommandRequestError
        Naming the first parameter that cannot be pickled, and its type.
    """
    if parameters is None:
        return None
    packed = {}
    for name, value in parameters.items():
        try:
            packed[name] = pack_value(value)
        except Exception as error:
            raise CommandRequestError(
                f"parameter {name!r} ({type_name(value)}) cannot be sent to the servers: {why_one_line(error)}"
            ) from None
    return packed


class Request:
    """State of one command request, from push to response."""

    __slots__ = (
        "id",
        "compiled",
        "parameters",
        "target",
        "cwd",
        "server",
        "status",
        "successful",
        "ret",
        "traceback",
        "start",
        "stop",
        "stdout",
        "stderr",
        "gang",
        "packed",
    )

    def __init__(
        self,
        request_id: int,
        compiled: CompiledCommand,
        parameters: dict | None,
        target: int | None,
        cwd: str | None = None,
        packed: dict | None = None,
    ) -> None:
        self.id = request_id
        self.compiled = compiled
        self.parameters = parameters
        self.target = target
        self.cwd = cwd
        self.server: int | None = target
        self.status = HOLDING
        self.successful: bool | None = None
        self.ret: Any = None
        self.traceback: str | None = None
        self.start: float | None = None
        self.stop: float | None = None
        self.stdout = ""
        self.stderr = ""
        self.gang: GangTicket | None = None
        #: The parameters as sent (see pack_parameters), until the request is answered.
        self.packed = packed

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    def wire(self) -> WireRequest:
        """This request as sent to a server (see :class:`~casa_magics.server.runner.WireRequest`)."""
        c = self.compiled
        packed = self.packed if self.packed is not None else pack_parameters(self.parameters)
        return WireRequest(self.id, c.source, c.mode, c.callee, packed, self.cwd, self.gang)

    def record_outcome(self, outcome: dict[str, Any]) -> None:
        """Store what the server sent back (see :func:`read_outcome`)."""
        self.status = RECEIVED
        self.successful, self.ret, self.parameters, self.traceback = read_outcome(
            outcome, self.parameters, self.id, self.server, self.packed
        )
        self.start = outcome["command_start_time"]
        self.stop = outcome["command_stop_time"]
        self.stdout = outcome["stdout"]
        self.stderr = outcome["stderr"]
        self.packed = None

    def record_failure(self, status: str, message: str) -> None:
        """End the request without a server's answer (timeout, cancel, lost server)."""
        self.status = status
        self.successful = False
        self.ret = None
        self.traceback = message
        if status != TIMEOUT:  # a timed-out request's real answer may still come, and read what was sent
            self.packed = None

    def response(self, engine: int | None = None, host: str | None = None, pid: int | None = None) -> dict[str, Any]:
        """The casampi-style response dict (a new dict each call)."""
        return {
            "id": self.id,
            "server": self.server,
            "command": self.compiled.source,
            "parameters": self.parameters,
            "mode": self.compiled.mode,
            "status": self.status,
            "successful": self.successful if self.finished else False,
            "ret": self.ret,
            "traceback": self.traceback,
            "command_start_time": self.start,
            "command_stop_time": self.stop,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "engine": engine,
            "host": host,
            "pid": pid,
            "target_server": self.target,
        }

    def __repr__(self) -> str:
        return f"<Request {self.id} {self.compiled.source[:30]!r} server={self.server} {self.status}>"
