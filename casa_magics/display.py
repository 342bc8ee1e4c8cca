"""How responses, server status and waits look: HTML in Jupyter, text in a terminal.

Nothing here talks to a cluster. The magics hand in the plain dicts the
client returns and get back strings, or lists and dicts that stay plain but
know how to draw themselves (:class:`ResponseList`, :class:`ServerStatus`).
"""

from __future__ import annotations

import html
import os
import sys
import time
from typing import IO, Any, Iterable, Mapping

from .checks import clip
from .memory import format_bytes
from .requests import RECEIVED

__all__ = [
    "html_table",
    "text_table",
    "brief",
    "RawHTML",
    "ResponseList",
    "ServerStatus",
    "responses_html",
    "responses_text",
    "status_html",
    "status_text",
    "echo_streams",
    "ProgressBar",
]

#: Characters of a value shown in a table cell.
BRIEF = 60


class RawHTML(str):
    """A table cell that :func:`html_table` inserts as HTML, unescaped."""

    __slots__ = ()


def brief(value: Any, limit: int = BRIEF) -> str:
    """``repr(value)`` on one line, cut to ``limit`` characters.

    Examples
    --------
    >>> brief("x" * 100, 10)
    "'xxxxxx..."
    >>> brief([1, 2])
    '[1, 2]'
    """
    return _one_line(repr(value), limit)


def _one_line(text: str, limit: int) -> str:
    return clip(" ".join(text.split()), limit)


def _columns(rows: list[Mapping[str, Any]]) -> list[str]:
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return list(columns)


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def html_table(rows: list[Mapping[str, Any]], caption: str | None = None) -> str:
    """An HTML ``<table>`` with one row per dict and one column per key.

    Values are escaped, except :class:`RawHTML` ones. Every cell carries the
    class ``casa-<column>`` so that a stylesheet, or a test, can find it.

    Parameters
    ----------
    rows : list of dict
        The rows; columns are the keys, in the order first seen.
    caption : str, optional
        A caption above the table.

    Examples
    --------
    >>> html_table([{"server": 1, "host": "node<1>"}])
    '<table class="casa-magics"><thead><tr><th>server</th><th>host</th></tr></thead><tbody><tr><td class="casa-server">1</td><td class="casa-host">node&lt;1&gt;</td></tr></tbody></table>'
    """
    columns = _columns(rows)
    head = "".join(f"<th>{html.escape(column, quote=False)}</th>" for column in columns)
    body = []
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column)
            text = value if isinstance(value, RawHTML) else html.escape(_cell(value), quote=False)
            cells.append(f'<td class="casa-{html.escape(column.replace(" ", "-"))}">{text}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    title = f"<caption>{html.escape(caption, quote=False)}</caption>" if caption else ""
    return f'<table class="casa-magics">{title}<thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def text_table(rows: list[Mapping[str, Any]], caption: str | None = None) -> str:
    """The same table as aligned text, for terminals.

    Examples
    --------
    >>> print(text_table([{"id": 1, "ret": 2}, {"id": 10, "ret": None}]))
    id  ret
     1    2
    10
    """
    columns = _columns(rows)
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max([len(column)] + [len(line[i]) for line in cells]) for i, column in enumerate(columns)]

    def numeric(i: int) -> bool:
        values = [row.get(columns[i]) for row in rows]
        return all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values)

    def line(values: list[str], header: bool = False) -> str:
        parts = [
            value.rjust(widths[i]) if numeric(i) and not header else value.ljust(widths[i])
            for i, value in enumerate(values)
        ]
        return "  ".join(parts).rstrip()

    lines = ([caption] if caption else []) + [line(columns, header=True)] + [line(values) for values in cells]
    return "\n".join(lines)


# ---------------------------------------------------------------- responses
def _seconds(start: float | None, stop: float | None) -> str:
    return "" if start is None or stop is None else f"{stop - start:.2f} s"


def _error_summary(response: Mapping[str, Any]) -> str:
    """The last line of a failure's traceback, with the status when it is not a normal answer."""
    if response.get("successful"):
        return ""
    lines = [line for line in (response.get("traceback") or "").splitlines() if line.strip()]
    summary = lines[-1] if lines else "no traceback"
    status = response.get("status")
    if status and status != RECEIVED:
        summary = f"[{status}] {summary}"
    return _one_line(summary, 2 * BRIEF)


def _response_rows(responses: Iterable[Mapping[str, Any]], rich: bool) -> list[dict[str, Any]]:
    rows = []
    for response in responses:
        summary = _error_summary(response)
        if rich and summary:
            folded = html.escape(response.get("traceback") or "", quote=False)
            summary = html.escape(summary, quote=False)
            error: Any = RawHTML(f"<details><summary>{summary}</summary><pre>{folded}</pre></details>")
        else:
            error = summary
        rows.append(
            {
                "id": response.get("id"),
                "server": response.get("server"),
                "successful": response.get("successful"),
                "ret": brief(response.get("ret")) if response.get("successful") else "",
                "time": _seconds(response.get("command_start_time"), response.get("command_stop_time")),
                "traceback": error,
            }
        )
    return rows


