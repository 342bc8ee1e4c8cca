"""What the dispatcher knows about one server, as data.

Runs in the client. Its one job: the record of one server as the dispatcher
sees it (what is in flight there and waiting for it, whether it stopped
answering, whether it is lost and why, whether a replacement is on its way),
and of one ipyparallel message. Nothing here sends, waits or locks: the
:class:`~casa_magics.client.dispatcher.Dispatcher` holds its lock while it
reads or changes these records.
"""

from __future__ import annotations

import collections
import enum
import time
from dataclasses import dataclass, field
from typing import Any

from casa_magics.client.requests import Request
from casa_magics.cluster.server_map import ServerInfo

__all__ = ["Message", "ServerRecord", "Loss", "Replacement"]


class Message:
    """One ipyparallel message: a batch of requests and its AsyncResult."""

    __slots__ = ("requests", "result", "sent")

    def __init__(self, requests: list[Request]) -> None:
        self.requests = requests
        self.result: Any = None
        self.sent = time.time()


class Replacement(enum.Enum):
    """Where the replacement of a lost server stands."""

    #: The session replaces no servers (connected clusters, Slurm jobs).
    NONE = "none"
    #: A replacement is starting under the lost server's ID.
    STARTING = "starting"
    #: The server will not be replaced (see :attr:`Loss.not_replaced`).
    REFUSED = "refused"


@dataclass(slots=True)
class Loss:
    """Why a server is lost for good, and where its replacement stands."""

    reason: str
    replacement: Replacement = Replacement.NONE
    #: Why the server will not be replaced (with :attr:`Replacement.REFUSED`).
    not_replaced: str | None = None

    def refuse(self, why: str) -> None:
        """Record that the server will not be replaced, and why.

        Parameters
        ----------
        why : str
            The reason, shown after the loss's own.
        """
        self.replacement = Replacement.REFUSED
        self.not_replaced = why

    @property
    def text(self) -> str:
        """The reason as users read it (``get_server_status()``'s ``'lost'``, refusals)."""
        if self.replacement is Replacement.STARTING:
            return f"{self.reason}; a replacement is starting"
        if self.replacement is Replacement.REFUSED:
            return f"{self.reason}; not replaced: {self.not_replaced}"
        return self.reason


@dataclass(slots=True, eq=False)
class ServerRecord:
    """What the dispatcher knows about one server.

    Parameters
    ----------
    info : ServerInfo
        The server's IDs and where it runs.
    view : DirectView
        The ipyparallel view of its engine.
    replaced : str or None
        For a replacement, the note saying which server it replaced and when.
    """

    info: ServerInfo
    view: Any
    replaced: str | None = None
    #: Messages sent and not answered, oldest (the one running) first.
    in_flight: collections.deque[Message] = field(default_factory=collections.deque)
    #: Requests for this server, not sent yet.
    waiting: list[Request] = field(default_factory=list)
    #: Set once the server is gone for good.
    loss: Loss | None = None
    #: Stopped answering (its process is stopped); it may come back.
    timed_out: bool = False
    silent_since: float | None = None
    #: When the oldest message in flight became the head.
    head_since: float | None = None
    #: True until the first response from a replacement has carried :attr:`replaced`.
    note_untold: bool = False

    def __post_init__(self) -> None:
        self.note_untold = self.replaced is not None

    @property
    def usable(self) -> bool:
        """True while requests may be sent here."""
        return self.loss is None and not self.timed_out

    @property
    def free(self) -> bool:
        """True when usable with nothing in flight or waiting: an untargeted request may come."""
        return self.loss is None and not self.timed_out and not self.in_flight and not self.waiting

    @property
    def replacing(self) -> bool:
        """True when lost and a replacement is starting under its server ID."""
        return self.loss is not None and self.loss.replacement is Replacement.STARTING

    def carries(self, request: Request) -> bool:
        """True if ``request`` is in a message in flight to this (not lost) server.

        Parameters
        ----------
        request : Request
            Any request sent here.
        """
        return self.loss is None and any(request in m.requests for m in self.in_flight)

    def running(self, request: Request) -> bool:
        """True if ``request`` is in the message this (not lost) server is running now.

        Parameters
        ----------
        request : Request
            Any request sent here.
        """
        return self.loss is None and bool(self.in_flight) and request in self.in_flight[0].requests

    def describe(self) -> str:
        """``'server N (host H, pid P)'``, for messages and logs."""
        i = self.info
        return f"server {i.server} (host {i.host}, pid {i.pid})"
