"""The live view of the servers: ``%casa_status --live`` and :func:`casa_magics.live_view`.

A widget (ipywidgets) that shows, about twice a second until it is closed
or the cluster stops, each server (state, running command and for how
long, memory against its limit, CASA import state, host), a task stream
(one row per server, a bar per request, coloured by task, failures
marked, the last few minutes) and the totals. A daemon thread draws it, so
it moves on while another cell runs, a blocking casatasks call included:
widget updates from a thread reach the front end over the kernel's iopub.

It reads only what the client knows already
(:meth:`~casa_magics.client.dispatcher.Dispatcher.activity_snapshot`: the
dispatcher's records, the answers so far, ``/proc`` and the servers' CASA
state files): nothing more is sent to the servers.

Where no widget can be shown (a terminal IPython, plain Python) it shows
the state once, as text. In a kernel the output also carries the state as
HTML and text, which front ends without widgets (nbconvert, nbval) show;
:meth:`LiveView.close` replaces the whole output by the last state, so a
notebook run by nbconvert keeps that.

Runs in the client (IPython, Jupyter or a terminal).
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Any, Callable

from casa_magics.client.activity import Snapshot
from casa_magics.client.client import CommandClient, MPICommandClient
from casa_magics.cluster.session import has_current_session
from casa_magics.core.errors import CommandRequestError
from casa_magics.notebook.live_render import TaskColours, render_html, render_text

__all__ = ["LiveView", "live_view", "WINDOW", "INTERVAL", "widgets_available"]

log = logging.getLogger("casa_magics")

#: Seconds of the task stream, and between two draws.
WINDOW = 180.0
INTERVAL = 0.5
_WINDOW_RANGE = (10.0, 3600.0)
_INTERVAL_RANGE = (0.1, 60.0)
#: Longest wait for the drawing thread to end on close.
_JOIN_TIMEOUT = 5.0


def widgets_available() -> bool:
    """True when a widget can be shown here: ipywidgets is installed and this is a Jupyter kernel."""
    try:
        from IPython import get_ipython

        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _in_range(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value <= high:
        raise CommandRequestError(f"{name} must be a number of seconds from {low:g} to {high:g}, got {value!r}")
    return float(value)


class LiveView:
    """A view of the servers that draws itself again every ``interval`` seconds.

    Made by :func:`casa_magics.live_view`; shown by displaying it (the last line of a
    cell). It stops when :meth:`close` is called, its Close button is
    pressed, its widget is closed, or the cluster stops.

    Parameters
    ----------
    source : callable
        ``source(window)`` returns a ``Snapshot`` (``casa_magics.client.activity``)
        (see ``CommandClient.activity_source``).
    window : float
        Seconds of the task stream.
    interval : float
        Seconds between draws.
    widget : bool
        Draw into a live widget (with a thread); False: show the state once.
    """

    def __init__(self, source: Callable[[float], Snapshot], window: float = WINDOW, interval: float = INTERVAL,
                 widget: bool = True) -> None:
        self._source = source
        self.window = window
        self.interval = interval
        self._colours = TaskColours()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._closed = False
        self._display: Any = None
        self.snapshot: Snapshot = source(window)
        self.draws = 1
        self._html: Any = None
        self._box: Any = None
        self._thread: threading.Thread | None = None
        if widget and not self.snapshot.stopped:
            self._make_widget()
            self._thread = threading.Thread(target=self._run, name="casa-magics-live-view", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------ widget
    def _make_widget(self) -> None:
        import ipywidgets

        self._html = ipywidgets.HTML(value=render_html(self.snapshot, self._colours))
        button = ipywidgets.Button(description="Close", tooltip="stop updating; keep the last state",
                                   layout=ipywidgets.Layout(width="72px", height="24px"))
        button.on_click(lambda _button: self.close())
        self._box = ipywidgets.VBox([self._html, button])
        self._box.add_class("casa-live-widget")

    @property
    def live(self) -> bool:
        """True while the view draws itself again (its thread runs)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def html(self) -> str:
        """What the view shows now, as HTML."""
        return render_html(self.snapshot, self._colours, self._note(), fit=self._closed or self.snapshot.stopped)

    @property
    def text(self) -> str:
        """What the view shows now, as text."""
        return render_text(self.snapshot)

    def _note(self) -> str:
        if self._closed:
            return "closed"
        return "" if self._thread is not None else "a snapshot (live updates need Jupyter widgets)"

    def _widget_closed(self) -> bool:
        return self._html is not None and getattr(self._html, "comm", None) is None

    def _run(self) -> None:
        """Draw every ``interval`` seconds until stopped, the widget is closed, or the cluster stops."""
        while not self._stop.wait(self.interval):
            if self._widget_closed():
                break
            try:
                snapshot = self._source(self.window)
            except Exception as error:  # a cluster going away mid-read: try again, or end below
                log.debug("live view: %s", error)
                continue
            with self._lock:
                if self._stop.is_set():
                    break
                self.snapshot = snapshot
                self.draws += 1
                self._html.value = self.html
            if snapshot.stopped:
                break

    # ------------------------------------------------------------ display
    def _bundle(self, widget: bool) -> dict[str, Any]:
        bundle = {"text/plain": self.text, "text/html": self.html}
        if widget and self._box is not None and not self._closed:
            shown = self._box._repr_mimebundle_()
            bundle["application/vnd.jupyter.widget-view+json"] = shown["application/vnd.jupyter.widget-view+json"]
        return bundle

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return self._bundle(widget=True)

    def _ipython_display_(self) -> None:
        """Show the view (with an ID, so that :meth:`close` can leave the last state in its place)."""
        from IPython.display import display

        handle = display(self._bundle(widget=True), raw=True, display_id=True)
        if self._display is None:
            self._display = handle

    def __repr__(self) -> str:
        return self.text

    # ------------------------------------------------------------ closing
    def close(self) -> None:
        """Stop updating; the output keeps the last state (as HTML and text, no widget). Safe to call twice."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN_TIMEOUT)
        with self._lock:
            if self._closed:
                return
            try:
                self.snapshot = self._source(self.window)
            except Exception as error:  # the cluster is gone: keep the last snapshot
                log.debug("live view: %s", error)
            self._closed = True
            if self._html is not None:
                self._html.value = self.html
        if self._display is not None and self._thread is not None:  # a snapshot shown once stays as it was
            self._display.update(self._bundle(widget=False), raw=True)
        if self._box is not None:
            for child in self._box.children:
                child.close()
            self._box.close()


def live_view(client: CommandClient | None = None, window: float = WINDOW, interval: float = INTERVAL,
              widget: bool | None = None) -> LiveView:
    """A live view of the servers, for a notebook: show it by making it a cell's last line.

    Per server: state (idle, busy, queued, lost, replacing), the running
    request (casatasks' sub-MS jobs named by task and sub-MS) and for how
    long, memory against its limit, CASA import state, host. A task stream:
    a row per server, a bar per request over the last ``window`` seconds,
    coloured by task, failures marked; hovering a bar shows the request's
    ID, command, times and outcome. Totals: done, failed, cancelled,
    running, queued. It reads what the client knows already: the servers
    are sent nothing more.

    Parameters
    ----------
    client : CommandClient, optional
        Whose cluster to show (default: the process-wide
        :class:`~casa_magics.MPICommandClient`). No cluster is started.
    window : float
        Seconds of the task stream (10 to 3600, default 180).
    interval : float
        Seconds between draws (0.1 to 60, default 0.5).
    widget : bool, optional
        Live widget or the state once as text/HTML; default: a widget when
        this is a Jupyter kernel with ipywidgets.

    Returns
    -------
    LiveView
        Its :meth:`~casa_magics.notebook.live_view.LiveView.close` stops it; it stops by itself when the cluster stops.

    Raises
    ------
    CommandRequestError
        When no cluster is running, or for a bad ``window`` or ``interval``.

    Examples
    --------
    >>> import casa_magics                  # doctest: +SKIP
    >>> view = casa_magics.live_view()      # doctest: +SKIP
    >>> view                                # doctest: +SKIP
    >>> view.close()                        # doctest: +SKIP
    """
    window = _in_range("window", window, *_WINDOW_RANGE)
    interval = _in_range("interval", interval, *_INTERVAL_RANGE)
    if client is None:
        if not has_current_session():
            raise CommandRequestError("no cluster is running: %casa_cluster start starts one")
        client = MPICommandClient()
    if widget is None:
        widget = widgets_available()
    return LiveView(client.activity_source(), window, interval, widget=bool(widget))
