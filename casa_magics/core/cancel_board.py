"""A tiny shared-memory board through which the client cancels a server's requests.

A server is busy running a command and cannot read messages, so cancelling
goes through a small board of shared memory that the server reads between
and during commands:

* the server writes the ID of the request it is running (``running``) and,
  before starting each request, checks the list of cancelled IDs and skips
  a cancelled one;
* to stop a running request, the canceller writes its ID as ``interrupt`` and
  sends the server SIGINT; the server's handler raises KeyboardInterrupt only
  if the request named there is the one running, so a signal that arrives
  late never hits the next command.

Who writes the board: a client on the server's host opens the server's board
file (in the run directory) and writes it itself; for a server on another
host, the client asks the server's engine to do it (a control message, see
:mod:`casa_magics.cluster.control_channel`), and the board there is the same
object. A server without a run directory it can write keeps its board in
anonymous memory, reachable that way only.
"""

from __future__ import annotations

import mmap
import os
import signal
import struct
import threading
from pathlib import Path

__all__ = ["CancelBoard", "board_path"]

_SLOTS = 1024  # cancelled IDs remembered (a ring)
_HEADER = struct.Struct("qqq")  # running, interrupt, count
_ID = struct.Struct("q")
_SIZE = _HEADER.size + _SLOTS * _ID.size


def board_path(run_dir: str | os.PathLike[str], server: int) -> Path:
    """Where the board of a server lives."""
    return Path(run_dir) / f"server-{server}.board"


class CancelBoard:
    """The board of one server.

    Parameters
    ----------
    path : path-like or None
        The board file; created (zeroed) by the server with ``create=True``.
        None: a board in anonymous memory, for this process only.
    """

    def __init__(self, path: str | os.PathLike[str] | None, create: bool = False) -> None:
        if path is None:
            self._map = mmap.mmap(-1, _SIZE)
            return
        flags = os.O_RDWR | (os.O_CREAT | os.O_TRUNC if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, _SIZE)
            self._map = mmap.mmap(fd, _SIZE)
        finally:
            os.close(fd)

    # -- written by the server
    @property
    def running(self) -> int:
        """ID of the request the server runs now (0 when idle)."""
        return _ID.unpack_from(self._map, 0)[0]

    @running.setter
    def running(self, request_id: int) -> None:
        _ID.pack_into(self._map, 0, request_id)

    # -- written by the client
    @property
    def interrupt(self) -> int:
        """ID of the request the client wants interrupted."""
        return _ID.unpack_from(self._map, 8)[0]

    @interrupt.setter
    def interrupt(self, request_id: int) -> None:
        _ID.pack_into(self._map, 8, request_id)

    def cancel(self, request_id: int) -> None:
        """Add a request to the cancelled list (the server skips it)."""
        count = _ID.unpack_from(self._map, 16)[0]
        _ID.pack_into(self._map, _HEADER.size + (count % _SLOTS) * _ID.size, request_id)
        _ID.pack_into(self._map, 16, count + 1)

    def cancel_and_interrupt(self, request_id: int, pid: int | None = None) -> bool:
        """Cancel a request and, if the server is running it now, interrupt it.

        The server skips a cancelled request it has not started; a running
        one gets SIGINT, which the server's handler turns into a
        KeyboardInterrupt only while this very request runs. ``pid``: the
        server's process, for a canceller outside it; None from inside the
        server (see :meth:`interrupt_here`). Returns True when it was
        interrupted while running.
        """
        self.cancel(request_id)
        if self.running != request_id:
            return False
        if pid is None:
            self.interrupt_here(request_id)
        else:
            self.interrupt = request_id
            os.kill(pid, signal.SIGINT)
        return True

    def interrupt_here(self, request_id: int) -> None:
        """From a thread of the server itself: interrupt ``request_id`` if it is the one running.

        The signal goes to the main thread, which runs requests: a signal the
        kernel gave to another thread would not end a sleep or a wait the
        request is in.
        """
        self.interrupt = request_id
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    def is_cancelled(self, request_id: int) -> bool:
        """True if the client cancelled this request."""
        count = _ID.unpack_from(self._map, 16)[0]
        if not count:
            return False
        used = min(count, _SLOTS)
        return request_id in struct.unpack_from(f"{used}q", self._map, _HEADER.size)

    def close(self) -> None:
        self._map.close()
