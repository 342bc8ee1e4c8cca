"""Gang supervision: forming a gang's requests, and ending what is left of a gang that ended.

Runs in the client. Its one job: keep the gangs a client pushed (one
command on every server, the master's request on the lowest server ID) and,
once a gang has ended (its master finished, or one of its servers was
lost), end the members still going: answer them ``'timeout'`` naming the
cause, cancel them, and kill the process of one still stuck in CASA's C++
:data:`GANG_GRACE` seconds later (its server is then lost like any other
dead server). The caller (the
:class:`~casa_magics.client.dispatcher.Dispatcher`) holds its lock.
"""

from __future__ import annotations

import enum
import logging
import signal
import time
from dataclasses import dataclass, field
from typing import Mapping

from casa_magics.client.cancelling import CancelBoards
from casa_magics.client.commands import CompiledCommand
from casa_magics.client.request_book import RequestBook
from casa_magics.client.requests import TIMEOUT, Request
from casa_magics.client.server_record import ServerRecord
from casa_magics.core.wire import MASTER, WORKER, GangTicket

__all__ = ["Gang", "GangEnd", "GangSupervisor", "GANG_GRACE"]

log = logging.getLogger("casa_magics")

#: Seconds a gang member may go on after its gang ended (its master finished, or a member
#: was lost) before it is interrupted, and again before its process is killed.
GANG_GRACE = 5.0


class GangEnd(enum.Enum):
    """Why a gang ended."""

    #: Its master's request finished: workers leave on their own, or are ended after the grace time.
    MASTER_FINISHED = "master finished"
    #: One of its servers was lost: every member still going is ended at once.
    MEMBER_LOST = "member lost"


@dataclass(slots=True, eq=False)
class Gang:
    """One gang's requests (the master's first) and how the client is ending it."""

    requests: list[Request]
    #: Why the client ends the members still going (None while the gang goes on).
    end: GangEnd | None = None
    #: With :attr:`GangEnd.MEMBER_LOST`: the server that was lost.
    lost_server: int | None = None
    ended_at: float | None = None
    #: Request ID -> when the client first cancelled (and interrupted) it.
    interrupted_at: dict[int, float] = field(default_factory=dict)
    #: Members whose process was killed (or could not be).
    killed: set[int] = field(default_factory=set)

    @property
    def master(self) -> Request:
        """The master's request."""
        return self.requests[0]

    @property
    def why(self) -> str:
        """Why the gang ended, as users read it."""
        if self.end is GangEnd.MEMBER_LOST:
            return f"server {self.lost_server} of the gang was lost"
        master = self.master
        return f"its master (request {master.id} on server {master.server}) finished"


class GangSupervisor:
    """The gangs of one client, until every member is answered.

    Parameters
    ----------
    servers : mapping
        Server ID -> its record (the dispatcher's, so a replacement is seen).
    book : RequestBook
        The client's requests.
    boards : CancelBoards
        The servers' cancel boards.
    """

    def __init__(self, servers: Mapping[int, ServerRecord], book: RequestBook, boards: CancelBoards) -> None:
        self._servers = servers
        self._book = book
        self._boards = boards
        #: Gang ID -> the gang.
        self.gangs: dict[int, Gang] = {}

    def form(
        self,
        compiled: CompiledCommand,
        worker: CompiledCommand,
        parameters: dict | None,
        packed: dict | None,
        members: list[int],
        cwd: str | None,
    ) -> list[Request]:
        """A new gang's requests (kept in the book, not queued): the master's first.

        The master's request is for ``members[0]``, a worker's for each other.

        Parameters
        ----------
        compiled : CompiledCommand
            The master's command.
        worker : CompiledCommand
            What a worker's request shows as its command.
        parameters, packed : dict or None
            The master's parameters, and as they travel.
        members : list of int
            Server IDs, lowest first.
        cwd : str or None
            Where each runs.

        Returns
        -------
        list of Request
            The master's first.
        """
        gang_id = time.time_ns()
        requests = []
        for server_id in members:
            master = server_id == members[0]
            if master:
                request = self._book.new(compiled, parameters, server_id, cwd, packed)
            else:
                request = self._book.new(worker, None, server_id, cwd, None)
            request.gang = GangTicket(gang_id, MASTER if master else WORKER, len(members))
            requests.append(request)
        self.gangs[gang_id] = Gang(requests)
        return requests

    def check(self, now: float) -> None:
        """End what is left of each gang whose master finished or whose member was lost.

        A member that can no longer take part is answered with status
        ``'timeout'`` naming the cause and cancelled (a member that has not
        started is skipped by its server). One that is still running
        :data:`GANG_GRACE` seconds later is stuck in CASA's C++: its process
        is killed. After a master that finished, workers get
        :data:`GANG_GRACE` seconds to leave ``initmpi()`` on their own first.

        Parameters
        ----------
        now : float
            The time of this check.
        """
        settled = self._book.settled
        for gang_id, gang in list(self.gangs.items()):
            left = [
                r for r in gang.requests
                if not r.finished or (r.id in settled and self._servers[r.server].carries(r))
            ]
            if not left:
                settled.difference_update(r.id for r in gang.requests)
                del self.gangs[gang_id]
                continue
            if gang.end is None and not self._see_end(gang, now):
                continue
            for request in left:
                self._end_member(request, gang, now)

    def _see_end(self, gang: Gang, now: float) -> bool:
        """Note whether ``gang`` has ended (a member lost, or its master finished); True if so."""
        lost = [r for r in gang.requests if r.status == TIMEOUT and r.id not in self._book.settled]
        if lost:
            gang.end, gang.lost_server = GangEnd.MEMBER_LOST, lost[0].server
        elif gang.master.finished:
            gang.end = GangEnd.MASTER_FINISHED
        else:
            return False
        gang.ended_at = now
        return True

    def _end_member(self, request: Request, gang: Gang, now: float) -> None:
        """Answer and cancel a member of an ended gang; kill its process if it still runs after the grace time."""
        server = self._servers[request.server]
        running = server.running(request)
        if gang.end is GangEnd.MASTER_FINISHED and (not running or now - gang.ended_at < GANG_GRACE):
            return  # a worker finds the master's "skip" (or release) on its own
        if request.id not in self._book.settled:
            self._book.settled.add(request.id)
            request.record_failure(TIMEOUT, f"Timeout: gang of request {gang.master.id} ended: {gang.why}")
            self._book.notify([request.id])
        if request in server.waiting:  # not sent yet: it never will be
            server.waiting.remove(request)
            return
        asked = gang.interrupted_at.get(request.id)
        if asked is None:
            gang.interrupted_at[request.id] = now
            try:
                self._boards.board(server).cancel_and_interrupt(request.id, server.info.pid)
            except (TimeoutError, RuntimeError) as error:  # killed after the grace time, as if it ran on
                log.warning("%s", error)
        elif running and now - asked >= GANG_GRACE and request.id not in gang.killed:
            gang.killed.add(request.id)
            _kill(server, gang.why)


def _kill(server: ServerRecord, why: str) -> None:
    """Kill a server stuck in a gang that ended.

    On this host, its process; on another, through its engine's nanny
    (ipyparallel's ``send_signal``), which runs beside it.
    """
    log.warning("%s is stuck in a gang that ended (%s): killing it", server.describe(), why)
    process = server.info.process()
    try:
        if process is not None:
            process.kill()
        else:
            server.view.client.send_signal(signal.SIGKILL, targets=[server.info.engine], block=False)
    except Exception:  # gone already, or no nanny: the watchdog reports it lost or timed out
        pass