def _responses_caption(responses: list[Mapping[str, Any]]) -> str:
    failed = sum(1 for response in responses if not response.get("successful"))
    noun = "response" if len(responses) == 1 else "responses"
    return f"{len(responses)} {noun}" + (f", {failed} failed" if failed else "")


def responses_html(responses: list[Mapping[str, Any]]) -> str:
    """Response dicts as an HTML table: id, server, successful, ret (brief), time, traceback (folded)."""
    return html_table(_response_rows(responses, rich=True), caption=_responses_caption(responses))


def responses_text(responses: list[Mapping[str, Any]]) -> str:
    """Response dicts as a text table; a failure shows the last line of its traceback."""
    if not responses:
        return "0 responses"
    return text_table(_response_rows(responses, rich=False), caption=_responses_caption(responses))


class ResponseList(list):
    """A list of response dicts that draws itself as a table.

    It is a plain :class:`list` in every other way: it compares equal to a
    list with the same dicts, ``repr()`` and ``print()`` show the list, and
    its items are the client's own dicts. Only IPython's display uses the
    table (HTML in Jupyter, text in a terminal).
    """

    __slots__ = ()

    def _repr_html_(self) -> str:
        return responses_html(self)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text("[...]" if cycle else responses_text(self))


# ---------------------------------------------------------------- status
def _status_rows(status: Mapping[int, Mapping[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for server, state in sorted(status.items()):
        if state.get("lost"):
            health = f"lost: {state['lost']}"
        elif state.get("timeout"):
            health = "not answering"
        else:
            health = "ok"
        if state.get("replaced") and not state.get("lost"):  # a replacement: its state is fresh
            health += f"; {state['replaced']}"
        running_for = state.get("running_for")
        rows.append(
            {
                "server": server,
                "engine": state.get("engine"),
                "host": state.get("processor"),
                "pid": state.get("pid"),
                "busy": "yes" if state.get("busy") else "no",
                "command": _one_line(state.get("command") or "", BRIEF),
                "running for": "" if running_for is None else f"{running_for:.1f} s",
                "queued": state.get("queued"),
                "state": health,
            }
        )
        if "casa" in state:  # whether CASA is imported there (get_server_status() says)
            rows[-1]["CASA"] = state["casa"]
        if "memory" in state:  # resident memory, "of" the limit when one is set
            limit = state.get("memory_limit")
            rows[-1]["memory"] = format_bytes(state["memory"]) + (f" of {format_bytes(limit)}" if limit else "")
    return rows


def _status_caption(status: Mapping[int, Mapping[str, Any]]) -> str:
    logs = {os.path.dirname(str(state["log"])) for state in status.values() if state.get("log")}
    caption = "CASA server status" + (f" (logs in {logs.pop()})" if len(logs) == 1 else "")
    available = {state.get("available_memory") for state in status.values()} - {None}
    if available:  # the machine's, as the client sees it
        caption += f"; {format_bytes(max(available))} of memory available"
    return caption


def status_html(status: Mapping[int, Mapping[str, Any]]) -> str:
    """``get_server_status()`` as an HTML table, one row per server."""
    return html_table(_status_rows(status), caption=_status_caption(status))


def status_text(status: Mapping[int, Mapping[str, Any]]) -> str:
    """``get_server_status()`` as a text table, one row per server."""
    return text_table(_status_rows(status), caption=_status_caption(status))


class ServerStatus(dict):
    """``get_server_status()``'s dict (keyed by server ID) that draws itself as a table.

    A plain :class:`dict` in every other way, like :class:`ResponseList`.
    """

    __slots__ = ()

    def _repr_html_(self) -> str:
        return status_html(self)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text("{...}" if cycle else status_text(self))


# ---------------------------------------------------------------- streams
def echo_streams(
    responses: Iterable[Mapping[str, Any]], stdout: IO[str] | None = None, stderr: IO[str] | None = None
) -> None:
    """Print what commands wrote on their servers, each line prefixed by the server ID.

    ``stdout`` lines go to ``stdout`` (default :data:`sys.stdout`), ``stderr``
    lines to ``stderr``, as ``[server 2] text``.
    """
    for response in responses:
        prefix = f"[server {response.get('server', '?')}] "
        for key, stream in (("stdout", stdout or sys.stdout), ("stderr", stderr or sys.stderr)):
            text = response.get(key) or ""
            if text:
                stream.write("".join(prefix + line + "\n" for line in text.splitlines()))
                stream.flush()


# ---------------------------------------------------------------- progress
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
