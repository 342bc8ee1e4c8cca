"""One command request and the response dict it turns into.

A :class:`Request` is kept small (slots, no dict) because a long session
holds many thousands of them; the casampi-style response dict is built only
when a caller asks for it.
"""

from __future__ import annotations

from typing import Any

from .commands import CompiledCommand
from .gang_server import GangTicket
from .server_side import WireRequest

__all__ = [
    "Request",
    "HOLDING",
    "SENT",
    "RECEIVED",
    "TIMEOUT",
    "CANCELLED",
    "FINISHED_STATUSES",
    "RESPONSE_KEYS",
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
    )

    def __init__(
        self,
        request_id: int,
        compiled: CompiledCommand,
        parameters: dict | None,
        target: int | None,
        cwd: str | None = None,
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

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    def wire(self) -> WireRequest:
        """This request as sent to a server (see :class:`~casa_magics.server_side.WireRequest`)."""
        c = self.compiled
        return WireRequest(self.id, c.source, c.mode, c.callee, self.parameters, self.cwd, self.gang)

    def record_outcome(self, outcome: dict[str, Any]) -> None:
        """Store what the server sent back."""
        self.status = RECEIVED
        self.successful = outcome["successful"]
        self.ret = outcome["ret"]
        self.traceback = outcome["traceback"]
        self.start = outcome["command_start_time"]
        self.stop = outcome["command_stop_time"]
        self.stdout = outcome["stdout"]
        self.stderr = outcome["stderr"]

    def record_failure(self, status: str, message: str) -> None:
        """End the request without a server's answer (timeout, cancel, lost server)."""
        self.status = status
        self.successful = False
        self.ret = None
        self.traceback = message

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
