"""A progress bar for requests waited for: in place in Jupyter, one line on a terminal.

Runs in the client.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

__all__ = ["ProgressBar"]


def _in_kernel() -> bool:
    """True in a Jupyter kernel, where a display can be updated in place."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class ProgressBar:
    """Requests done out of a total, and time elapsed, shown in one place.

    In a Jupyter kernel it is an HTML ``<progress>`` display updated in
    place, left complete by :meth:`close`. Elsewhere it is one line on
    stderr, rewritten with ``\\r`` and erased by :meth:`close`.

    Parameters
    ----------
    total : int
        Number of requests waited for.
    started : float, optional
        When the wait began, as :func:`time.monotonic` (default: now).
    rich : bool, optional
        Force the Jupyter (True) or the terminal (False) form.
    stream : file, optional
        Where the terminal form writes (default :data:`sys.stderr`).
    """

    WIDTH = 20

    def __init__(
        self, total: int, *, started: float | None = None, rich: bool | None = None, stream: IO[str] | None = None
    ) -> None:
        self.total = total
        self.rich = _in_kernel() if rich is None else rich
        self.stream = stream
        self.started = time.monotonic() if started is None else started
        self._handle: Any = None
        self._shown = ""
        self.closed = False

    def text(self, done: int) -> str:
        """The terminal form: ``1/2 requests done [##########..........] 0.8 s``."""
        filled = self.WIDTH * done // max(self.total, 1)
        bar = "#" * filled + "." * (self.WIDTH - filled)
        return f"{done}/{self.total} requests done [{bar}] {time.monotonic() - self.started:.1f} s"

    def _bundle(self, done: int) -> dict[str, str]:
        elapsed = time.monotonic() - self.started
        markup = (
            f'<div class="casa-magics-progress"><progress value="{done}" max="{self.total}" '
            f'style="width: 16em; vertical-align: middle"></progress> '
            f"{done}/{self.total} requests done, {elapsed:.1f} s</div>"
        )
        return {"text/html": markup, "text/plain": self.text(done)}

    def update(self, done: int) -> None:
        """Show ``done`` requests finished (and the time elapsed)."""
        if self.closed:
            return
        if self.rich:
            from IPython.display import display, update_display

            if self._handle is None:
                self._handle = display(self._bundle(done), raw=True, display_id=True)
            else:
                update_display(self._bundle(done), raw=True, display_id=self._handle.display_id)
        else:
            stream = self.stream or sys.stderr
            line = self.text(done)
            stream.write("\r" + line.ljust(len(self._shown)))
            stream.flush()
            self._shown = line

    def close(self, done: int) -> None:
        """Finish: the Jupyter form shows its last state, the terminal line is erased."""
        if self.closed:
            return
        if self.rich:
            self.update(done)
        elif self._shown:
            stream = self.stream or sys.stderr
            stream.write("\r" + " " * len(self._shown) + "\r")
            stream.flush()
        self.closed = True
