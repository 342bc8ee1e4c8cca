"""What the servers did and are doing, as the client already knows it: the live view's model.

Runs in the client. Its one job: keep, for the live view
(:mod:`casa_magics.notebook.live_view`), each ended request's span (server,
start, stop, outcome, a short name) for the last few minutes and the
running totals, and build a :class:`Snapshot` of the servers from the
dispatcher's records. It is fed by
:meth:`~casa_magics.client.request_book.RequestBook.notify`, which every
ended request passes through; nothing here sends anything to a server or
waits. Everything is plain data and pure functions, so that it can be
tested without a cluster.

casatasks' Multi-MS jobs arrive as a bare call with parameters
(``"flagdata()"``, ``{"vis": ".../SUBMSS/x.mms.0003.ms", ...}``):
:func:`describe_command` names them by task and sub-MS
(``"flagdata · sub-MS 0003"``), and colours in the view follow the task.
"""

from __future__ import annotations

import ast
import collections
import dataclasses
import functools
import os
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from casa_magics.client.gang import WORKER_COMMAND
from casa_magics.client.requests import CANCELLED, RECEIVED, TIMEOUT, Request
from casa_magics.client.server_record import ServerRecord

__all__ = [
    "DONE",
    "FAILED",
    "CANCELLED_OUTCOME",
    "TIMED_OUT",
    "RUNNING",
    "Span",
    "ServerView",
    "Totals",
    "Snapshot",
    "ActivityLog",
    "describe_command",
    "outcome_of",
    "server_view",
]

#: A span's outcome: answered successfully, answered with an error, cancelled, ended by a timeout, or still running.
DONE, FAILED, CANCELLED_OUTCOME, TIMED_OUT, RUNNING = "done", "failed", "cancelled", "timeout", "running"

#: How long ended spans are kept (seconds), and at most how many.
KEEP_SECONDS = 900.0
KEEP_SPANS = 5000

_SUB_MS = re.compile(r"\.(\d{3,5})\.ms/?$")
_SHORT = 48


@dataclass(frozen=True, slots=True)
class Span:
    """One request's time on a server: a bar of the task stream.

    Attributes
    ----------
    request : int
        The request ID.
    server : int
        The server that ran it.
    task : str
        What colours it: a task's name (``'flagdata'``), the function a
        command calls (``'time.sleep'``), or ``'python'``.
    label : str
        A short name (``'flagdata · sub-MS 0003'``).
    command : str
        The command, on one line and shortened.
    start, stop : float or None
        Epoch seconds; ``stop`` is None while it runs.
    outcome : str
        :data:`DONE`, :data:`FAILED`, :data:`CANCELLED_OUTCOME`,
        :data:`TIMED_OUT` or :data:`RUNNING`.
    """

    request: int
    server: int
    task: str
    label: str
    command: str
    start: float
    stop: float | None
    outcome: str


@dataclass(frozen=True, slots=True)
class ServerView:
    """One server as the live view shows it.

    ``state`` is ``'idle'``, ``'busy'``, ``'not answering'`` (its process is
    stopped), ``'lost'`` or ``'replacing'`` (lost, a new one is starting
    under its ID). ``queued`` counts its requests behind the running one.
    ``memory``, ``memory_limit`` (bytes) and ``casa`` (see
    :meth:`ClusterSession.casa_state`) are filled in after the records are
    read (:meth:`Snapshot.with_machine_figures`).
    """

    server: int
    host: str
    pid: int | None
    state: str
    queued: int = 0
    running: Span | None = None
    lost: str | None = None
    memory: int | None = None
    memory_limit: int | None = None
    casa: str | None = None


