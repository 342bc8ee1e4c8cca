"""Waiting for engines to register with the controller: the one wait every start uses.

Runs in the client. An embedded start, a Slurm job, a replacement and a
connection to a running cluster all wait the same way (:func:`wait_for_engines`):
until enough new engines have registered, the launcher (``mpiexec``) has
exited, the caller's own check says to stop (a Slurm job that ended), or the
timeout. The outcome is data (:class:`Registration`); each caller words its
own error.
"""

from __future__ import annotations

import enum
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

__all__ = ["Outcome", "Registration", "LauncherWatch", "wait_for_engines", "POLL"]

#: Seconds between two looks at the client's engine IDs (registration has no per-engine event).
POLL = 0.05


class Outcome(enum.Enum):
    """How a wait for engines ended."""

    REGISTERED = "registered"  #: enough new engines registered
    LAUNCHER_EXITED = "launcher exited"  #: the engines' launcher (mpiexec) exited first
    STOPPED = "stopped"  #: the caller's check said to stop waiting (e.g. its Slurm job ended)
    TIMED_OUT = "timed out"  #: the timeout passed first


@dataclass(frozen=True)
class Registration:
    """The outcome of :func:`wait_for_engines`.

    Attributes
    ----------
    outcome : Outcome
    engines : list of int
        The engine IDs that registered during the wait (not in ``known``), sorted.
    exit_code : int or None
        The launcher's exit status when it exited (None: unknown or still running).
    """

    outcome: Outcome
    engines: list[int]
    exit_code: int | None = None

    @property
    def ok(self) -> bool:
        """True when enough engines registered."""
        return self.outcome is Outcome.REGISTERED


class LauncherWatch:
    """Notes when an engine set's launcher process (its ``mpiexec``) exits, and its status.

    ipyparallel waits for the same process in a thread of its own; whichever
    reaps it first gets the status, so :attr:`code` may stay None although
    :attr:`ended` is set. An engine set without one process (ipyparallel's
    local engines) never ends here.

    Parameters
    ----------
    engine_set : ipyparallel engine set launcher
    """

    def __init__(self, engine_set: Any) -> None:
        self.ended = threading.Event()
        self.code: int | None = None
        self._process = getattr(engine_set, "process", None)
        if self._process is not None:
            threading.Thread(target=self._wait, name="casa-magics-launch-watch", daemon=True).start()

    def _wait(self) -> None:
        try:
            self.code = self._process.wait()
        except Exception:  # already reaped by ipyparallel: it has ended too
            self.code = None
        self.ended.set()


def wait_for_engines(
    client: Any,
    n: int,
    timeout: float,
    *,
    known: Iterable[int] = (),
    launcher: LauncherWatch | None = None,
    check: Callable[[], bool] | None = None,
    check_every: float = 1.0,
) -> Registration:
    """Wait until ``n`` engines not in ``known`` have registered with ``client``'s controller.

    Parameters
    ----------
    client : ipyparallel.Client
    n : int
        How many new engines to wait for.
    timeout : float
        Seconds to wait at most.
    known : iterable of int, optional
        Engine IDs that do not count (those registered before a launch).
    launcher : LauncherWatch, optional
        Stop waiting when this launcher exits.
    check : callable, optional
        Called about every ``check_every`` seconds; stop waiting when it returns True.
    check_every : float, optional
        Seconds between two calls of ``check``.

    Returns
    -------
    Registration
        The outcome and the new engine IDs; never raises on a timeout.
    """
    known = set(known)
    deadline = time.monotonic() + timeout
    next_check = time.monotonic() + check_every
    while True:
        new = sorted(set(client.ids) - known)
        if len(new) >= n:
            return Registration(Outcome.REGISTERED, new)
        if launcher is not None and launcher.ended.is_set():
            return Registration(Outcome.LAUNCHER_EXITED, new, launcher.code)
        now = time.monotonic()
        if now >= deadline:
            return Registration(Outcome.TIMED_OUT, new)
        if check is not None and now >= next_check:
            if check():
                return Registration(Outcome.STOPPED, new)
            next_check = time.monotonic() + check_every
        time.sleep(POLL)
