"""Waiting for responses: one implementation, used by the facade and the magics.

:func:`wait_interactive` (ipyparallel's name for a wait that may show its
progress) blocks until an event is set, with an optional finite timeout and
an optional progress bar. :func:`deferred_interrupts` makes Ctrl-C reliable
during a blocking call on the main thread:

* Python runs a signal handler only between bytecodes of the main thread. A
  Ctrl-C that lands while the client is sending (inside ipyparallel, with a
  lock held, or in a finalizer, where Python prints "Exception ignored" and
  drops the exception) is recorded instead, and raised as
  :class:`KeyboardInterrupt` by the wait, at once, before it blocks. Nothing
  is half-sent, and the interrupt is not lost.
* When the kernel hands the signal to another thread, the main thread is not
  woken from its wait. The wait therefore sleeps at most
  :data:`INTERRUPT_CHECK` seconds at a time; the answer itself still wakes it
  at once (the event is set by the callback that records it).

Runs in the client.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from typing import IO, Callable, Iterator

from casa_magics.client.progress import ProgressBar

__all__ = [
    "wait_interactive",
    "deferred_interrupts",
    "PROGRESS_AFTER_ONE",
    "PROGRESS_AFTER_SEVERAL",
    "PROGRESS_STEP",
    "INTERRUPT_CHECK",
]

#: Seconds a wait on one request runs before a progress bar appears.
PROGRESS_AFTER_ONE = 1.0
#: Seconds a wait on several requests runs before a progress bar appears.
PROGRESS_AFTER_SEVERAL = 0.5
#: Seconds between progress updates (the wait itself ends as soon as the responses are in).
PROGRESS_STEP = 0.2
#: Longest a wait sleeps before it looks for a Ctrl-C that reached another thread.
INTERRUPT_CHECK = 0.25


class _Interrupts:
    """The main thread's Ctrl-C while a blocking call is in progress (one per process)."""

    def __init__(self) -> None:
        self.depth = 0  # nested deferred_interrupts() blocks
        self.previous: object = None  # the handler to put back
        self.pending = False  # a Ctrl-C arrived and was not raised yet
        self.waiting = False  # the main thread is inside a wait: raising there is safe

    def handler(self, signum: int, frame: object) -> None:
        self.pending = True  # kept even when raised, in case Python drops the exception
        if self.waiting:
            raise KeyboardInterrupt

    def raise_pending(self) -> None:
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt


_interrupts = _Interrupts()


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold a Ctrl-C that arrives during the block until a wait (or the block's end) raises it.

    Only on the main thread and while SIGINT has Python's default handler
    (the one that raises :class:`KeyboardInterrupt`, also in a Jupyter
    kernel during a cell); elsewhere it does nothing. Blocks may nest.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _interrupts.depth == 0:
        if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            yield  # the user's own handler (or SIG_IGN) stays in charge
            return
        _interrupts.pending = False
        _interrupts.previous = signal.signal(signal.SIGINT, _interrupts.handler)
    _interrupts.depth += 1
    completed = False
    try:
        yield
        completed = True
    finally:
        _interrupts.depth -= 1
        if _interrupts.depth == 0:
            signal.signal(signal.SIGINT, _interrupts.previous)  # type: ignore[arg-type]
            if completed:
                _interrupts.raise_pending()  # arrived after the last wait, or with no wait at all
            _interrupts.pending = False


def _wait_a_while(event: threading.Event, seconds: float) -> bool:
    """``event.wait(seconds)``, during which a Ctrl-C raises at once."""
    _interrupts.waiting = True
    try:
        _interrupts.raise_pending()
        return event.wait(seconds)
    finally:
        _interrupts.waiting = False


def wait_interactive(
    event: threading.Event,
    *,
    total: int = 1,
    done: Callable[[], int] | None = None,
    timeout: float | None = None,
    progress: bool = False,
    stream: IO[str] | None = None,
) -> bool:
    """Wait until ``event`` is set, at most ``timeout`` seconds; with ``progress``, show how far it got.

    With ``progress``, a :class:`~casa_magics.notebook.display.ProgressBar` appears
    once the wait has lasted :data:`PROGRESS_AFTER_SEVERAL` seconds (several
    requests) or :data:`PROGRESS_AFTER_ONE` (one), is updated every
    :data:`PROGRESS_STEP` seconds, and is closed at the end: left complete in
    Jupyter, erased in a terminal. Ctrl-C raises :class:`KeyboardInterrupt`
    (see :func:`deferred_interrupts`); the bar is closed first.

    Parameters
    ----------
    event : threading.Event
        Set when everything waited for is done.
    total : int
        Number of things waited for (requests).
    done : callable, optional
        Returns how many are done now; needed with ``progress``.
    timeout : float, optional
        Longest wait in seconds; None waits until the event is set.
    progress : bool
        Show a progress bar when the wait is not short.
    stream : file, optional
        Where a terminal progress bar writes (default :data:`sys.stderr`).

    Returns
    -------
    bool
        True when the event was set, False when the timeout passed first.
    """
    if timeout is not None and not timeout >= 0:
        raise ValueError(f"timeout must be None or a number of seconds >= 0, got {timeout!r}")
    if progress and done is None:
        raise ValueError("progress needs done, the function that counts what is done")
    started = time.monotonic()
    show_after = PROGRESS_AFTER_SEVERAL if total > 1 else PROGRESS_AFTER_ONE
    bar: ProgressBar | None = None
    with deferred_interrupts():
        try:
            while True:
                waited = time.monotonic() - started
                if timeout is not None and waited >= timeout:
                    return event.is_set()
                step = INTERRUPT_CHECK
                if progress:
                    step = min(step, PROGRESS_STEP if bar is not None else max(show_after - waited, 0.0))
                if timeout is not None:
                    step = min(step, timeout - waited)
                if _wait_a_while(event, step):
                    return True
                if progress and time.monotonic() - started >= show_after:
                    bar = bar or ProgressBar(total, started=started, stream=stream)
                    bar.update(done())  # type: ignore[misc]
        finally:
            if bar is not None:
                bar.close(done())  # type: ignore[misc]
