"""Servers' memory: sizes, the per-server limit, and the watcher that enforces it.

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
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

__all__ = [
    "MemoryLimitExceeded",
    "parse_memory_size",
    "format_bytes",
    "casarc_memory_limit",
    "effective_memory_limit",
    "start_memory_watch",
    "take_memory_interrupt",
    "memory_figures",
    "available_memory",
    "SAMPLE_INTERVAL",
]

#: Seconds between two samples of a server's resident memory.
SAMPLE_INTERVAL = 0.2
#: Growth (bytes) a request must have caused, since it was first seen running, to be ended.
_GROWTH = 1024**2
#: Seconds before the watcher interrupts again a request that is still over the limit.
_REPEAT_AFTER = 1.0

_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


class MemoryLimitExceeded(KeyboardInterrupt):
    """A request was ended because its server's memory passed the limit.

    A :class:`KeyboardInterrupt` so that command code catching
    ``Exception`` cannot swallow it, as with a cancel.
    """


def parse_memory_size(value: Any) -> int:
    """A memory size in bytes, from ``4GB``, ``500MB``, ``1.5G``, ``2GiB`` or a number of bytes.

    Units are powers of 1024 (``1GB`` = ``1GiB`` = 1024**3 bytes), as in
    Slurm's ``--mem`` and in CASA's ``system.resources.memory`` (in MB).

    Raises
    ------
    ValueError
        For anything else, or a size of zero; the message names the value.
    """
    if isinstance(value, bool):
        raise ValueError(f"a memory size must be like 4GB, 500MB or a number of bytes, got {value!r}")
    if isinstance(value, (int, float)):
        size = int(value)
    else:
        match = _SIZE.match(str(value))
        if match is None:
            raise ValueError(f"a memory size must be like 4GB, 500MB or a number of bytes, got {value!r}")
        size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if size <= 0:
        raise ValueError(f"a memory size must be positive, got {value!r}")
    return size


def format_bytes(size: float | None) -> str:
    """``1288490188`` → ``'1.2 GB'`` (powers of 1024, as :func:`parse_memory_size` reads them)."""
    if size is None:
        return ""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(size) < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.3g} {unit}"
        size /= 1024
    return f"{size:.3g} TB"


def _casarc_files() -> list[Path]:
    listed = os.environ.get("CASARCFILES")
    if listed:
        return [Path(part).expanduser() for part in listed.split(":") if part]
    return [Path.home() / ".casarc"]


def casarc_memory_limit(files: list[Path] | None = None) -> tuple[int | None, str | None]:
    """The memory CASA is told it may use in ``.casarc``, in bytes, and where it was found.

    casacore (``HostInfo::memoryTotal``) reads ``system.resources.memory``
    (megabytes) and, when that is absent, ``system.resources.memfrac``
    (percent of the machine's memory) from its resource files:
    ``$CASARCFILES`` (colon-separated) if set, else ``~/.casarc``. Later
    definitions win, as in casacore.

    Returns
    -------
    (int or None, str or None)
        The size in bytes and a description of its origin, or ``(None, None)``.
    """
    values: dict[str, tuple[str, Path]] = {}
    for path in files if files is not None else _casarc_files():
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("system.resources.memory", "system.resources.memfrac") and value.strip():
                values[key] = (value.strip(), path)
    if "system.resources.memory" in values:
        text, path = values["system.resources.memory"]
        try:
            return int(float(text)) * 1024**2, f"system.resources.memory: {text} in {path}"
        except ValueError:
            pass
    if "system.resources.memfrac" in values:
        text, path = values["system.resources.memfrac"]
        try:
            import psutil

            fraction = float(text) / 100
            if fraction > 0:
                return int(psutil.virtual_memory().total * fraction), f"system.resources.memfrac: {text} in {path}"
        except ValueError:
            pass
    return None, None


def effective_memory_limit(limit: int | None) -> tuple[int | None, str | None]:
    """The per-server limit to enforce: ``limit`` if given, else ``.casarc``'s, and where it came from."""
    if limit is not None:
        return limit, "CASA_MAGICS_MEMORY_LIMIT"
    return casarc_memory_limit()


# ------------------------------------------------------------------ servers
_reasons: dict[int, MemoryLimitExceeded] = {}  # request ID -> why the watcher ended it
_watch: "_MemoryWatch | None" = None


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

        from . import server_side

        process = psutil.Process()
        while True:
            try:
                self.rss = process.memory_info().rss
                board = server_side._board
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
        board.interrupt = running
        os.kill(os.getpid(), signal.SIGINT)

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


def start_memory_watch(limit: int | None) -> None:
    """Start this server's memory watcher, or change its limit (None: only measure)."""
    global _watch
    if _watch is None:
        _watch = _MemoryWatch(limit)
        _watch.start()
    else:
        _watch.limit = limit


# ------------------------------------------------------------------ client
def available_memory() -> int | None:
    """Memory this machine can still give without swapping (psutil's ``available``), in bytes."""
    try:
        import psutil

        return psutil.virtual_memory().available
    except Exception:
        return None


def memory_figures(info: Any, limit: int | None, available: int | None) -> dict[str, Any]:
    """A server's memory figures for its status: ``memory`` (RSS), ``memory_limit``, ``available_memory``.

    ``available`` is this machine's :func:`available_memory`, read once for
    all servers. ``memory`` and ``available_memory`` are None for a server
    on another host; ``memory`` also for one whose process is gone.
    """
    rss = None
    process = info.process()  # None on another host
    if process is not None:
        try:
            rss = process.memory_info().rss
        except Exception:  # gone between the two calls
            rss = None
    return {"memory": rss, "memory_limit": limit, "available_memory": available if info.on_this_host else None}