@dataclass(frozen=True, slots=True)
class Totals:
    """Requests ended since the client started (done, failed, cancelled), running and queued now."""

    done: int = 0
    failed: int = 0
    cancelled: int = 0
    running: int = 0
    queued: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the live view draws at one moment.

    Attributes
    ----------
    now : float
        When it was taken (epoch seconds).
    servers : tuple of ServerView
        By server ID.
    spans : tuple of Span
        Ended requests that overlap the window, oldest first, then the
        running ones.
    totals : Totals
    window : float
        The seconds of the task stream.
    cluster : str
        The cluster's description.
    stopped : bool
        The cluster (or the client's services) stopped: nothing changes any more.
    """

    now: float
    servers: tuple[ServerView, ...]
    spans: tuple[Span, ...]
    totals: Totals
    window: float
    cluster: str = ""
    stopped: bool = False

    def with_machine_figures(self, figures: Mapping[int, Mapping[str, Any]]) -> "Snapshot":
        """A copy whose servers carry their memory and CASA figures.

        Parameters
        ----------
        figures : mapping
            Server ID -> ``{'memory', 'memory_limit', 'casa'}``, as
            :func:`~casa_magics.client.server_status.add_machine_figures` writes them.
        """
        servers = []
        for view in self.servers:
            mine = figures.get(view.server, {})
            servers.append(
                dataclasses.replace(
                    view, memory=mine.get("memory"), memory_limit=mine.get("memory_limit"), casa=mine.get("casa")
                )
            )
        return dataclasses.replace(self, servers=tuple(servers))

    def stopped_copy(self) -> "Snapshot":
        """A copy marked stopped (the last state, once the cluster is gone)."""
        return dataclasses.replace(self, stopped=True)


# ---------------------------------------------------------------- naming
def _one_line(text: str, width: int = _SHORT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _data_name(task: str, parameters: Mapping[str, Any] | None) -> str | None:
    """The sub-MS (or MS) a task's job works on, from its parameters."""
    if not parameters:
        return None
    names = [parameters.get("outputvis"), parameters.get("vis")]
    # partition writes one sub-MS each (outputvis); the other tasks work on one (vis).
    for value in names:
        if isinstance(value, str) and _SUB_MS.search(value):
            return f"sub-MS {_SUB_MS.search(value).group(1)}"
    for value in names[::-1]:
        if isinstance(value, str) and value:
            return os.path.basename(value.rstrip("/"))
    return None


@functools.lru_cache(maxsize=512)
def _called(source: str) -> str | None:
    """The function the last statement of ``source`` calls (``'time.sleep'``), if it is a call."""
    try:
        module = ast.parse(source)
    except SyntaxError:
        return None
    if not module.body:
        return None
    last = module.body[-1]
    value = getattr(last, "value", None) if isinstance(last, (ast.Expr, ast.Assign, ast.AnnAssign)) else None
    if isinstance(value, ast.Call):
        called = ast.get_source_segment(source, value.func)
        if called and len(called) <= 40 and "\n" not in called:
            return called
    return None


def describe_command(source: str, callee: str | None, parameters: Mapping[str, Any] | None) -> tuple[str, str]:
    """Name a request for the task stream: its task (for the colour) and a short label.

    Parameters
    ----------
    source : str
        The command as pushed.
    callee : str or None
        For a bare call pushed with parameters (``"flagdata()"``), the
        called name (see :class:`~casa_magics.client.commands.CompiledCommand`).
    parameters : mapping or None
        The request's parameters.

    Returns
    -------
    task, label : str

    Examples
    --------
    >>> describe_command("flagdata()", "flagdata", {"vis": "/w/ngc.mms/SUBMSS/ngc.mms.0003.ms"})
    ('flagdata', 'flagdata · sub-MS 0003')
    >>> describe_command("casatasks.setjy()", "casatasks.setjy", {"vis": "ngc5921.ms"})
    ('setjy', 'setjy · ngc5921.ms')
    >>> describe_command("import time; time.sleep(5)", None, None)
    ('time.sleep', 'import time; time.sleep(5)')
    >>> describe_command("x = 1", None, None)
    ('python', 'x = 1')
    """
    if source == WORKER_COMMAND:
        return "gang worker", "gang worker (CASA C++ MPI)"
    if callee:
        task = callee.rsplit(".", 1)[-1]
        data = _data_name(task, parameters)
        return task, f"{task} · {data}" if data else f"{task}()"
    return _called(source) or "python", _one_line(source)


def outcome_of(request: Request) -> str:
    """The outcome of an ended request: :data:`DONE`, :data:`FAILED`, :data:`CANCELLED_OUTCOME` or :data:`TIMED_OUT`."""
    if request.status == CANCELLED:
        return CANCELLED_OUTCOME
    if request.status == TIMEOUT:
        return TIMED_OUT
    if request.status == RECEIVED and request.successful:
        return DONE
    return FAILED


def _span(request: Request, server: int, start: float, stop: float | None, outcome: str) -> Span:
    task, label = describe_command(request.compiled.source, request.compiled.callee, request.parameters)
    return Span(request.id, server, task, label, _one_line(request.compiled.source, 200), start, stop, outcome)


def server_view(record: ServerRecord, now: float) -> ServerView:
    """One server's view from the dispatcher's record (call with the dispatcher's lock held).

    Parameters
    ----------
    record : ServerRecord
        The server.
    now : float
        The time of the snapshot.
    """
    info = record.info
    queued = sum(len(m.requests) for m in record.in_flight) + len(record.waiting)
    running = None
    if record.loss is not None:
        state = "replacing" if record.replacing else "lost"
        return ServerView(info.server, info.host, info.pid, state, 0, None, record.loss.text)
    if record.in_flight:
        head = next((r for r in record.in_flight[0].requests if not r.finished), record.in_flight[0].requests[0])
        since = record.head_since if record.head_since is not None else now
        running = _span(head, info.server, since, None, RUNNING)
        queued -= 1
    if record.timed_out:
        state = "not answering"
    else:
        state = "busy" if running is not None else "idle"
    return ServerView(info.server, info.host, info.pid, state, max(queued, 0), running)


# ---------------------------------------------------------------- the log
@dataclass(slots=True)
class _Counts:
    done: int = 0
    failed: int = 0
    cancelled: int = 0

    def add(self, outcome: str, step: int) -> None:
        if outcome == DONE:
            self.done += step
        elif outcome == CANCELLED_OUTCOME:
            self.cancelled += step
        else:
            self.failed += step


@dataclass(slots=True)
class ActivityLog:
    """The ended requests of one client, for the live view: spans of the last minutes and totals.

    Thread-safe on its own (a small lock), though the dispatcher calls
    :meth:`ended` with its own lock held.

    Parameters
    ----------
    keep_seconds : float
        How long an ended span is kept after it ended.
    keep_spans : int
        At most this many spans are kept (the oldest go first).
    """

    keep_seconds: float = KEEP_SECONDS
    keep_spans: int = KEEP_SPANS
    _spans: "collections.OrderedDict[int, Span]" = field(default_factory=collections.OrderedDict)
    #: Outcome of each request counted, so that a timed-out request answered later is counted once.
    _counted: "collections.OrderedDict[int, str]" = field(default_factory=collections.OrderedDict)
    _counts: _Counts = field(default_factory=_Counts)
    #: When each running request was first seen running (its bar's start if it ends without an answer).
    _running_since: dict[int, tuple[int, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def saw_running(self, request: int, server: int, since: float) -> None:
        """Note that ``request`` runs on ``server`` since ``since`` (from a snapshot of the records)."""
        with self._lock:
            self._running_since.setdefault(request, (server, since))

    def ended(self, requests: Iterable[Request], now: float) -> None:
        """Record requests that just got their response.

        A request answered by its server has its own start and stop times.
        One ended by the client (a lost server, a cancel before it was
        sent, the services stopped) gets a bar only if it was seen running,
        from then until ``now``; it is counted either way. A request that
        ends again (a timed-out request whose real answer came) replaces
        its earlier record.

        Parameters
        ----------
        requests : iterable of Request
            Requests now finished.
        now : float
            The time they ended here.
        """
        with self._lock:
            for request in requests:
                outcome = outcome_of(request)
                seen = self._running_since.pop(request.id, None)
                previous = self._counted.pop(request.id, None)
                if previous is not None:
                    self._counts.add(previous, -1)
                self._counted[request.id] = outcome
                self._counts.add(outcome, +1)
                self._spans.pop(request.id, None)
                if request.start is not None and request.server is not None:
                    stop = request.stop if request.stop is not None else now
                    self._spans[request.id] = _span(request, request.server, request.start, stop, outcome)
                elif seen is not None:
                    self._spans[request.id] = _span(request, seen[0], seen[1], now, outcome)
            self._trim(now)

    def _trim(self, now: float) -> None:
        while len(self._counted) > 4 * self.keep_spans:
            self._counted.popitem(last=False)
        while self._spans:
            oldest = next(iter(self._spans.values()))
            if len(self._spans) > self.keep_spans or (oldest.stop or now) < now - self.keep_seconds:
                self._spans.popitem(last=False)
            else:
                break

    def spans(self, since: float) -> list[Span]:
        """Ended spans that end at or after ``since``, by start time."""
        with self._lock:
            chosen = [s for s in self._spans.values() if (s.stop if s.stop is not None else since) >= since]
        return sorted(chosen, key=lambda s: (s.start, s.request))

    def totals(self, running: int = 0, queued: int = 0) -> Totals:
        """The counts so far, with what is ``running`` and ``queued`` now."""
        with self._lock:
            c = self._counts
            return Totals(c.done, c.failed, c.cancelled, running, queued)

    def snapshot(self, records: Mapping[int, ServerRecord], holding: int, now: float, window: float) -> Snapshot:
        """What the view draws now (call with the dispatcher's lock held); machine figures come later.

        Parameters
        ----------
        records : mapping
            Server ID -> its record.
        holding : int
            Requests for any server waiting for a free one.
        now : float
            The time of the snapshot.
        window : float
            The seconds of the task stream.
        """
        views = tuple(server_view(records[s], now) for s in sorted(records))
        running = [v.running for v in views if v.running is not None]
        for span in running:
            self.saw_running(span.request, span.server, span.start)
        queued = holding + sum(v.queued for v in views)
        spans = tuple(self.spans(now - window)) + tuple(running)
        return Snapshot(now, views, spans, self.totals(len(running), queued), window)
