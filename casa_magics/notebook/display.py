"""How responses, server status and waits look: HTML in Jupyter, text in a terminal.

Nothing here talks to a cluster. The magics hand in the plain dicts the
client returns and get back strings, or lists and dicts that stay plain but
know how to draw themselves (:class:`ResponseList`, :class:`ServerStatus`).

Runs in the client (IPython, Jupyter or a terminal).
"""

from __future__ import annotations

import html
import os
import sys
from typing import IO, Any, Iterable, Mapping

from casa_magics.client.progress import ProgressBar
from casa_magics.core.tables import BRIEF, RawHTML, brief, html_table, one_line, text_table
from casa_magics.core.units import format_bytes
from casa_magics.client.requests import RECEIVED

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
    return one_line(summary, 2 * BRIEF)


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
                "command": one_line(state.get("command") or "", BRIEF),
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


