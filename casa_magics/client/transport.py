"""Requests to a server and answers back, over ipyparallel.

Runs in the client. Its one job: send one batch of requests to one engine
as one ipyparallel message (``apply_async`` of the servers' request runner,
with a callback for the answer), and read an answered message into an
:class:`Answer`: the outcomes, or why there are none. Nothing polls: the
callback runs in ipyparallel's IO thread when the answer arrives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ipyparallel import error as ipp_error

from casa_magics.client.requests import SENT, Request
from casa_magics.client.server_record import Message, ServerRecord
from casa_magics.server.runner import request_runner

__all__ = ["Answer", "send", "read_answer"]


@dataclass(slots=True)
class Answer:
    """What came back for one message."""

    #: One outcome per request, in the order sent (None when there are none).
    outcomes: list[dict] | None = None
    #: Why there are no outcomes: a remote traceback, an unpickling error.
    failure: str | None = None
    #: Set when the answer says the server's engine is gone: why.
    lost: str | None = None


def send(server: ServerRecord, batch: list[Request], on_answer: Callable[[ServerRecord, Message], None]) -> Message:
    """Send ``batch`` to ``server`` in one message; ``on_answer(server, message)`` runs when it is answered.

    Marks the requests sent and puts the message in flight (the caller holds
    the dispatcher's lock).

    Parameters
    ----------
    server : ServerRecord
        A usable server.
    batch : list of Request
        Requests for it, in the order they run.
    on_answer : callable
        Called with the server and the message, in ipyparallel's IO thread.

    Returns
    -------
    Message
        The message in flight.
    """
    message = Message(batch)
    for request in batch:
        request.status = SENT
    if not server.in_flight:
        server.head_since = message.sent
    server.in_flight.append(message)
    message.result = server.view.apply_async(request_runner, [request.wire() for request in batch])
    message.result.add_done_callback(lambda _future, s=server, m=message: on_answer(s, m))
    return message


def read_answer(result: Any) -> Answer:
    """Read a done AsyncResult into an :class:`Answer`.

    Parameters
    ----------
    result : AsyncResult
        The message's result, done.

    Returns
    -------
    Answer
        The outcomes; or the failure (a remote error, an answer that could not
        be unpickled here); and whether the engine is gone.
    """
    try:
        return Answer(outcomes=result.get(0))
    except ipp_error.EngineError as error:
        return Answer(lost=f"the engine is gone ({error})")
    except ipp_error.RemoteError as error:
        # ipyparallel wraps a dead engine's stranded messages
        lost = f"its engine died ({error.evalue})" if error.ename == "EngineError" else None
        return Answer(failure="\n".join(error.render_traceback()), lost=lost)
    except Exception as error:  # e.g. a result that could not be unpickled here
        return Answer(failure=f"{type(error).__name__}: {error}")
