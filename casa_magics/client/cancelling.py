"""Cancelling requests: unsent ones at once, sent ones through their server's cancel board.

Runs in the client. Its one job: end the requests a user cancels. A request
not sent yet leaves its queue and is answered ``'cancelled'``; a sent one is
marked on its server's cancel board, and interrupted if it is running. The
client writes the board of a server on its own host itself (shared memory);
a server on another host is asked to do it, through its engine's control
channel (:mod:`~casa_magics.cluster.control_channel`). A gang's worker is never
cancelled on its own: its master is, whose task then lets every worker go.
The caller (the :class:`~casa_magics.client.dispatcher.Dispatcher`) holds its
lock.
"""

from __future__ import annotations

import collections
from typing import Any, Mapping

from casa_magics.client.request_book import RequestBook
from casa_magics.client.requests import CANCELLED, HOLDING, Request
from casa_magics.client.server_record import ServerRecord
from casa_magics.cluster.control_channel import RemoteBoard
from casa_magics.core.cancel_board import CancelBoard, board_path
from casa_magics.server.gang_member import WORKER

__all__ = ["CancelBoards", "masters_for_workers", "cancel_requests"]


class CancelBoards:
    """The servers' cancel boards, opened when first needed.

    Parameters
    ----------
    run_dir : path
        The cluster's run directory, where servers on this host made their boards.
    client : ipyparallel.Client
        The session's client, which reaches servers on other hosts.
    """

    def __init__(self, run_dir: Any, client: Any) -> None:
        self._run_dir = run_dir
        self._client = client
        self._boards: dict[int, CancelBoard | RemoteBoard] = {}

    def board(self, server: ServerRecord) -> CancelBoard | RemoteBoard:
        """The server's cancel board: its file when client and server share a host, else a :class:`RemoteBoard`.

        Parameters
        ----------
        server : ServerRecord
            Any server.
        """
        board = self._boards.get(server.info.server)
        if board is None:
            board = None
            if server.info.on_this_host:
                try:
                    board = CancelBoard(board_path(self._run_dir, server.info.server))
                except OSError:  # a server with no run directory here: ask it
                    pass
            if board is None:
                board = RemoteBoard(self._client, server.info.engine, server.describe())
            self._boards[server.info.server] = board
        return board

    def drop(self, server_id: int) -> None:
        """Close the board of ``server_id`` (a replacement makes its own afresh).

        Parameters
        ----------
        server_id : int
            The replaced server's ID.
        """
        board = self._boards.pop(server_id, None)
        if board is not None:
            board.close()


def masters_for_workers(requests: list[Request], gangs: Mapping[int, Any]) -> tuple[list[Request], dict[int, str]]:
    """``requests`` with each unfinished gang worker replaced by its gang's master, and what that means.

    Parameters
    ----------
    requests : list of Request
        The requests to cancel.
    gangs : mapping
        Gang ID -> the gang (its ``requests``, the master's first) for gangs
        still supervised.

    Returns
    -------
    requests : list of Request
        Each at most once, in order.
    outcome : dict
        Request ID -> what cancelling means, for each worker replaced.
    """
    chosen: list[Request] = []
    outcome: dict[int, str] = {}
    for request in requests:
        gang = gangs.get(request.gang.gang_id) if request.gang and request.gang.role == WORKER else None
        if gang is not None and not request.finished:
            master = gang.requests[0]
            outcome[request.id] = f"ends when its gang's master (request {master.id}) lets it go"
            request = master
        if request not in chosen:
            chosen.append(request)
    return chosen, outcome


def cancel_requests(
    requests: list[Request],
    outcome: dict[int, str],
    servers: Mapping[int, ServerRecord],
    holding: collections.deque[Request],
    boards: CancelBoards,
    book: RequestBook,
) -> dict[int, str]:
    """Cancel ``requests`` (workers already replaced by masters), adding to ``outcome``.

    Parameters
    ----------
    requests : list of Request
        The requests to cancel.
    outcome : dict
        Request ID -> what happened, so far.
    servers : mapping
        Server ID -> its record.
    holding : deque
        The holding queue of untargeted requests.
    boards : CancelBoards
        The servers' cancel boards.
    book : RequestBook
        The client's requests.

    Returns
    -------
    dict
        ``outcome``, with every request's fate.

    A server that cannot confirm a cancel (it does not answer within
    seconds) leaves that request's outcome saying so; the others are
    cancelled all the same.
    """
    for request in requests:
        if request.finished:
            outcome[request.id] = f"already finished ({request.status})"
        elif request.status == HOLDING:
            if request.target is None:
                holding.remove(request)
            else:
                servers[request.server].waiting.remove(request)
            request.record_failure(CANCELLED, "cancelled by the client before it was sent")
            book.notify([request.id])
            outcome[request.id] = "cancelled before it was sent"
        else:
            server = servers[request.server]
            book.cancel_asked.add(request.id)
            try:
                interrupted = boards.board(server).cancel_and_interrupt(request.id, server.info.pid)
            except (TimeoutError, RuntimeError) as error:
                outcome[request.id] = f"not confirmed: {error}"
                continue
            outcome[request.id] = "interrupted while running" if interrupted else "will be skipped by its server"
    return outcome
