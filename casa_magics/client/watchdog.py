"""The watchdog: is each server alive, and is it answering?

Runs in the client. Its one job: look at the servers every so often (a
daemon thread) and say, for each, whether it is lost (its engine
unregistered, its process gone, its Slurm job ended) or silent (its process
stopped) and for how long, and whether that silence has now lasted past
the server timeout. What follows from a verdict (answering requests with
``'timeout'``, replacing a server) is the
:class:`~casa_magics.client.dispatcher.Dispatcher`'s to do.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable

from casa_magics.cluster.server_map import GONE, STOPPED, ServerInfo

__all__ = ["Watchdog", "Sweep", "Silence", "look_at", "judge_silence"]

log = logging.getLogger("casa_magics")


class Watchdog:
    """A daemon thread that calls ``check()`` every ``interval`` seconds until ``stop`` is set.

    Parameters
    ----------
    check : callable
        One look at every server; an exception is logged and the watch goes on.
    interval : float
        Seconds between looks.
    stop : threading.Event
        Set to end the thread.
    """

    def __init__(self, check: Callable[[], None], interval: float, stop: threading.Event) -> None:
        self._check = check
        self._interval = interval
        self._stop = stop
        self.thread = threading.Thread(target=self._watch, name="casa-magics-watchdog", daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._check()
            except Exception:  # the watchdog must outlive any one bad check
                log.exception("server check failed")


def look_at(info: ServerInfo, registered: set[int]) -> tuple[str | None, bool]:
    """Why a server is lost (None if it is not), and whether its process is stopped.

    Parameters
    ----------
    info : ServerInfo
        The server.
    registered : set of int
        Engine IDs registered with the controller now.
    """
    if info.engine not in registered:
        return "its engine unregistered from the controller", False
    liveness = info.liveness()
    return ("its process is gone" if liveness == GONE else None), liveness == STOPPED


class Sweep:
    """One look at every server of a session.

    A session whose servers are one Slurm job says when Slurm ended it; then
    that is every server's reason. It is asked once for the sweep, and
    afresh (at most once) when a server looks lost.

    Parameters
    ----------
    session : ClusterSession
        The session (its ipyparallel client says which engines are registered).
    """

    def __init__(self, session: Any) -> None:
        self._session = session
        self._registered = set(session.client.ids)
        self._all_lost: str | None = session.lost_reason()
        self._asked_afresh = False

    def look(self, info: ServerInfo) -> tuple[str | None, bool]:
        """Why the server is lost (None if it is not), and whether its process is stopped.

        Parameters
        ----------
        info : ServerInfo
            A server not lost yet.
        """
        if self._all_lost:
            return self._all_lost, False
        why_lost, stopped = look_at(info, self._registered)
        if why_lost and not self._asked_afresh:
            # Did Slurm end the whole job? Then that is the reason, for this server and the rest.
            self._asked_afresh = True
            self._all_lost = self._session.lost_reason(fresh=True)
            why_lost = self._all_lost or why_lost
        return why_lost, stopped


@dataclass(frozen=True, slots=True)
class Silence:
    """A live server's silence after one look."""

    #: Since when its process is stopped (None: it is not).
    since: float | None
    #: Its silence passed the server timeout just now, with work for it: it times out.
    times_out: bool = False
    #: It had timed out and answers again, with nothing in flight: it is back.
    back: bool = False


def judge_silence(
    stopped: bool, since: float | None, timed_out: bool, has_work: bool, in_flight: bool, now: float, timeout: float
) -> Silence:
    """What one look at a live (not lost) server means.

    Parameters
    ----------
    stopped : bool
        Its process is stopped now.
    since : float or None
        Since when it was silent before this look.
    timed_out : bool
        It has timed out already.
    has_work : bool
        Something is in flight to it or waiting for it.
    in_flight : bool
        Something is in flight to it.
    now : float
        The time of this look.
    timeout : float
        The server timeout, in seconds.

    Returns
    -------
    Silence
        Since when it is silent, and whether it times out or is back now.
    """
    if stopped:
        since = now if since is None else since
        return Silence(since, times_out=not timed_out and now - since >= timeout and has_work)
    return Silence(None, back=timed_out and not in_flight)
