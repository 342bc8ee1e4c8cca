"""Reaching a server on another host while it runs a command: ipyparallel's control channel.

A server busy with a command reads no messages on its shell channel, but an
ipyparallel engine answers its *control* channel from a thread of its own
(ipykernel's control thread), and that channel reaches the engine wherever
it runs: through the controller, over the connections the engine already
has (its nanny, when there is one, passes the message on). Each server gets
two more control handlers:

* ``casa_cancel_request``: cancel requests from inside the server's process
  (:func:`casa_magics.server.runner.cancel_here`), as a client on the
  server's host does by writing the server's cancel board itself;
* ``casa_status_request``: the server's own report of its memory, its
  machine's available memory and its CASA import
  (:func:`casa_magics.server.runner.server_report`).

Nothing here uses a server's process ID, ``/proc`` or shared memory, so it
works for a server on any machine. Two sides, one module:
:func:`install_control_handlers` runs on each engine (the session applies it
while preparing servers); :class:`RemoteBoard` and :func:`ask_reports` are
the client's side.
"""

from __future__ import annotations

import concurrent.futures
import time
from typing import Any, Callable, Mapping

from casa_magics.server.runner import cancel_here, prepare_engine, server_report

__all__ = [
    "CANCEL_REQUEST",
    "STATUS_REQUEST",
    "REPLY_TIMEOUT",
    "install_control_handlers",
    "prepare_server",
    "RemoteBoard",
    "ask_reports",
]

#: The control message type a server answers by cancelling requests.
CANCEL_REQUEST = "casa_cancel_request"
#: The control message type a server answers with its own report.
STATUS_REQUEST = "casa_status_request"

#: Seconds the client waits for a server's answer on the control channel.
REPLY_TIMEOUT = 5.0


def _answer(kernel: Any, stream: Any, ident: Any, parent: dict, reply_type: str, work: Callable[[dict], Any]) -> None:
    """Answer one control request with ``{'status': 'ok', 'answer': work(content)}`` (or the error, in one line)."""
    try:
        content: dict[str, Any] = {"status": "ok", "answer": work(parent["content"])}
    except Exception as error:  # the client gets one line, the engine goes on
        content = {"status": "error", "ename": type(error).__name__, "evalue": str(error), "traceback": []}
    kernel.session.send(stream, reply_type, content, parent, ident)
    # Out now, from this (the control) thread: the kernel flushes its control stream only after
    # flushing stdout and stderr, which may wait on the IOPub thread while a command prints.
    stream.flush()


def install_control_handlers() -> None:
    """Make this engine answer :data:`CANCEL_REQUEST` and :data:`STATUS_REQUEST` on its control channel.

    Run on each engine (through ``apply``) when its server is prepared; a
    second call changes nothing.
    """
    from ipykernel.kernelbase import Kernel

    kernel = Kernel.instance()

    def cancel(content: dict) -> list:
        return cancel_here([int(request_id) for request_id in content["request_ids"]])

    def report(_content: dict) -> dict:
        return server_report()

    kernel.control_handlers[CANCEL_REQUEST] = lambda stream, ident, parent: _answer(
        kernel, stream, ident, parent, "casa_cancel_reply", cancel
    )
    kernel.control_handlers[STATUS_REQUEST] = lambda stream, ident, parent: _answer(
        kernel, stream, ident, parent, "casa_status_reply", report
    )


def prepare_server(server_id: int, run_dir: str, environment: dict[str, str], server_count: int) -> None:
    """Prepare an engine as a server (:func:`~casa_magics.server.runner.prepare_engine`) and make it
    answer the control requests above: one call per engine when a session starts or replaces one.
    """
    prepare_engine(server_id, run_dir, environment, server_count)
    install_control_handlers()


def _send(client: Any, engine: int, msg_type: str, content: dict) -> concurrent.futures.Future:
    """Send one control request to one engine; the future's result is ``[reply message]``."""
    # How ipyparallel's own client sends its control requests (abort, clear, signals).
    return client._send_control_request(targets=[engine], msg_type=msg_type, content=content, block=False)


def _answer_of(reply: dict, what: str) -> Any:
    content = reply["content"]
    if content.get("status") != "ok":
        raise RuntimeError(f"{what}: {content.get('ename')}: {content.get('evalue')}")
    return content["answer"]


class RemoteBoard:
    """The client's handle on the cancel board of a server on another host.

    It offers :meth:`cancel_and_interrupt` like a
    :class:`~casa_magics.core.cancel_board.CancelBoard` the client opened
    itself, and does it by asking the server.

    Parameters
    ----------
    client : ipyparallel.Client
        The session's client.
    engine : int
        The server's engine ID.
    where : str
        The server, as named in messages (e.g. ``"server 3 (host node2, ...)"``).
    """

    def __init__(self, client: Any, engine: int, where: str) -> None:
        self._client = client
        self._engine = engine
        self._where = where

    def cancel_and_interrupt(self, request_id: int, pid: int | None = None) -> bool:
        """Cancel a request on the server and interrupt it if it runs now; True if it did.

        Parameters
        ----------
        request_id : int
            The request.
        pid : int, optional
            Ignored: the server signals itself.

        Raises
        ------
        TimeoutError
            If the server did not confirm within :data:`REPLY_TIMEOUT` seconds.
        RuntimeError
            If the server could not cancel it.
        """
        future = _send(self._client, self._engine, CANCEL_REQUEST, {"request_ids": [request_id]})
        try:
            (reply,) = future.result(timeout=REPLY_TIMEOUT)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(
                f"{self._where} did not confirm within {REPLY_TIMEOUT:g} s that request {request_id} is cancelled"
            ) from None
        outcome = dict(_answer_of(reply, f"{self._where} could not cancel request {request_id}")).get(request_id)
        if outcome == "no board":
            raise RuntimeError(f"{self._where} could not cancel request {request_id}: it was not prepared as a server")
        return outcome == "interrupted"

    def close(self) -> None:
        """Nothing to close (for symmetry with the local board)."""


def ask_reports(client: Any, engines: Mapping[int, int], timeout: float = REPLY_TIMEOUT) -> dict[int, dict | str]:
    """Each server's own report (:func:`~casa_magics.server.runner.server_report`), asked all at once.

    Parameters
    ----------
    client : ipyparallel.Client
        The session's client.
    engines : mapping
        Server ID -> its engine ID.
    timeout : float
        Seconds to wait for all the answers together.

    Returns
    -------
    dict
        Server ID -> its report, or a one-line string saying why there is none
        (e.g. ``'no answer within 5 s'``).
    """
    futures = {}
    for server, engine in engines.items():
        try:
            futures[server] = _send(client, engine, STATUS_REQUEST, {})
        except Exception as error:  # e.g. the engine unregistered just now
            futures[server] = f"not asked: {error}"
    deadline = time.monotonic() + timeout
    reports: dict[int, dict | str] = {}
    for server, future in futures.items():
        if isinstance(future, str):
            reports[server] = future
            continue
        try:
            (reply,) = future.result(timeout=max(0.0, deadline - time.monotonic()))
            reports[server] = _answer_of(reply, "its report failed")
        except concurrent.futures.TimeoutError:
            reports[server] = f"no answer within {timeout:g} s"
        except Exception as error:
            reports[server] = " ".join(str(error).split())
    return reports
