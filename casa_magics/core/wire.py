"""The wire format: a request as it travels to a server, and values as they travel both ways.

Shared by the client (which packs requests and reads outcomes) and the
servers (which unpack requests and pack outcomes). Every value that is not
of a plain type crosses pickled on its own, by the side that sends it, so a
value that cannot be read fails its own request only.
"""

from __future__ import annotations

import pickle
from typing import Any, NamedTuple

__all__ = [
    "GangTicket",
    "MASTER",
    "WORKER",
    "PLAIN_TYPES",
    "WireRequest",
    "pack_value",
    "unpack_value",
    "read_outcome",
    "type_name",
    "why_one_line",
]


#: A gang member's part (see :mod:`casa_magics.server.gang_member`).
MASTER, WORKER = "master", "worker"


class GangTicket(NamedTuple):
    """A server's part in one gang, as sent with its request."""

    #: Unique and increasing in the client, so a worker can ignore a message of an ended gang.
    gang_id: int
    #: :data:`MASTER` or :data:`WORKER`.
    role: str
    #: Number of servers in the gang (the MPI world's size).
    size: int


class WireRequest(NamedTuple):
    """One request as it travels from the client to a server.

    The client packs it (:meth:`casa_magics.client.requests.Request.wire`) and
    :func:`run_requests` unpacks it here; this is the only definition of
    the shape. Everything that can be decided on the client is decided
    there: the mode, and which callable a bare call names.
    """

    #: Request ID (unique in the client).
    id: int
    #: The command as pushed.
    source: str
    #: ``'eval'`` (the value is returned), ``'exec'``, or ``'push'`` (the
    #: parameters are kept in the namespace; nothing runs).
    mode: str
    #: Source of the callable of a bare call like ``"wvrgcal()"``; with
    #: parameters it is called as ``callee(**parameters)``. None otherwise.
    callee: str | None
    #: Names placed in the namespace for this command only, each value
    #: packed by :func:`pack_value` (and unpacked here one by one, so one
    #: that cannot be read fails only its own request).
    parameters: dict[str, Any] | None
    #: Directory to run the command in (then the server returns to its
    #: own), or None to run wherever the server is.
    cwd: str | None = None
    #: This server's part in a gang (see :mod:`casa_magics.server.gang_member`), or None.
    gang: GangTicket | None = None


#: Types whose values travel as they are: ipyparallel pickles them, and any Python unpickles them.
PLAIN_TYPES = frozenset({type(None), bool, int, float, complex, str})


def type_name(value: Any) -> str:
    """``value``'s type for messages: ``list``, ``numpy.ndarray``, ``__main__.Job``."""
    kind = type(value)
    module = getattr(kind, "__module__", None)
    qualname = getattr(kind, "__qualname__", kind.__name__)
    return qualname if module in (None, "builtins") else f"{module}.{qualname}"


def why_one_line(error: BaseException, limit: int = 300) -> str:
    """``'Type: message'`` of an exception, on one line and at most ``limit`` characters."""
    text = " ".join(str(error).split())
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def pack_value(value: Any) -> Any:
    """``value`` as it travels between client and servers.

    A value of a plain type (None, bool, int, float, complex, str) travels
    as it is; anything else as ``(type name, pickle)``, pickled here (pickle
    protocol 5), so that a value one side cannot pickle or the other cannot
    unpickle fails on its own, with its name, and never the ipyparallel
    message that carries it with others. Raises what pickling raises.
    """
    if type(value) in PLAIN_TYPES:
        return value
    return type_name(value), pickle.dumps(value, protocol=5)


def unpack_value(packed: Any, sent: Any = None) -> Any:
    """The value :func:`pack_value` packed. Raises what unpickling raises.

    ``(type name, None)`` is a parameter sent back unchanged: it is read
    from ``sent``, as packed by the side that reads it now.
    """
    if type(packed) is tuple:
        return pickle.loads(packed[1] if packed[1] is not None else sent[1])
    return packed


def read_outcome(
    outcome: dict[str, Any],
    parameters: dict[str, Any] | None,
    request_id: int,
    server: int | None,
    packed: dict[str, Any] | None = None,
) -> tuple[bool, Any, dict[str, Any] | None, str | None]:
    """A server's outcome of one request, read: ``(successful, ret, parameters, traceback)``.

    The value and the parameters the server sent back (packed by
    :func:`~casa_magics.server.runner.pack_value`) are unpickled here, each
    on its own: one that cannot be read here fails this request only, with
    a one-line traceback naming it and its type. ``parameters`` are the
    client's, which the server's copies replace (the server sends back no
    value of a plain type: no command can change those); ``packed`` are
    the parameters as sent, from which one the server found unchanged is
    read (a copy, as the server's would be).
    """
    successful, traceback = outcome["successful"], outcome["traceback"]
    unreadable = []
    whence = f" from server {server} cannot be unpickled in the client"
    back = outcome.get("parameters")
    if back:
        parameters = dict(parameters or {})
        for name, value in back.items():
            try:
                sent = (packed or {}).get(name)
                if value[1] is None and sent is None:
                    continue  # unchanged, and what was sent is not known here (an earlier client's request)
                parameters[name] = unpack_value(value, sent)
            except Exception as error:
                unreadable.append(f"parameter {name!r} ({value[0]}){whence}: {why_one_line(error, 200)}")
    value = outcome["ret"]
    try:
        ret = unpack_value(value)
    except Exception as error:
        ret = None
        unreadable.insert(0, f"the value of request {request_id} ({value[0]}){whence}: {why_one_line(error, 200)}")
    if unreadable:
        successful, ret = False, None
        traceback = (traceback or "") + "TypeError: " + "; ".join(unreadable)
    return successful, ret, parameters, traceback
