"""The client's book of requests: every request by ID, who waits for which, and how answers are recorded.

Runs in the client. Its one job: keep the requests of one client (from
push until they are forgotten), hand out their IDs, wake whoever waits for
them, and record what servers answered. It sends nothing and takes no lock:
the :class:`~casa_magics.client.dispatcher.Dispatcher` holds its lock while
it calls in.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Iterable

from casa_magics.client.activity import ActivityLog
from casa_magics.client.commands import CompiledCommand
from casa_magics.client.requests import CANCELLED, RECEIVED, Request
from casa_magics.cluster.server_map import ServerInfo
from casa_magics.core.checks import short
from casa_magics.core.errors import CommandRequestError
from casa_magics.core.wire import why_one_line

__all__ = ["RequestBook", "flatten_request_ids"]


def flatten_request_ids(request_ids: object) -> list[int]:
    """Accept an ID, a list of IDs, or a list of such lists, and return a flat list.

    An empty list gives an empty list, as in casampi.

    Parameters
    ----------
    request_ids : int or (nested) list of int
        What a casampi call was given.

    Returns
    -------
    list of int
        The IDs in order.

    Raises
    ------
    CommandRequestError
        For anything that is not a positive int or a (nested) list of them.
    """
    flat: list[int] = []

    def walk(item: object) -> None:
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


class RequestBook:
    """Every request of one client, by ID, and the events of those waiting for them.

    Parameters
    ----------
    first_id : int
        The first request ID to hand out (a re-attached cluster's go on).
    """

    def __init__(self, first_id: int = 1) -> None:
        self._ids = itertools.count(first_id)
        self.requests: dict[int, Request] = {}
        self._waiters: list[tuple[set[int], threading.Event]] = []
        #: Request ID -> the lost server it ended with (the server ID may have a replacement now).
        self.lost_with: dict[int, ServerInfo] = {}
        #: Requests ended by the client for good (a gang's): a late answer is not recorded.
        self.settled: set[int] = set()
        #: Sent requests the client asked to cancel: an unsuccessful answer means cancelled.
        self.cancel_asked: set[int] = set()
        #: Every ended request passes :meth:`notify`: its span and the totals, for the live view.
        self.activity = ActivityLog()

    # ------------------------------------------------------------- requests
    def new(
        self,
        compiled: CompiledCommand,
        parameters: dict | None,
        target: int | None,
        cwd: str | None,
        packed: dict | None,
    ) -> Request:
        """A new request under a new ID, kept here (see :class:`~casa_magics.client.requests.Request`).

        Parameters
        ----------
        compiled : CompiledCommand
            The command.
        parameters, packed : dict or None
            Its parameters, and as they travel.
        target : int or None
            The server it must run on (None: any).
        cwd : str or None
            Where it runs.
        """
        request = Request(next(self._ids), compiled, parameters, target, cwd, packed)
        self.requests[request.id] = request
        return request

    def known(self, request_ids: Iterable[int]) -> list[Request]:
        """The requests with these IDs, in order.

        Parameters
        ----------
        request_ids : iterable of int
            IDs handed out by this book.

        Raises
        ------
        CommandRequestError
            For the first ID this book does not (or no longer) know.
        """
        requests = []
        for request_id in request_ids:
            request = self.requests.get(request_id)
            if request is None:
                raise CommandRequestError(f"unknown request ID {request_id}")
            requests.append(request)
        return requests

    def unfinished(self) -> list[Request]:
        """Every request that has no response yet, oldest first."""
        return [r for r in self.requests.values() if not r.finished]

    def forget(self, request_ids: list[int] | None = None) -> list[int]:
        """Drop finished requests (all, or those listed); returns their IDs.

        Parameters
        ----------
        request_ids : list of int or None
            The requests to drop; None drops every finished one.

        Raises
        ------
        CommandRequestError
            For an unknown ID, or a listed request that is not finished
            (nothing is dropped then).
        """
        if request_ids is None:
            chosen = [r for r in self.requests.values() if r.finished]
        else:
            chosen = self.known(request_ids)
            unfinished = [r.id for r in chosen if not r.finished]
            if unfinished:
                raise CommandRequestError(f"requests {unfinished} are not finished and cannot be forgotten")
        for request in chosen:
            del self.requests[request.id]
            self.lost_with.pop(request.id, None)
        return [r.id for r in chosen]

    # -------------------------------------------------------------- waiting
    def event_for(self, request_ids: list[int]) -> threading.Event:
        """An Event set once every listed request has a response.

        Parameters
        ----------
        request_ids : list of int
            Known request IDs.

        Raises
        ------
        CommandRequestError
            For an unknown ID.
        """
        event = threading.Event()
        remaining = {r.id for r in self.known(request_ids) if not r.finished}
        if remaining:
            self._waiters.append((remaining, event))
        else:
            event.set()
        return event

    def forget_event(self, event: threading.Event) -> None:
        """Stop tracking ``event`` (its wait ended, one way or another)."""
        self._waiters = [(ids, e) for ids, e in self._waiters if e is not event]

    def notify(self, finished_ids: list[int]) -> None:
        """Set the events of those waiting for nothing but these (now finished) requests.

        Parameters
        ----------
        finished_ids : list of int
            Requests that just got their response (recorded in :attr:`activity` too).
        """
        if finished_ids:
            self.activity.ended([self.requests[i] for i in finished_ids if i in self.requests], time.time())
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

    # -------------------------------------------------------------- answers
    def record_outcomes(self, requests: list[Request], outcomes: list[dict]) -> tuple[list[int], list[dict]]:
        """Record a server's outcomes, one per request (of one message).

        A request the client already ended for good (cancelled before it
        was sent, or settled) keeps its response. An unsuccessful outcome of
        a request whose cancel was asked makes it ``'cancelled'``.

        Parameters
        ----------
        requests : list of Request
            The message's requests, in the order sent.
        outcomes : list of dict
            The server's outcomes, in the same order.

        Returns
        -------
        finished : list of int
            The IDs now finished.
        ran : list of dict
            The outcomes recorded (for the duration estimate).
        """
        finished, ran = [], []
        for request, outcome in zip(requests, outcomes):
            if request.status == CANCELLED or request.id in self.settled:
                self.settled.discard(request.id)
                finished.append(request.id)
                continue
            try:
                request.record_outcome(outcome)  # each request's value is read on its own
            except Exception as error:  # a malformed outcome fails its own request only
                request.record_failure(RECEIVED, f"the server's answer could not be read: {why_one_line(error)}")
            if outcome.get("cancelled") or (request.id in self.cancel_asked and not request.successful):
                request.status = CANCELLED
            self.cancel_asked.discard(request.id)
            ran.append(outcome)
            finished.append(request.id)
        return finished, ran

    def record_unreadable(self, requests: list[Request], failure: str | None) -> list[int]:
        """Fail a message's requests whose answer could not be read; returns the IDs now finished.

        Parameters
        ----------
        requests : list of Request
            The message's requests.
        failure : str or None
            Why (a remote traceback, an unpickling error).
        """
        finished = []
        for request in requests:
            if request.status != CANCELLED and request.id not in self.settled:
                request.record_failure(RECEIVED, failure or "the server's answer could not be read")
                finished.append(request.id)
        return finished

    def fail(self, requests: Iterable[Request], status: str, message: str) -> list[int]:
        """End the unfinished ones of ``requests`` without an answer; returns their IDs.

        Parameters
        ----------
        requests : iterable of Request
            Requests to end.
        status : str
            ``'timeout'`` or ``'cancelled'``.
        message : str
            The responses' traceback.
        """
        ended = []
        for request in requests:
            if not request.finished:
                request.record_failure(status, message)
                ended.append(request.id)
        return ended
