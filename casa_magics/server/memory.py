"""The memory watch on each server: it ends a request that grows the server past its limit.

Each server runs a small watcher thread (:func:`start_memory_watch`) that
samples its own resident memory (RSS) a few times a second. When a limit is
set and the RSS passes it while a request runs, the watcher ends that
request the way a cancel does (the cancel board names the request, then
SIGINT), and the request fails with :class:`MemoryLimitExceeded` saying how
much memory the server used. The server itself lives on.

The limit comes from ``CASA_MAGICS_MEMORY_LIMIT`` (or
``ClusterSession.start(memory_limit=...)``); without one, CASA's own memory
setting in ``.casarc`` is used, as casacore reads it (see
:func:`casarc_memory_limit`).

This module is imported on the servers, so it imports nothing heavy at the
top (``psutil`` is imported where it is used).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from casa_magics.core.units import format_bytes

__all__ = [
    "MemoryLimitExceeded",
    "own_memory",
    "start_memory_watch",
    "take_memory_interrupt",
    "use_board",
    "SAMPLE_INTERVAL",
]

#: Seconds between two samples of a server's resident memory.
SAMPLE_INTERVAL = 0.2
#: Growth (bytes) a request must have caused, since it was first seen running, to be ended.
_GROWTH = 1024**2
#: Seconds before the watcher interrupts again a request that is still over the limit.
_REPEAT_AFTER = 1.0


class MemoryLimitExceeded(KeyboardInterrupt):
    """A request was ended because its server's memory passed the limit.

    A :class:`KeyboardInterrupt` so that command code catching
    ``Exception`` cannot swallow it, as with a cancel.
    """


# ------------------------------------------------------------------ servers
_reasons: dict[int, MemoryLimitExceeded] = {}  # request ID -> why the watcher ended it
_watch: "_MemoryWatch | None" = None
_board: Any = None  # the server's cancel board, handed over by use_board


def use_board(board: Any) -> None:
    """Tell the watcher which cancel board names this server's running request (None: none)."""
    global _board
    _board = board


def take_memory_interrupt(request_id: int) -> MemoryLimitExceeded | None:
    """The exception to raise if the memory watcher interrupted ``request_id`` (and forget it)."""
    return _reasons.pop(request_id, None)


class _MemoryWatch(threading.Thread):
    """Samples this server's RSS; over the limit, ends the running request."""

    def __init__(self, limit: int | None) -> None:
        super().__init__(name="casa-magics-memory-watch", daemon=True)
        self.limit = limit
        self.rss = 0
        self._ended: tuple[int, float] = (0, 0.0)  # last request interrupted, and when
        self._trim = False  # give freed memory back once that request is over
        self._seen: tuple[int, int] = (0, 0)  # a running request, and the RSS when first seen

    def run(self) -> None:
        import psutil

        process = psutil.Process()
        while True:
            try:
                self.rss = process.memory_info().rss
                board = _board
                running = board.running if board is not None else 0
                if running != self._seen[0]:  # a request started (or ended) about now, at this size
                    self._seen = (running, self.rss)
                if self._trim:
                    self._give_back(running)
                if running and self.limit is not None and self.rss > self.limit:
                    self._end(board, running)
            except Exception:  # a watcher must never die of one bad sample
                pass
            time.sleep(SAMPLE_INTERVAL)

    def _end(self, board: Any, running: int) -> None:
        """End the running request if it grew past the limit (the cancel path: board, then SIGINT)."""
        if self.rss <= self._seen[1] + _GROWTH:
            return  # over the limit, but not by this request (e.g. it frees what others kept)
        last, when = self._ended
        if running == last and time.monotonic() - when < _REPEAT_AFTER:
            return
        server = os.environ.get("CASA_MAGICS_SERVER_ID", "?")
        _reasons[running] = MemoryLimitExceeded(
            f"server {server} used {format_bytes(self.rss)}, over the memory limit of "
            f"{format_bytes(self.limit)}; request {running} ended"
        )
        self._ended = (running, time.monotonic())
        self._trim = True
        board.interrupt_here(running)

    def _give_back(self, running: int) -> None:
        """Once the ended request is over, ask the C library to return the memory it freed.

        glibc keeps freed heap memory for reuse, so without this the server's
        RSS would stay over the limit after the request that grew it is gone.
        """
        if running == self._ended[0]:
            return
        self._trim = False
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc
            pass


def own_memory() -> int | None:
    """This server's resident memory (RSS) in bytes, as its watcher last sampled it (None: unknown)."""
    watch = _watch
    if watch is not None and watch.rss:
        return watch.rss
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except Exception:
        return None


def start_memory_watch(limit: int | None) -> None:
    """Start this server's memory watcher, or change its limit (None: only measure)."""
    global _watch
    if _watch is None:
        _watch = _MemoryWatch(limit)
        _watch.start()
    else:
        _watch.limit = limit


# ------------------------------------------------------------------ client
