"""The servers' memory limit as the client works it out, and the memory figures it shows.

Runs in the client. The limit comes from ``CASA_MAGICS_MEMORY_LIMIT`` (or
``ClusterSession.start(memory_limit=...)``); without one, CASA's own memory
setting in ``.casarc`` is used, as casacore reads it
(:func:`casarc_memory_limit`). The servers enforce it
(:mod:`casa_magics.server.memory`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


__all__ = ["casarc_memory_limit", "effective_memory_limit", "available_memory", "memory_figures"]


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
