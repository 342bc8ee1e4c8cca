"""The run directory: where servers write their logs, and what happens to it at exit.

By default each process gets one private temporary directory
(``casa-magics-*``) holding the servers' CASA logs, the CASA site config and
an embedded cluster's connection files. casa_magics removes it when the
process exits, unless

* the user chose the directory (``CASA_MAGICS_RUN_DIR``): it is theirs;
* the user asked to keep it (``CASA_MAGICS_KEEP_RUN_DIR=1``);
* something failed that its logs explain (a cluster that did not start, a
  server that was lost): then it is kept, and a line on stderr says where.

Runs in the client.
"""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
import threading
from pathlib import Path

from casa_magics.core.config import Settings, load_settings

__all__ = ["default_run_dir", "keep_run_dir", "release_run_dir", "is_temporary_run_dir"]

_lock = threading.Lock()
_created: Path | None = None  # the temporary directory this process made, if any
_kept_because: list[str] = []


def default_run_dir(settings: Settings | None = None) -> Path:
    """The run directory: ``CASA_MAGICS_RUN_DIR``, else one temporary directory per process.

    Servers write their CASA logs here (``casa-server-<id>.log``), and the
    CASA site config and an embedded cluster's connection files live here.
    A temporary directory is removed at exit (see the module's notes).
    """
    global _created
    settings = settings or load_settings()
    if settings.run_dir:
        path = Path(settings.run_dir)
        path.mkdir(parents=True, exist_ok=True)
        return path
    with _lock:
        if _created is None or not _created.is_dir():
            _created = Path(tempfile.mkdtemp(prefix="casa-magics-"))
            atexit.register(_remove_at_exit, _created, settings.keep_run_dir)
        return _created


def keep_run_dir(reason: str) -> None:
    """Keep this process's temporary run directory at exit, because of ``reason`` (its logs explain it)."""
    with _lock:
        if reason not in _kept_because:
            _kept_because.append(reason)


def release_run_dir(reason: str) -> bool:
    """Withdraw a :func:`keep_run_dir` reason; True when no other reason keeps the directory."""
    with _lock:
        if reason in _kept_because:
            _kept_because.remove(reason)
        return not _kept_because


def is_temporary_run_dir(path: str | Path) -> bool:
    """True for a temporary run directory casa_magics made (here or in another process)."""
    path = Path(path)
    return path.parent == Path(tempfile.gettempdir()) and path.name.startswith("casa-magics-")


def _remove_at_exit(path: Path, keep: bool) -> None:
    if keep or not path.is_dir():
        return
    if _kept_because:
        print(f"casa_magics: logs kept in {path} ({'; '.join(_kept_because)})", file=sys.stderr)
        return
    shutil.rmtree(path, ignore_errors=True)
