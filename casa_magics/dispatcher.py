"""Sending requests to servers and collecting their answers.

The :class:`Dispatcher` owns every request of a client. Its rules, taken
from casampi:

* a request for a given server goes to that server; requests for one server
  run there in the order they were pushed (FIFO);
* a request for *any* server (``target_server=None``) waits in a client-side
  holding queue until some server is free (nothing sent to it is
  unfinished), and then runs there;
* a server that dies, or stops answering for longer than the server
  timeout, has its requests answered with status ``'timeout'``; if it comes
  back, its real answers replace those.

Speed comes from sending several requests in one ipyparallel message when
they pile up: requests for a server that already has two messages in flight
are held and sent together when one comes back, and untargeted requests go
out in batches when the recent commands were quick (a batch is sized to take
about :data:`BATCH_WINDOW` seconds). Each request still gets its own
response, and order per server is unchanged.

Nothing here polls for completion: ipyparallel's futures call back when an
answer arrives. A small watchdog thread checks that busy servers are alive.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import threading
import time
from typing import Any, Iterable

from ipyparallel import error as ipp_error

from .cancel_board import CancelBoard, board_path
from .checks import short
from .commands import CompiledCommand
from .logs import server_log_path
from .errors import CommandRequestError
from .run_dir import keep_run_dir
from .requests import CANCELLED, HOLDING, RECEIVED, SENT, TIMEOUT, Request, pack_parameters
from .gang_server import MASTER, WORKER, GangTicket
from .server_map import GONE, STOPPED, ServerInfo
from .server_side import request_runner, why_one_line
from .memory import available_memory, memory_figures
from .replacement import start_replacement
from .waiting import wait_interactive

__all__ = ["Dispatcher", "flatten_request_ids", "MAX_IN_FLIGHT", "MAX_BATCH", "BATCH_WINDOW"]

log = logging.getLogger("casa_magics")

#: Messages a server may have in flight before further requests for it are held and sent together.
MAX_IN_FLIGHT = 2
#: Most requests in one message.
MAX_BATCH = 256
#: Target run time of one batch of untargeted requests, in seconds.
BATCH_WINDOW = 0.02
_ESTIMATE_WEIGHT = 0.2  # weight of the newest command in the running mean duration


def flatten_request_ids(request_ids: Any) -> list[int]:
    """Accept an ID, a list of IDs, or a list of such lists, and return a flat list.

    An empty list gives an empty list, as in casampi.

    Raises
    ------
    CommandRequestError
        For anything that is not a positive int or a (nested) list of them.
    """
    flat: list[int] = []

    def walk(item: Any) -> None:
        if isinstance(item, (list, tuple)):
            for inner in item:
                walk(inner)
        elif isinstance(item, bool) or not isinstance(item, int):
            raise CommandRequestError(f"request IDs must be integers or lists of integers, got {short(item)}")
        elif item < 1:
            raise CommandRequestError(f"request IDs are positive integers, got {item}")
        else:
            flat.append(item)

    walk(request_ids)
    return flat


class _Message:
    """One ipyparallel message: a batch of requests and its AsyncResult."""

    __slots__ = ("requests", "result", "sent")

    def __init__(self, requests: list[Request]) -> None:
        self.requests = requests
        self.result: Any = None
        self.sent = time.time()


class _Server:
    """What the dispatcher knows about one server."""

    __slots__ = (
        "info", "view", "in_flight", "waiting", "lost", "timed_out", "silent_since", "head_since", "replaced", "untold",
        "replacing",
    )

    def __init__(self, info: ServerInfo, view: Any) -> None:
        self.info = info
        self.view = view
        self.in_flight: collections.deque[_Message] = collections.deque()
        self.waiting: list[Request] = []  # for this server, not sent yet
        self.lost: str | None = None  # why, once the server is gone for good
        self.timed_out = False  # stopped answering; may come back
        self.silent_since: float | None = None
        self.head_since: float | None = None  # when the oldest message in flight became the head
        self.replaced: str | None = None  # "server N was replaced at ...", for a replacement
        self.untold: str | None = None  # that note, until the first response from here carries it
        self.replacing = False  # lost, and a replacement is starting for its server ID

    @property
    def usable(self) -> bool:
        return self.lost is None and not self.timed_out

    @property
    def free(self) -> bool:
        return self.usable and not self.in_flight and not self.waiting

    def describe(self) -> str:
        i = self.info
        return f"server {i.server} (host {i.host}, pid {i.pid})"


_REPLACING = "; a replacement is starting"  # the end of a lost server's reason while one starts

#: Seconds a gang member may go on after its gang ended (its master finished, or a member
#: was lost) before it is interrupted, and again before its process is killed.
GANG_GRACE = 5.0


class _Gang:
    """One gang's requests (the master's first) and how the client is ending it."""

    __slots__ = ("requests", "ended", "ended_at", "interrupted_at", "killed")

    def __init__(self, requests: list[Request]) -> None:
        self.requests = requests
        self.ended: str | None = None  # why the client ends the members still running
        self.ended_at: float | None = None
        self.interrupted_at: dict[int, float] = {}
        self.killed: set[int] = set()  # members whose process was killed (or could not be)


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
        self._ids = itertools.count(getattr(session, "first_request_id", 1))  # a re-attached cluster's go on
        self._requests: dict[int, Request] = {}
        self._holding: collections.deque[Request] = collections.deque()
        self._waiters: list[tuple[set[int], threading.Event]] = []
        self._estimate: float | None = None
        self._cancel_asked: set[int] = set()
        self._gangs: dict[int, _Gang] = {}
        self._settled: set[int] = set()  # ended by the client for good: a late answer is not recorded
        self._boards: dict[int, CancelBoard] = {}
        self._lost_with: dict[int, ServerInfo] = {}  # request ID -> the lost server it ended with (it may be replaced)
        client = session.client
        self._servers = {info.server: _Server(info, client[info.engine]) for info in session.servers}
        self._closed = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name="casa-magics-watchdog", daemon=True)
        self._watchdog.start()

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
                raise CommandRequestError("the client's services are stopped: call start_services() first")
            if targets is None:
                if all(server.lost for server in self._servers.values()):
                    raise CommandRequestError("no server is left: every server was lost")
            else:
                self._refuse_unusable(targets)
            created = []
            for target in targets or [None]:
                request = Request(next(self._ids), compiled, parameters, target, cwd, packed)
                self._requests[request.id] = request
                created.append(request)
                if target is None:
                    self._holding.append(request)
                else:
                    self._servers[target].waiting.append(request)
                    self._pump(self._servers[target])
            if targets is None:
                self._assign()
            return [request.id for request in created]

    def _refuse_unusable(self, targets: list[int], prefix: str = "") -> None:
        """Raise :class:`CommandRequestError` for the first target that cannot take requests."""
        for target in targets:
            server = self._servers[target]
            if not server.usable:
                why = server.lost or f"it has not answered for over {self.server_timeout:g} s"
                raise CommandRequestError(f"{prefix}server {target} cannot take requests: {why}")

    def _pump(self, server: _Server) -> None:
        """Send the requests waiting for ``server`` if it has room in flight."""
        if server.waiting and server.usable and len(server.in_flight) < MAX_IN_FLIGHT:
            batch, server.waiting = server.waiting[:MAX_BATCH], server.waiting[MAX_BATCH:]
            self._send(server, batch)

    def _assign(self) -> None:
        """Give held untargeted requests to free servers, lowest server ID first."""
        if not self._holding:
            return
        usable = sum(1 for server in self._servers.values() if server.usable) or 1
        for server in self._servers.values():
            if not self._holding:
                break
            if not server.free:
                continue
            size = self._untargeted_batch_size(usable)
            batch = [self._holding.popleft() for _ in range(min(size, len(self._holding)))]
            for request in batch:
                request.server = server.info.server
            self._send(server, batch)

    def _untargeted_batch_size(self, usable: int) -> int:
        estimate = self._estimate
        if estimate is None or estimate >= BATCH_WINDOW:
            return 1  # unknown or slow commands: strictly one at a time, first free server
        by_time = int(BATCH_WINDOW / max(estimate, 1e-6))
        fair_share = math.ceil(len(self._holding) / usable)
        return max(1, min(by_time, fair_share, MAX_BATCH))

    def _send(self, server: _Server, batch: list[Request]) -> None:
        message = _Message(batch)
        for request in batch:
            request.status = SENT
        if not server.in_flight:
            server.head_since = message.sent
        server.in_flight.append(message)
        message.result = server.view.apply_async(request_runner, [request.wire() for request in batch])
        message.result.add_done_callback(lambda _future, s=server, m=message: self._on_answer(s, m))

    # ---------------------------------------------------------------- answers
    def _on_answer(self, server: _Server, message: _Message) -> None:
        """Called by ipyparallel (in its IO thread) when a message is answered."""
        outcomes: list[dict] | None = None
        failure: str | None = None
        lost: str | None = None
        try:
            outcomes = message.result.get(0)
        except ipp_error.EngineError as error:
            lost = f"the engine is gone ({error})"
        except ipp_error.RemoteError as error:
            if error.ename == "EngineError":  # ipyparallel wraps a dead engine's stranded messages
                lost = f"its engine died ({error.evalue})"
            failure = "\n".join(error.render_traceback())
        except Exception as error:  # e.g. a result that could not be unpickled here
            failure = f"{type(error).__name__}: {error}"
        with self._lock:
            try:
                self._take_answer(server, message, outcomes, failure, lost)
            finally:
                # ipyparallel may keep the finished AsyncResult (and so this callback and
                # message) a while longer: the requests must not be held through it.
                message.result = None
                message.requests = []

    def _take_answer(
        self, server: _Server, message: _Message, outcomes: list[dict] | None, failure: str | None, lost: str | None
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
        finished = []
        if outcomes and server.untold:  # the first answer of a replacement says its state is fresh
            outcomes[0]["stderr"] = f"casa_magics: {server.untold}\n" + outcomes[0]["stderr"]
            server.untold = None
        if outcomes is not None:
            for request, outcome in zip(message.requests, outcomes):
                if request.status == CANCELLED or request.id in self._settled:
                    self._settled.discard(request.id)
                    finished.append(request.id)
                    continue
                try:
                    request.record_outcome(outcome)  # each request's value is read on its own
                except Exception as error:  # a malformed outcome fails its own request only
                    request.record_failure(RECEIVED, f"the server's answer could not be read: {why_one_line(error)}")
                if outcome.get("cancelled") or (request.id in self._cancel_asked and not request.successful):
                    request.status = CANCELLED
                self._cancel_asked.discard(request.id)
                self._learn_duration(outcome)
                finished.append(request.id)
        else:
            for request in message.requests:
                if request.status != CANCELLED and request.id not in self._settled:
                    request.record_failure(RECEIVED, failure or "the server's answer could not be read")
                    finished.append(request.id)
        # An answer is a sign of life: a server that had timed out is back.
        server.timed_out = False
        server.silent_since = None
        self._notify(finished)
        self._pump(server)
        self._assign()

    def _learn_duration(self, outcome: dict) -> None:
        duration = max(0.0, outcome["command_stop_time"] - outcome["command_start_time"])
        if self._estimate is None:
            self._estimate = duration
        else:
            self._estimate += _ESTIMATE_WEIGHT * (duration - self._estimate)

    def _answer_without_server(self, server: _Server, status: str, message: str) -> list[int]:
        """Answer everything sent to or waiting for ``server`` with ``status``."""
        ended = []
        for request in itertools.chain(
            (r for m in server.in_flight for r in m.requests), server.waiting
        ):
            if not request.finished:
                request.record_failure(status, message)
                ended.append(request.id)
        server.waiting = []
        self._notify(ended)
        return ended

    def _lose(self, server: _Server, why: str) -> None:
        if server.lost is not None:
            server.in_flight.clear()
            return
        server.lost = why
        log.warning("%s was lost: %s", server.describe(), why)
        keep_run_dir(f"{server.describe()} was lost")
        ended = self._answer_without_server(server, TIMEOUT, f"Timeout: {server.describe()} was lost: {why}")
        self._lost_with.update(dict.fromkeys(ended, server.info))
        server.in_flight.clear()
        server.head_since = None
        server.replacing = start_replacement(self, server)
        if server.replacing:
            server.lost += _REPLACING
        if not self._fail_holding_if_none_left():
            self._assign()  # held requests wait for a replacement or go to the others

    def _fail_holding_if_none_left(self) -> bool:
        """Answer the held requests if every server is lost for good (none being replaced); True if so."""
        if not all(s.lost and not s.replacing for s in self._servers.values()):
            return False
        for request in self._holding:
            request.record_failure(TIMEOUT, "Timeout: every server was lost before this request could run")
        self._notify([r.id for r in self._holding])
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
            fresh = _Server(info, self.session.client[info.engine])
            fresh.replaced = fresh.untold = note
            self._servers[server_id] = fresh
            board = self._boards.pop(server_id, None)  # the new server made its board afresh
            if board is not None:
                board.close()
            self._assign()
            return True

    def replacement_failed(self, server_id: int, why: str) -> None:
        """Say in the lost server's reason that it will not be replaced, and why."""
        with self._lock:
            server = self._servers[server_id]
            server.replacing = False
            server.lost = server.lost.removesuffix(_REPLACING) + f"; not replaced: {why}"
            self._fail_holding_if_none_left()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed.is_set()

    # --------------------------------------------------------------- watchdog
    def _watch(self) -> None:
        interval = min(1.0, self.server_timeout / 4)
        while not self._closed.wait(interval):
            try:
                self.check_servers()
            except Exception:  # the watchdog must outlive any one bad check
                log.exception("server check failed")

    @staticmethod
    def _look_at(server: _Server, registered: set[int]) -> tuple[str | None, bool]:
        """Why ``server`` is lost (None if it is not), and whether its process is stopped."""
        if server.info.engine not in registered:
            return "its engine unregistered from the controller", False
        liveness = server.info.liveness()
        return ("its process is gone" if liveness == GONE else None), liveness == STOPPED

    def check_servers(self) -> None:
        """Look at every server once: is its process alive, is it answering? Has its Slurm job ended?"""
        registered = set(self.session.client.ids)
        now = time.time()
        # A session whose servers are one Slurm job says when Slurm ended it (None otherwise).
        all_lost = self.session.lost_reason()
        asked_afresh = False
        for server in list(self._servers.values()):
            if server.lost is not None:
                continue
            why_lost, stopped = all_lost, False
            if not why_lost:
                why_lost, stopped = self._look_at(server, registered)
                if why_lost and not asked_afresh:
                    # Did Slurm end the whole job? Then that is the reason, for this server and the rest.
                    asked_afresh = True
                    all_lost = self.session.lost_reason(fresh=True)
                    why_lost = all_lost or why_lost
            with self._lock:
                if why_lost:
                    self._lose(server, why_lost)
                elif stopped:
                    if server.silent_since is None:
                        server.silent_since = now
                    if not server.timed_out and now - server.silent_since >= self.server_timeout and (server.in_flight or server.waiting):
                        server.timed_out = True
                        silent = now - server.silent_since
                        self._answer_without_server(
                            server, TIMEOUT, f"Timeout: {server.describe()} has not answered for {silent:.0f} s"
                        )
                else:
                    server.silent_since = None
                    if server.timed_out and not server.in_flight:
                        server.timed_out = False
                        self._assign()
        if self._gangs:
            with self._lock:
                self._check_gangs(time.time())

    # ----------------------------------------------------------------- gangs
    def push_gang(self, compiled: CompiledCommand, worker: CompiledCommand, parameters: dict | None, cwd: str | None = None) -> list[int]:
        """Push one command as a gang: the master's request on the lowest server ID, a worker's on each other.

        ``worker`` is what a worker's request shows as its command (its
        server runs :func:`~casa_magics.gang_server.serve_as_worker`).
        Returns the request IDs, the master's first.
        """
        packed = pack_parameters(parameters)
        with self._lock:
            if self._closed.is_set():
                raise CommandRequestError("the client's services are stopped: call start_services() first")
            self._refuse_unusable(sorted(self._servers), "cannot run a gang: ")
            gang_id = time.time_ns()
            members = sorted(self._servers)
            requests = []
            for server_id in members:
                master = server_id == members[0]
                request = Request(
                    next(self._ids), compiled if master else worker, parameters if master else None, server_id, cwd,
                    packed if master else None,
                )
                request.gang = GangTicket(gang_id, MASTER if master else WORKER, len(members))
                self._requests[request.id] = request
                requests.append(request)
            self._gangs[gang_id] = _Gang(requests)
            for request in requests:
                self._servers[request.server].waiting.append(request)
                self._pump(self._servers[request.server])
            return [request.id for request in requests]

    def _check_gangs(self, now: float) -> None:
        """End what is left of a gang whose master finished or whose member was lost (lock held).

        A member that can no longer take part is answered with status
        ``'timeout'`` naming the cause and cancelled (a member that has not
        started is skipped by its server). One that is still running
        :data:`GANG_GRACE` seconds later is stuck in CASA's C++: its process
        is killed, and its server is lost like any other dead server.
        After a master that finished, workers get :data:`GANG_GRACE` seconds
        to leave ``initmpi()`` on their own first.
        """
        for gang_id, gang in list(self._gangs.items()):
            left = [r for r in gang.requests if not r.finished or (r.id in self._settled and self._in_flight(r))]
            if not left:
                self._settled.difference_update(r.id for r in gang.requests)
                del self._gangs[gang_id]
                continue
            master = gang.requests[0]
            if gang.ended is None:
                lost = [r for r in gang.requests if r.status == TIMEOUT and r.id not in self._settled]
                if lost:
                    gang.ended = f"server {lost[0].server} of the gang was lost"
                elif master.finished:
                    gang.ended = f"its master (request {master.id} on server {master.server}) finished"
                else:
                    continue
                gang.ended_at = now
            master_done = gang.ended.endswith("finished")
            for request in left:
                running = self._running(request)
                if master_done and (not running or now - gang.ended_at < GANG_GRACE):
                    continue  # a worker finds the master's "skip" (or release) on its own
                if request.id not in self._settled:
                    self._settled.add(request.id)
                    request.record_failure(TIMEOUT, f"Timeout: gang of request {master.id} ended: {gang.ended}")
                    self._notify([request.id])
                self._end_member(request, gang, now, running)

    def _in_flight(self, request: Request) -> bool:
        server = self._servers[request.server]
        return server.lost is None and any(request in m.requests for m in server.in_flight)

    def _running(self, request: Request) -> bool:
        """True if ``request`` is in the message its server is running now."""
        server = self._servers[request.server]
        return server.lost is None and bool(server.in_flight) and request in server.in_flight[0].requests

    def _end_member(self, request: Request, gang: _Gang, now: float, running: bool) -> None:
        """Cancel a gang member; kill its process if it is still running after the grace time."""
        server = self._servers[request.server]
        if request in server.waiting:  # not sent yet: it never will be
            server.waiting.remove(request)
            return
        asked = gang.interrupted_at.get(request.id)
        if asked is None:
            gang.interrupted_at[request.id] = now
            board = self._board(server)
            if board is not None:
                board.cancel_and_interrupt(request.id, server.info.pid)
        elif running and now - asked >= GANG_GRACE and request.id not in gang.killed:
            gang.killed.add(request.id)
            process = server.info.process()
            if process is None:
                log.warning("%s is stuck in a gang that ended (%s) and is not on this host: it stays busy until "
                            "its job ends", server.describe(), gang.ended)
                return
            log.warning("%s is stuck in a gang that ended (%s): killing it", server.describe(), gang.ended)
            try:
                process.kill()
            except Exception:  # gone already
                pass

    # --------------------------------------------------------------- getting
    def _known(self, request_ids: Iterable[int]) -> list[Request]:
        requests = []
        for request_id in request_ids:
            request = self._requests.get(request_id)
            if request is None:
                raise CommandRequestError(f"unknown request ID {request_id}")
            requests.append(request)
        return requests

    def _notify(self, finished_ids: list[int]) -> None:
        if not finished_ids or not self._waiters:
            return
        still = []
        for remaining, event in self._waiters:
            remaining.difference_update(finished_ids)
            if remaining:
                still.append((remaining, event))
            else:
                event.set()
        self._waiters = still

    def event_for(self, request_ids: list[int]) -> threading.Event:
        """An Event set once every listed request has a response."""
        event = threading.Event()
        with self._lock:
            remaining = {r.id for r in self._known(request_ids) if not r.finished}
            if remaining:
                self._waiters.append((remaining, event))
            else:
                event.set()
        return event

    def _forget_waiter(self, event: threading.Event) -> None:
        with self._lock:
            self._waiters = [(ids, e) for ids, e in self._waiters if e is not event]

    def wait(self, request_ids: list[int], timeout: float | None = None, progress: bool = False) -> None:
        """Block until every listed request has a response.

        At most ``timeout`` seconds, then :class:`TimeoutError` (the requests
        keep running; nothing is lost). With ``progress``, a progress bar
        shows when the wait is not short. Ctrl-C raises
        :class:`KeyboardInterrupt`, wherever in the call it arrives (see
        :func:`~casa_magics.waiting.wait_interactive`).
        """
        event = self.event_for(request_ids)  # unknown IDs fail before any wait
        try:
            if not wait_interactive(
                event, total=len(request_ids), done=lambda: self._count_finished(request_ids),
                timeout=timeout, progress=progress,
            ):
                with self._lock:
                    pending = [r.id for r in self._known(request_ids) if not r.finished]
                raise TimeoutError(f"requests {pending} have no response after {timeout:g} s")
        finally:
            self._forget_waiter(event)

    def _count_finished(self, request_ids: list[int]) -> int:
        with self._lock:
            return sum(1 for r in self._known(request_ids) if r.finished)

    def responses(self, request_ids: list[int], block: bool, timeout: float | None = None) -> list[dict]:
        """Response dicts of the given requests, in the order given.

        Blocking waits for all of them (see :meth:`wait`); non-blocking
        leaves out those not finished.
        """
        with self._lock:
            self._known(request_ids)  # unknown IDs fail before any wait
        if block:
            self.wait(request_ids, timeout)
        with self._lock:
            return [self._response(r) for r in self._known(request_ids) if r.finished]

    def _response(self, request: Request) -> dict:
        if request.server is None:
            return request.response()
        info = self._lost_with.get(request.id) or self._servers[request.server].info
        return request.response(info.engine, info.host, info.pid)

    def unfinished_ids(self) -> list[int]:
        """IDs of every request that has no response yet."""
        with self._lock:
            return [r.id for r in self._requests.values() if not r.finished]

    def request_states(self) -> dict[int, dict]:
        """Every known request's current state, keyed by request ID."""
        with self._lock:
            return {r.id: self._response(r) for r in self._requests.values()}

    def finished_responses(self) -> dict[int, dict]:
        """Responses of every finished request, keyed by request ID."""
        with self._lock:
            return {r.id: self._response(r) for r in self._requests.values() if r.finished}

    def forget(self, request_ids: list[int] | None = None) -> list[int]:
        """Drop finished requests (all, or those listed) to free memory; returns their IDs."""
        with self._lock:
            if request_ids is None:
                chosen = [r for r in self._requests.values() if r.finished]
            else:
                chosen = self._known(request_ids)
                unfinished = [r.id for r in chosen if not r.finished]
                if unfinished:
                    raise CommandRequestError(f"requests {unfinished} are not finished and cannot be forgotten")
            for request in chosen:
                del self._requests[request.id]
                self._lost_with.pop(request.id, None)
            return [r.id for r in chosen]

    # ---------------------------------------------------------------- status
    def server_status(self) -> dict[int, dict]:
        """casampi's ``get_server_status()``: a dict per server ID (with memory figures, see :func:`memory_figures`)."""
        now = time.time()
        status = {}
        infos = {}
        with self._lock:
            for server_id, server in self._servers.items():
                infos[server_id] = server.info
                head = server.in_flight[0].requests[0] if server.in_flight else None
                queued = sum(len(m.requests) for m in server.in_flight) + len(server.waiting)
                status[server_id] = {
                    "rank": server.info.rank,
                    "processor": server.info.host,
                    "pid": server.info.pid,
                    "engine": server.info.engine,
                    "busy": bool(server.in_flight),
                    "command": head.compiled.source if head else None,
                    "command_start_time": server.head_since if head else None,
                    "running_for": now - server.head_since if head and server.head_since else None,
                    "queued": queued,
                    "timeout": server.timed_out or server.lost is not None,
                    "lost": server.lost,
                    "log": str(server_log_path(self.session, server_id)),
                    "replaced": server.replaced,
                }
        # Files and /proc are read without the lock, which answers and the watchdog need.
        available, limit = available_memory(), self.session.memory_limit
        for server_id, info in infos.items():
            status[server_id]["casa"] = self.session.casa_state(server_id)
            status[server_id].update(memory_figures(info, limit, available))
        return status

    @property
    def holding(self) -> int:
        """Number of untargeted requests waiting for a free server."""
        return len(self._holding)

    # ------------------------------------------------------------ cancelling
    def _board(self, server: _Server) -> CancelBoard | None:
        """The server's cancel board, if client and server share a host."""
        if not server.info.on_this_host:
            return None
        board = self._boards.get(server.info.server)
        if board is None:
            try:
                board = CancelBoard(board_path(self.session.run_dir, server.info.server))
            except OSError:
                return None
            self._boards[server.info.server] = board
        return board

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
            requests, outcome = self._masters_for_workers(self._known(request_ids))
            for request in requests:
                if request.status not in (HOLDING,) and not request.finished:
                    server = self._servers[request.server]
                    if self._board(server) is None:
                        raise CommandRequestError(
                            f"cannot cancel request {request.id}: it was already sent to {server.describe()}, "
                            "which does not share this host"
                        )
            for request in requests:
                if request.finished:
                    outcome[request.id] = f"already finished ({request.status})"
                elif request.status == HOLDING:
                    if request.target is None:
                        self._holding.remove(request)
                    else:
                        self._servers[request.server].waiting.remove(request)
                    request.record_failure(CANCELLED, "cancelled by the client before it was sent")
                    self._notify([request.id])
                    outcome[request.id] = "cancelled before it was sent"
                else:
                    server = self._servers[request.server]
                    self._cancel_asked.add(request.id)
                    if self._board(server).cancel_and_interrupt(request.id, server.info.pid):
                        outcome[request.id] = "interrupted while running"
                    else:
                        outcome[request.id] = "will be skipped by its server"
            return outcome

    def _masters_for_workers(self, requests: list[Request]) -> tuple[list[Request], dict[int, str]]:
        """``requests`` with each unfinished gang worker replaced by its gang's master, and what that means."""
        chosen: list[Request] = []
        outcome: dict[int, str] = {}
        for request in requests:
            gang = self._gangs.get(request.gang.gang_id) if request.gang and request.gang.role == WORKER else None
            if gang is not None and not request.finished:
                master = gang.requests[0]
                outcome[request.id] = f"ends when its gang's master (request {master.id}) lets it go"
                request = master
            if request not in chosen:
                chosen.append(request)
        return chosen, outcome

    # ---------------------------------------------------------------- closing
    def close(self, why: str = "stop_services() was called") -> list[int]:
        """Stop the watchdog and answer every unfinished request as cut short (saying ``why``).

        Returns the IDs of the requests that were cut short.
        """
        self._closed.set()
        with self._lock:
            cut = [r for r in self._requests.values() if not r.finished]
            for request in cut:
                request.record_failure(CANCELLED, f"cut short: {why} before it finished")
            self._holding.clear()
            for server in self._servers.values():
                server.waiting = []
            self._notify([r.id for r in cut])
            return [r.id for r in cut]
