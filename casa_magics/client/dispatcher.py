"""Sending requests to servers and collecting their answers: the coordinator of the dispatcher's parts.

Runs in the client. The :class:`Dispatcher` owns every request of a client
and the one lock that guards them; its rules, taken from casampi:

* a request for a given server goes to that server; requests for one server
  run there in the order they were pushed (FIFO);
* a request for *any* server (``target_server=None``) waits in a client-side
  holding queue until some server is free (nothing sent to it is
  unfinished), and then runs there;
* a server that dies, or stops answering for longer than the server
  timeout, has its requests answered with status ``'timeout'``; if it comes
  back, its real answers replace those.

Each rule's detail lives in a part with one job, which the dispatcher wires
together under its lock:

* :mod:`~casa_magics.client.request_book`: the requests by ID, waiters, recording answers;
* :mod:`~casa_magics.client.queue_policy`: what to send where (pure), and batching;
* :mod:`~casa_magics.client.transport`: one message out over ipyparallel, its answer back;
* :mod:`~casa_magics.client.server_record`: what is known of each server, as data;
* :mod:`~casa_magics.client.watchdog`: are the servers alive and answering;
* :mod:`~casa_magics.client.gang_supervision`: forming gangs, ending what is left of one;
* :mod:`~casa_magics.client.cancelling`: cancel boards and cancelling;
* :mod:`~casa_magics.client.server_status`: casampi's ``get_server_status()``.

Nothing here polls for completion: ipyparallel's futures call back when an
answer arrives (in its IO thread). A small watchdog thread checks that busy
servers are alive.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from typing import Any

from casa_magics.client.activity import Snapshot
from casa_magics.client.cancelling import CancelBoards, cancel_requests, masters_for_workers
from casa_magics.client.commands import CompiledCommand
from casa_magics.client.gang_supervision import GANG_GRACE, GangSupervisor
from casa_magics.client.queue_policy import (
    BATCH_WINDOW, MAX_BATCH, MAX_IN_FLIGHT, assign_holding, batch_for_server, next_estimate,
)
from casa_magics.client.request_book import RequestBook, flatten_request_ids
from casa_magics.client.requests import CANCELLED, TIMEOUT, Request, pack_parameters
from casa_magics.client.server_record import Loss, Message, Replacement, ServerRecord
from casa_magics.client.server_status import RemoteReports, add_machine_figures, status_rows
from casa_magics.client.transport import read_answer, send
from casa_magics.client.waiting import wait_interactive
from casa_magics.client.watchdog import Sweep, Watchdog, judge_silence
from casa_magics.cluster.replacement import start_replacement
from casa_magics.cluster.run_dir import keep_run_dir
from casa_magics.core.errors import CommandRequestError

__all__ = ["Dispatcher", "flatten_request_ids", "MAX_IN_FLIGHT", "MAX_BATCH", "BATCH_WINDOW", "GANG_GRACE"]

log = logging.getLogger("casa_magics")


class Dispatcher:
    """Queues, sends and tracks the requests of one client session.

    Parameters
    ----------
    session : ClusterSession
        The connected cluster; its server map says where servers are.
    server_timeout : float
        Seconds a busy server may be unresponsive before its requests are
        answered with status ``'timeout'``.
    """

    def __init__(self, session: Any, server_timeout: float) -> None:
        self.session = session
        self.server_timeout = server_timeout
        self._lock = threading.RLock()
        self._book = RequestBook(getattr(session, "first_request_id", 1))  # a re-attached cluster's go on
        self._holding: collections.deque[Request] = collections.deque()
        self._estimate: float | None = None  # running mean duration of commands, for batching
        client = session.client
        self._servers = {info.server: ServerRecord(info, client[info.engine]) for info in session.servers}
        self._boards = CancelBoards(session.run_dir, client)
        self._reports = RemoteReports()  # servers on other hosts, asked at most about once a second
        self._gangs = GangSupervisor(self._servers, self._book, self._boards)
        self._closed = threading.Event()
        self._watchdog = Watchdog(self.check_servers, min(1.0, server_timeout / 4), self._closed)

    # ----------------------------------------------------------------- pushing
    def push(
        self, compiled: CompiledCommand, parameters: dict | None, targets: list[int] | None, cwd: str | None = None
    ) -> list[int]:
        """Create requests (one per target, or one for any server) and send what can go now.

        With ``cwd``, each request runs in that directory on its server.
        A parameter that cannot be pickled raises :class:`CommandRequestError`
        naming it (nothing is sent).
        """
        packed = pack_parameters(parameters)  # once for every target, and not under the lock
        with self._lock:
            if self._closed.is_set():
                self._refuse_if_closed()
            if targets is None:
                if all(server.loss is not None for server in self._servers.values()):
                    raise CommandRequestError("no server is left: every server was lost")
            else:
                self._refuse_unusable(targets)
            created = []
            for target in targets or [None]:
                request = self._book.new(compiled, parameters, target, cwd, packed)
                created.append(request.id)
                if target is None:
                    self._holding.append(request)
                else:
                    self._servers[target].waiting.append(request)
                    self._pump(self._servers[target])
            if targets is None:
                self._assign()
            return created

    def push_gang(
        self, compiled: CompiledCommand, worker: CompiledCommand, parameters: dict | None, cwd: str | None = None
    ) -> list[int]:
        """Push one command as a gang: the master's request on the lowest server ID, a worker's on each other.

        ``worker`` is what a worker's request shows as its command (its
        server runs :func:`~casa_magics.server.gang_member.serve_as_worker`).
        Returns the request IDs, the master's first.
        """
        packed = pack_parameters(parameters)
        with self._lock:
            self._refuse_if_closed()
            members = sorted(self._servers)
            self._refuse_unusable(members, "cannot run a gang: ")
            requests = self._gangs.form(compiled, worker, parameters, packed, members, cwd)
            for request in requests:
                self._servers[request.server].waiting.append(request)
                self._pump(self._servers[request.server])
            return [request.id for request in requests]

    def _refuse_if_closed(self) -> None:
        if self._closed.is_set():
            raise CommandRequestError("the client's services are stopped: call start_services() first")

    def _refuse_unusable(self, targets: list[int], prefix: str = "") -> None:
        """Raise :class:`CommandRequestError` for the first target that cannot take requests."""
        for target in targets:
            server = self._servers[target]
            if not server.usable:
                why = server.loss.text if server.loss else f"it has not answered for over {self.server_timeout:g} s"
                raise CommandRequestError(f"{prefix}server {target} cannot take requests: {why}")

    def _pump(self, server: ServerRecord) -> None:
        """Send the requests waiting for ``server`` if it has room in flight (lock held)."""
        if not server.waiting:
            return  # the common case after an answer: spare the policy's call
        count = batch_for_server(len(server.waiting), server.usable, len(server.in_flight))
        if count:
            batch, server.waiting = server.waiting[:count], server.waiting[count:]
            send(server, batch, self._on_answer)

    def _assign(self) -> None:
        """Give held untargeted requests to free servers, lowest server ID first (lock held)."""
        if not self._holding:
            return
        for server, count in assign_holding(self._servers.values(), len(self._holding), self._estimate):
            batch = [self._holding.popleft() for _ in range(count)]
            for request in batch:
                request.server = server.info.server
            send(server, batch, self._on_answer)

    # ---------------------------------------------------------------- answers
    def _on_answer(self, server: ServerRecord, message: Message) -> None:
        """Called by ipyparallel (in its IO thread) when a message is answered."""
        answer = read_answer(message.result)
        with self._lock:
            try:
                self._take_answer(server, message, answer.outcomes, answer.failure, answer.lost)
            finally:
                # ipyparallel may keep the finished AsyncResult (and so this callback and
                # message) a while longer: the requests must not be held through it.
                message.result = None
                message.requests = []

    def _take_answer(
        self, server: ServerRecord, message: Message, outcomes: list[dict] | None, failure: str | None, lost: str | None
    ) -> None:
        """Record a message's answer (lock held)."""
        try:
            server.in_flight.remove(message)
        except ValueError:
            pass
        server.head_since = time.time() if server.in_flight else None
        if lost is not None:
            server.in_flight.appendleft(message)  # answered with the rest of the server's work
            self._lose(server, lost)
            return
        if outcomes and server.note_untold:  # the first answer of a replacement says its state is fresh
            outcomes[0]["stderr"] = f"casa_magics: {server.replaced}\n" + outcomes[0]["stderr"]
            server.note_untold = False
        if outcomes is not None:
            finished, ran = self._book.record_outcomes(message.requests, outcomes)
            for outcome in ran:
                start, stop = outcome["command_start_time"], outcome["command_stop_time"]
                self._estimate = next_estimate(self._estimate, start, stop)
        else:
            finished = self._book.record_unreadable(message.requests, failure)
        # An answer is a sign of life: a server that had timed out is back.
        server.timed_out = False
        server.silent_since = None
        self._book.notify(finished)
        self._pump(server)
        self._assign()

    # ------------------------------------------------------------ lost servers
    def _answer_without_server(self, server: ServerRecord, message: str) -> list[int]:
        """Answer everything sent to or waiting for ``server`` with ``'timeout'`` (lock held)."""
        sent = [r for m in server.in_flight for r in m.requests]
        ended = self._book.fail([*sent, *server.waiting], TIMEOUT, message)
        server.waiting = []
        self._book.notify(ended)
        return ended

    def _lose(self, server: ServerRecord, why: str) -> None:
        """``server`` is gone for good: answer its requests, and start a replacement if the session may (lock held)."""
        if server.loss is not None:
            server.in_flight.clear()
            return
        server.loss = Loss(why)
        log.warning("%s was lost: %s", server.describe(), why)
        keep_run_dir(f"{server.describe()} was lost")
        ended = self._answer_without_server(server, f"Timeout: {server.describe()} was lost: {why}")
        self._book.lost_with.update(dict.fromkeys(ended, server.info))
        server.in_flight.clear()
        server.head_since = None
        if start_replacement(self, server):  # a refusal comes back through replacement_failed()
            server.loss.replacement = Replacement.STARTING
        if not self._fail_holding_if_none_left():
            self._assign()  # held requests wait for a replacement or go to the others

    def _fail_holding_if_none_left(self) -> bool:
        """Answer the held requests if every server is lost for good (none being replaced); True if so."""
        if not all(s.loss is not None and not s.replacing for s in self._servers.values()):
            return False
        ended = self._book.fail(self._holding, TIMEOUT, "Timeout: every server was lost before this request could run")
        self._book.notify(ended)
        self._holding.clear()
        return True

    def take_replacement(self, server_id: int, note: str) -> bool:
        """Put the engine now mapped to ``server_id`` in place of the lost one (see replacement.py).

        Returns False if the client was closed meanwhile.
        """
        with self._lock:
            if self._closed.is_set():
                return False
            info = self.session.servers.info(server_id)
            self._servers[server_id] = ServerRecord(info, self.session.client[info.engine], replaced=note)
            self._boards.drop(server_id)  # the new server made its board afresh
            self._assign()
            return True

    def replacement_failed(self, server_id: int, why: str) -> None:
        """Record that the lost server will not be replaced, and why (its reason then says so).

        Called by :func:`~casa_magics.cluster.replacement.start_replacement`
        (inside :meth:`_lose`, the lock held) when the replacer refuses, or
        later from the replacement's thread when the launch failed.
        """
        with self._lock:
            self._servers[server_id].loss.refuse(why)
            self._fail_holding_if_none_left()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed.is_set()

    # --------------------------------------------------------------- watchdog
    def check_servers(self) -> None:
        """Look at every server once: is its process alive, is it answering? Has its Slurm job ended?"""
        sweep = Sweep(self.session)
        now = time.time()
        for server in list(self._servers.values()):
            if server.loss is not None:
                continue
            why_lost, stopped = sweep.look(server.info)  # /proc and the controller, without the lock
            with self._lock:
                if why_lost:
                    self._lose(server, why_lost)
                else:
                    self._judge_silence(server, stopped, now)
        if self._gangs.gangs:
            with self._lock:
                self._gangs.check(time.time())

    def _judge_silence(self, server: ServerRecord, stopped: bool, now: float) -> None:
        """Time a stopped server out, or take back one that answers again (lock held)."""
        silence = judge_silence(
            stopped, server.silent_since, server.timed_out, bool(server.in_flight or server.waiting),
            bool(server.in_flight), now, self.server_timeout,
        )
        server.silent_since = silence.since
        if silence.times_out:
            server.timed_out = True
            self._answer_without_server(
                server, f"Timeout: {server.describe()} has not answered for {now - silence.since:.0f} s"
            )
        elif silence.back:
            server.timed_out = False
            self._assign()

    # --------------------------------------------------------------- getting
    def event_for(self, request_ids: list[int]) -> threading.Event:
        """An Event set once every listed request has a response."""
        with self._lock:
            return self._book.event_for(request_ids)

    def wait(self, request_ids: list[int], timeout: float | None = None, progress: bool = False) -> None:
        """Block until every listed request has a response.

        At most ``timeout`` seconds, then :class:`TimeoutError` (the requests
        keep running; nothing is lost). With ``progress``, a progress bar
        shows when the wait is not short. Ctrl-C raises
        :class:`KeyboardInterrupt`, wherever in the call it arrives (see
        :func:`~casa_magics.client.waiting.wait_interactive`).
        """
        event = self.event_for(request_ids)  # unknown IDs fail before any wait
        try:
            if not wait_interactive(
                event, total=len(request_ids), done=lambda: self._count_finished(request_ids),
                timeout=timeout, progress=progress,
            ):
                with self._lock:
                    pending = [r.id for r in self._book.known(request_ids) if not r.finished]
                raise TimeoutError(f"requests {pending} have no response after {timeout:g} s")
        finally:
            with self._lock:
                self._book.forget_event(event)

    def _count_finished(self, request_ids: list[int]) -> int:
        with self._lock:
            return sum(1 for r in self._book.known(request_ids) if r.finished)

    def responses(self, request_ids: list[int], block: bool, timeout: float | None = None) -> list[dict]:
        """Response dicts of the given requests, in the order given.

        Blocking waits for all of them (see :meth:`wait`); non-blocking
        leaves out those not finished.
        """
        with self._lock:
            self._book.known(request_ids)  # unknown IDs fail before any wait
        if block:
            self.wait(request_ids, timeout)
        with self._lock:
            return [self._response(r) for r in self._book.known(request_ids) if r.finished]

    def _response(self, request: Request) -> dict:
        if request.server is None:
            return request.response()
        info = self._book.lost_with.get(request.id) or self._servers[request.server].info
        return request.response(info.engine, info.host, info.pid)

    def unfinished_ids(self) -> list[int]:
        """IDs of every request that has no response yet."""
        with self._lock:
            return [r.id for r in self._book.unfinished()]

    def request_states(self) -> dict[int, dict]:
        """Every known request's current state, keyed by request ID."""
        with self._lock:
            return {r.id: self._response(r) for r in self._book.requests.values()}

    def finished_responses(self) -> dict[int, dict]:
        """Responses of every finished request, keyed by request ID."""
        with self._lock:
            return {r.id: self._response(r) for r in self._book.requests.values() if r.finished}

    def forget(self, request_ids: list[int] | None = None) -> list[int]:
        """Drop finished requests (all, or those listed) to free memory; returns their IDs."""
        with self._lock:
            return self._book.forget(request_ids)

    # ---------------------------------------------------------------- status
    def server_status(self) -> dict[int, dict]:
        """casampi's ``get_server_status()``: a dict per server ID (with memory figures, see :func:`memory_figures`)."""
        with self._lock:
            status = status_rows(self._servers, self.session, time.time())
            infos = {server_id: server.info for server_id, server in self._servers.items()}
        add_machine_figures(status, infos, self.session, self._reports)  # without the lock
        return status

    def activity_snapshot(self, window: float) -> Snapshot:
        """What the live view draws now: each server, the task stream of the last ``window`` seconds, the totals.

        Read from what the client knows (its records, the answers so far,
        the servers' memory in ``/proc`` and CASA state files); servers on
        other hosts report their memory and CASA state themselves, asked at
        most about once a second (see :class:`RemoteReports`).

        Parameters
        ----------
        window : float
            Seconds of the task stream.
        """
        with self._lock:
            snapshot = self._book.activity.snapshot(self._servers, len(self._holding), time.time(), window)
            infos = {server_id: server.info for server_id, server in self._servers.items()}
        # Lost and not-answering servers are not asked for figures.
        figures: dict[int, dict] = {view.server: {"lost": view.lost or view.state == "not answering"}
                                    for view in snapshot.servers}
        add_machine_figures(figures, infos, self.session, self._reports)  # without the lock
        snapshot = dataclasses.replace(
            snapshot.with_machine_figures(figures), cluster=self.session.description,
            stopped=self.closed or self.session.stopped,
        )
        return snapshot

    @property
    def holding(self) -> int:
        """Number of untargeted requests waiting for a free server."""
        return len(self._holding)

    # ------------------------------------------------------------ cancelling
    def cancel(self, request_ids: list[int]) -> dict[int, str]:
        """Cancel requests: unsent ones at once, sent ones through the server's cancel board.

        A running request is interrupted (SIGINT, delivered only to that
        request); a sent one that has not started is skipped by its server.
        Either way its response gets status ``'cancelled'``.

        A gang's worker is never interrupted on its own: once its master
        asked for it, it is inside CASA's C++ MPI, and only the master can
        let it go. Cancelling it cancels its master instead, whose task then
        releases (or sends home) every worker.

        Returns ``{request_id: what happened}``.

        Raises
        ------
        CommandRequestError
            For an unknown ID, or a sent request on another host (nothing
            is cancelled then).
        """
        with self._lock:
            requests, outcome = masters_for_workers(self._book.known(request_ids), self._gangs.gangs)
            return cancel_requests(requests, outcome, self._servers, self._holding, self._boards, self._book)

    # ---------------------------------------------------------------- closing
    def close(self, why: str = "stop_services() was called") -> list[int]:
        """Stop the watchdog and answer every unfinished request as cut short (saying ``why``).

        Returns the IDs of the requests that were cut short.
        """
        self._closed.set()
        with self._lock:
            cut = self._book.fail(self._book.unfinished(), CANCELLED, f"cut short: {why} before it finished")
            self._holding.clear()
            for server in self._servers.values():
                server.waiting = []
            self._book.notify(cut)
            return cut
