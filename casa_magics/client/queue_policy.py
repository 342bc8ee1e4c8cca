"""What to send where: the dispatcher's queue policy, as pure functions.

Runs in the client. Its one job: decide, from the servers' loads and the
queues, how many requests leave for which server now. Nothing here sends,
locks or changes anything; the
:class:`~casa_magics.client.dispatcher.Dispatcher` asks and then sends.

The rules, taken from casampi and then made fast:

* requests for a given server leave in the order they were pushed, at most
  :data:`MAX_BATCH` in one message, while that server has fewer than
  :data:`MAX_IN_FLIGHT` messages in flight (the rest are held and leave
  together when one comes back);
* a request for *any* server waits in the holding queue until some server is
  free (nothing sent to it is unfinished, nothing waits for it), then goes to
  the free server with the lowest ID: one at a time while commands are slow
  or their duration is unknown, in batches sized to take about
  :data:`BATCH_WINDOW` seconds (and no more than a fair share of what is
  held) when recent commands were quick.
"""

from __future__ import annotations

import math
from typing import Iterable, Protocol, TypeVar

__all__ = [
    "ServerLoad",
    "batch_for_server",
    "untargeted_batch_size",
    "assign_holding",
    "next_estimate",
    "MAX_IN_FLIGHT",
    "MAX_BATCH",
    "BATCH_WINDOW",
    "ESTIMATE_WEIGHT",
]

#: Messages a server may have in flight before further requests for it are held and sent together.
MAX_IN_FLIGHT = 2
#: Most requests in one message.
MAX_BATCH = 256
#: Target run time of one batch of untargeted requests, in seconds.
BATCH_WINDOW = 0.02
#: Weight of the newest command in the running mean duration.
ESTIMATE_WEIGHT = 0.2


class ServerLoad(Protocol):
    """What the policy reads of a server (a :class:`~casa_magics.client.server_record.ServerRecord`)."""

    @property
    def usable(self) -> bool: ...

    @property
    def free(self) -> bool: ...


Server = TypeVar("Server", bound=ServerLoad)


def batch_for_server(waiting: int, usable: bool, in_flight: int) -> int:
    """How many of the requests waiting for one server leave now, in one message.

    Parameters
    ----------
    waiting : int
        Requests waiting for the server, not sent yet.
    usable : bool
        Whether the server may take requests (not lost, not timed out).
    in_flight : int
        Messages in flight to the server.

    Returns
    -------
    int
        0 (nothing leaves), or the first ``min(waiting, MAX_BATCH)``.
    """
    if waiting and usable and in_flight < MAX_IN_FLIGHT:
        return min(waiting, MAX_BATCH)
    return 0


def untargeted_batch_size(estimate: float | None, holding: int, usable: int) -> int:
    """How many held untargeted requests go to one free server at once.

    Parameters
    ----------
    estimate : float or None
        Running mean duration of recent commands in seconds (None: none yet).
    holding : int
        Untargeted requests still held.
    usable : int
        Servers that may take requests (at least 1).

    Returns
    -------
    int
        1 while commands are slow or of unknown duration; otherwise as many as
        take about :data:`BATCH_WINDOW`, at most a fair share of ``holding``
        and :data:`MAX_BATCH` (and never less than 1).
    """
    if estimate is None or estimate >= BATCH_WINDOW:
        return 1  # unknown or slow commands: strictly one at a time, first free server
    by_time = int(BATCH_WINDOW / max(estimate, 1e-6))
    fair_share = math.ceil(holding / usable)
    return max(1, min(by_time, fair_share, MAX_BATCH))


def assign_holding(servers: Iterable[Server], holding: int, estimate: float | None) -> list[tuple[Server, int]]:
    """Which free servers take how many of the held untargeted requests, in order.

    Parameters
    ----------
    servers : iterable of ServerLoad
        Every server, lowest server ID first (lost ones too: they count as
        not usable).
    holding : int
        Untargeted requests held, oldest first.
    estimate : float or None
        Running mean duration of recent commands (see :func:`next_estimate`).

    Returns
    -------
    list of (server, count)
        Take the next ``count`` held requests for ``server``, in this order;
        empty when nothing is held or no server is free.
    """
    if not holding:
        return []
    servers = list(servers)
    usable = sum(1 for server in servers if server.usable) or 1
    plan: list[tuple[Server, int]] = []
    for server in servers:
        if not holding:
            break
        if not server.free:
            continue
        count = min(untargeted_batch_size(estimate, holding, usable), holding)
        plan.append((server, count))
        holding -= count
    return plan


def next_estimate(estimate: float | None, start: float, stop: float) -> float:
    """The running mean duration of commands, after one more ran from ``start`` to ``stop``.

    Parameters
    ----------
    estimate : float or None
        The mean so far (None: this is the first command).
    start, stop : float
        When the command started and stopped, in seconds (a negative
        duration counts as 0).

    Returns
    -------
    float
        The new mean, the newest command weighted :data:`ESTIMATE_WEIGHT`.
    """
    duration = max(0.0, stop - start)
    if estimate is None:
        return duration
    return estimate + ESTIMATE_WEIGHT * (duration - estimate)
