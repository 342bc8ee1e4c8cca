"""Cancelling requests: unsent ones at once, sent ones through their server's cancel board.

Runs in the client. Its one job: end the requests a user cancels. A request
not sent yet leaves its queue and is answered ``'cancelled'``; a sent one is
marked on its server's cancel board (shared memory, so only for servers on
this host), and interrupted if it is running. A gang's worker is never
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
from casa_magics.core.cancel_board import CancelBoard, board_path
from casa_magics.core.errors import CommandRequestError
from casa_magics.server.gang_member import WORKER

__all__ = ["CancelBoards", "masters_for_workers", "cancel_requests"]


class CancelBoards:
    """The cancel boards of the servers on this host, opened when first needed.

    Parameters
    ----------
    run_dir : path
        The cluster's run directory, where the servers made their boards.
    """

    def __init__(self, run_dir: Any) -> None:
        self._run_dir = run_dir
        self._boards: dict[int, CancelBoard] = {}

    def board(self, server: ServerRecord) -> CancelBoard | None:
        """The server's cancel board, or None if client and server do not share a host (or it cannot be opened).

        Parameters
        ----------
        server : ServerRecord
            Any server.
        """
        if not server.info.on_this_host:
            return None
        board = self._boards.get(server.info.server)
        if board is None:
            try:
                board = CancelBoard(board_path(self._run_dir, server.info.server))
            except OSError:
                return None
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


def _refuse_remote(requests: list[Request], servers: Mapping[int, ServerRecord], boards: CancelBoards) -> None:
    """Raise :class:`CommandRequestError` for the first sent, unfinished request whose server has no board here."""
    for request in requests:
        if request.status != HOLDING and not request.finished:
            server = servers[request.server]
            if boards.board(server) is None:
                raise CommandRequestError(
                    f"cannot cancel request {request.id}: it was already sent to {server.describe()}, "
                    "which does not share this host"
                )


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

    Raises
    ------
    CommandRequestError
        For a sent request on another host (nothing is cancelled then).
    """
    _refuse_remote(requests, servers, boards)
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
            if boards.board(server).cancel_and_interrupt(request.id, server.info.pid):
                outcome[request.id] = "interrupted while running"
            else:
                outcome[request.id] = "will be skipped by its server"
    return outcome
