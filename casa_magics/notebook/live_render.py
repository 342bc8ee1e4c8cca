"""Drawing the live view: a :class:`~casa_magics.client.activity.Snapshot` as HTML (with an SVG task stream) or text.

Pure functions of a snapshot: no cluster, no widgets, no clock (the
snapshot says what "now" is), so a test can draw any state. The live view
(:mod:`casa_magics.notebook.live_view`) puts the HTML into a widget twice a
second; where there is no widget front end the same HTML or text is shown
once.

The HTML carries ``data-*`` attributes (a server row's ``data-state``, a
bar's ``data-request`` and ``data-outcome``) so that a browser test, or a
stylesheet, can find them.

Runs in the client.
"""

from __future__ import annotations

import html
import time
from typing import Iterable

from casa_magics.client.activity import (
    CANCELLED_OUTCOME, DONE, FAILED, RUNNING, TIMED_OUT, ServerView, Snapshot, Span,
)
from casa_magics.core.tables import text_table
from casa_magics.core.units import format_bytes

__all__ = ["TaskColours", "render_html", "render_text", "span_title", "fitted_window", "PALETTE", "FAILURE_COLOUR"]

#: Colours of tasks, in the order tasks first appear (colour-blind-friendly Tableau 10, without its red).
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f", "#ff9da7", "#bab0ac")
#: What marks a failed or timed-out request.
FAILURE_COLOUR = "#d62728"
_STATE_COLOURS = {
    "idle": ("#e8f3e8", "#2e7d32"),
    "busy": ("#e3edf7", "#1f5a96"),
    "not answering": ("#fff3e0", "#b35c00"),
    "replacing": ("#fff3e0", "#b35c00"),
    "lost": ("#fde8e8", "#b71c1c"),
}
_OUTCOME_WORDS = {DONE: "done", FAILED: "failed", CANCELLED_OUTCOME: "cancelled", TIMED_OUT: "timed out", RUNNING: "running"}

# The task stream's geometry, in SVG user units (the drawing scales to the output's width).
_WIDTH, _LEFT, _RIGHT, _ROW, _BAR, _AXIS = 960, 92, 14, 28, 18, 22
_CHAR = 6.4  # width of a character at the bars' font size


class TaskColours:
    """Which colour each task has: the next free one of :data:`PALETTE` when a task first appears.

    One per live view, so a task keeps its colour while the view lives.
    """

    def __init__(self) -> None:
        self._colours: dict[str, str] = {}

    def __call__(self, task: str) -> str:
        """The colour of ``task`` (given one on first sight)."""
        if task not in self._colours:
            self._colours[task] = PALETTE[len(self._colours) % len(PALETTE)]
        return self._colours[task]

    def assign(self, tasks: Iterable[str]) -> None:
        """Give colours to ``tasks`` in this order (those without one yet)."""
        for task in tasks:
            self(task)


# ---------------------------------------------------------------- words
def _clock(epoch: float, decimals: bool = False) -> str:
    text = time.strftime("%H:%M:%S", time.localtime(epoch))
    return f"{text}.{int(epoch % 1 * 10)}" if decimals else text


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _memory(view: ServerView) -> str:
    if view.memory is None:
        return ""
    text = format_bytes(view.memory)
    return f"{text} of {format_bytes(view.memory_limit)}" if view.memory_limit else text


def _state(view: ServerView) -> str:
    return f"{view.state}, {view.queued} queued" if view.queued else view.state


def span_title(span: Span, now: float) -> str:
    """A bar's tooltip: the request's ID, name, server, times and outcome, and its command."""
    stop = span.stop if span.stop is not None else now
    ended = "now" if span.stop is None else _clock(span.stop, True)
    return (
        f"request {span.request}: {span.label}\n"
        f"server {span.server}, {_clock(span.start, True)} → {ended} ({_duration(stop - span.start)})\n"
        f"{_OUTCOME_WORDS.get(span.outcome, span.outcome)}\n"
        f"{span.command}"
    )


def _totals_words(snapshot: Snapshot) -> list[tuple[str, int]]:
    t = snapshot.totals
    return [("done", t.done), ("failed", t.failed), ("cancelled", t.cancelled), ("running", t.running), ("queued", t.queued)]


# ---------------------------------------------------------------- HTML
_STYLE = """<style>
.casa-live{font-family:var(--jp-ui-font-family,system-ui,sans-serif);font-size:12.5px;color:var(--jp-ui-font-color1,#1b1b1b);
 max-width:980px;line-height:1.35}
.casa-live-head{display:flex;flex-wrap:wrap;align-items:baseline;gap:6px 14px;margin:2px 0 6px}
.casa-live-title{font-weight:600;font-size:13.5px}
.casa-live-sub{color:var(--jp-ui-font-color2,#616161)}
.casa-live-totals{display:flex;gap:6px;margin-left:auto}
.casa-live-total{border-radius:10px;padding:1px 8px;background:#eef1f4;color:#333;font-variant-numeric:tabular-nums}
.casa-live-total.bad{background:#fde8e8;color:#b71c1c;font-weight:600}
.casa-live table.casa-live-servers{border-collapse:collapse;width:100%;table-layout:fixed;margin-bottom:6px;
 font-size:inherit;color:inherit;font-variant-numeric:tabular-nums}
.casa-live-servers td,.casa-live-servers th{overflow:hidden;text-overflow:ellipsis}
.casa-live-servers th{text-align:left;font-weight:600;color:var(--jp-ui-font-color2,#555);border-bottom:1px solid #ccd;
 padding:3px 8px}
.casa-live-servers td{padding:3px 8px;border-bottom:1px solid #eef;vertical-align:middle;white-space:nowrap}
.casa-live-pill{border-radius:9px;padding:1px 8px;font-weight:600;font-size:11.5px}
.casa-live-swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:5px;vertical-align:-1px}
.casa-live-mem{display:inline-block;width:70px;height:8px;background:#e6e8eb;border-radius:4px;margin-right:6px;
 vertical-align:0;overflow:hidden}
.casa-live-mem>span{display:block;height:100%}
.casa-live-legend{display:flex;flex-wrap:wrap;gap:4px 14px;margin:2px 0 0 6px;color:var(--jp-ui-font-color2,#555)}
.casa-live-muted{color:var(--jp-ui-font-color3,#888)}
.casa-live svg text{font-family:var(--jp-ui-font-family,system-ui,sans-serif)}
</style>"""


def _escape(text: object) -> str:
    return html.escape(str(text), quote=True)


def _memory_cell(view: ServerView) -> str:
    if view.memory is None:
        return '<span class="casa-live-muted">–</span>'
    if not view.memory_limit:
        return f'{_escape(format_bytes(view.memory))} <span class="casa-live-muted">(no limit)</span>'
    fraction = min(view.memory / view.memory_limit, 1.0)
    colour = "#59a14f" if fraction < 0.7 else "#f28e2b" if fraction < 0.9 else FAILURE_COLOUR
    return (
        f'<span class="casa-live-mem" title="{100 * fraction:.0f} % of the limit">'
        f'<span style="width:{100 * fraction:.0f}%;background:{colour}"></span></span>{_escape(_memory(view))}'
    )


def _server_rows(snapshot: Snapshot, colours: TaskColours) -> str:
    rows = []
    for view in snapshot.servers:
        background, colour = _STATE_COLOURS.get(view.state, ("#eee", "#333"))
        state = f'<span class="casa-live-pill" style="background:{background};color:{colour}">{_escape(_state(view))}</span>'
        if view.running is not None:
            span = view.running
            running = (
                f'<span class="casa-live-swatch" style="background:{colours(span.task)}"></span>'
                f'<span title="{_escape(span.command)}">{_escape(span.label)}</span> '
                f'<span class="casa-live-muted">#{span.request}</span>'
            )
            elapsed = _duration(max(snapshot.now - span.start, 0.0))
        elif view.lost:
            running, elapsed = f'<span class="casa-live-muted">{_escape(view.lost)}</span>', ""
        else:
            running, elapsed = "", ""
        pid = f' <span class="casa-live-muted">({view.pid})</span>' if view.pid else ""
        rows.append(
            f'<tr data-server="{view.server}" data-state="{_escape(view.state)}">'
            f'<td><b>{view.server}</b></td><td>{_escape(view.host)}{pid}</td><td class="casa-live-state">{state}</td>'
            f'<td class="casa-live-running">{running}</td><td>{elapsed}</td>'
            f"<td>{_memory_cell(view)}</td><td>{_escape(view.casa or '')}</td></tr>"
        )
    # Shares of the width: the running command takes what is left (about a third).
    widths = {"server": 7, "host (pid)": 14, "state": 14, "running": None, "for": 8, "memory": 18, "CASA": 10}
    head = "".join(
        f'<th style="width:{width}%">{name}</th>' if width else f"<th>{name}</th>" for name, width in widths.items()
    )
    return f'<table class="casa-live-servers"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _tick_step(window: float) -> float:
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800):
        if window / step <= 8:
            return step
    return 3600


def _tick(ago: float) -> str:
    minutes, seconds = divmod(int(round(ago)), 60)
    if not minutes:
        return f"{seconds} s"
    return f"{minutes} min" if not seconds else f"{minutes} min {seconds} s"


def _bar(span: Span, x0: float, x1: float, y: float, colour: str, now: float) -> str:
    width = max(x1 - x0, 2.0)
    title = f"<title>{_escape(span_title(span, now))}</title>"
    attributes = (
        f'data-request="{span.request}" data-server="{span.server}" data-outcome="{span.outcome}" '
        f'data-task="{_escape(span.task)}"'
    )
    failed = span.outcome in (FAILED, TIMED_OUT)
    fill, opacity, stroke = colour, "1", ""
    if span.outcome == CANCELLED_OUTCOME:
        fill, opacity, stroke = "url(#casa-live-cancelled)", "1", ' stroke="#888" stroke-dasharray="3 2"'
    elif failed:
        stroke = f' stroke="{FAILURE_COLOUR}" stroke-width="2"'
    elif span.outcome == RUNNING:
        opacity = "0.85"
    parts = [
        f'<g class="casa-live-bar" {attributes}>{title}'
        f'<rect x="{x0:.1f}" y="{y:.1f}" width="{width:.1f}" height="{_BAR}" rx="3" fill="{fill}" '
        f'fill-opacity="{opacity}"{stroke}/>'
    ]
    if span.outcome == RUNNING:  # the leading edge, at "now"
        parts.append(f'<rect x="{x0 + width - 3:.1f}" y="{y:.1f}" width="3" height="{_BAR}" fill="#000" fill-opacity="0.25"/>')
    room = width - (16 if failed else 8)
    if room > 3 * _CHAR:
        text = span.label if len(span.label) * _CHAR <= room else span.label[: int(room / _CHAR) - 1] + "…"
        parts.append(
            f'<text x="{x0 + 4:.1f}" y="{y + _BAR / 2 + 4:.1f}" font-size="11" fill="#fff" '
            f'style="paint-order:stroke" stroke="#0003" stroke-width="2">{_escape(text)}</text>'
        )
    if failed:
        parts.append(
            f'<text x="{x0 + width - 11:.1f}" y="{y + _BAR / 2 + 4.5:.1f}" font-size="12" font-weight="700" '
            f'fill="{FAILURE_COLOUR}">✕</text>'
            if width >= 14
            else f'<circle cx="{x0 + width / 2:.1f}" cy="{y - 3:.1f}" r="3" fill="{FAILURE_COLOUR}"/>'
        )
    parts.append("</g>")
    return "".join(parts)


def fitted_window(snapshot: Snapshot, least: float = 10.0) -> float:
    """The seconds that hold every bar of ``snapshot`` with a margin (at least ``least``, at most its window)."""
    if not snapshot.spans:
        return snapshot.window
    extent = snapshot.now - min(span.start for span in snapshot.spans)
    return min(max(extent * 1.05, least), snapshot.window)


def _task_stream(snapshot: Snapshot, colours: TaskColours, fit: bool) -> str:
    servers = [view.server for view in snapshot.servers]
    rows = {server: index for index, server in enumerate(servers)}
    height = _AXIS + _ROW * max(len(servers), 1) + 6
    window, now = (fitted_window(snapshot) if fit else snapshot.window), snapshot.now
    start = now - window
    plot = _WIDTH - _LEFT - _RIGHT

    def x(t: float) -> float:
        return _LEFT + min(max((t - start) / window, 0.0), 1.0) * plot

    parts = [
        f'<svg class="casa-live-stream" viewBox="0 0 {_WIDTH} {height}" width="100%" '
        f'style="max-width:{_WIDTH}px;display:block" xmlns="http://www.w3.org/2000/svg">',
        '<defs><pattern id="casa-live-cancelled" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="6" height="6" fill="#d9d9d9"/>'
        '<rect width="2" height="6" fill="#9e9e9e"/></pattern></defs>',
    ]
    for view in snapshot.servers:
        y = 4 + _ROW * rows[view.server]
        shade = {"lost": "#fdecec", "replacing": "#fff5e6", "not answering": "#fff5e6"}.get(view.state)
        fill = shade or ("#f6f7f9" if rows[view.server] % 2 == 0 else "#fbfbfc")
        parts.append(f'<rect x="{_LEFT}" y="{y}" width="{plot}" height="{_ROW - 2}" fill="{fill}"/>')
        parts.append(
            f'<text x="{_LEFT - 8}" y="{y + _ROW / 2 + 3}" font-size="12" text-anchor="end" fill="#444">'
            f"server {view.server}</text>"
        )
    step = _tick_step(window)
    axis_y = 4 + _ROW * len(servers)
    ago = 0.0
    while ago <= window + 1e-9:
        tx = x(now - ago)
        parts.append(f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="4" y2="{axis_y + 3}" stroke="#0000001a"/>')
        label = "now" if ago == 0 else f"−{_tick(ago)}"
        anchor = "end" if ago == 0 else "middle"
        parts.append(
            f'<text x="{tx:.1f}" y="{axis_y + 15}" font-size="11" text-anchor="{anchor}" fill="#666">{label}</text>'
        )
        ago += step
    for span in snapshot.spans:
        if span.server not in rows:
            continue
        stop = span.stop if span.stop is not None else now
        if stop < start:
            continue
        y = 4 + _ROW * rows[span.server] + (_ROW - 2 - _BAR) / 2
        parts.append(_bar(span, x(span.start), x(stop), y, colours(span.task), now))
    parts.append("</svg>")
    return "".join(parts)


def _legend(snapshot: Snapshot, colours: TaskColours) -> str:
    tasks = list(dict.fromkeys(span.task for span in snapshot.spans))
    items = [
        f'<span><span class="casa-live-swatch" style="background:{colours(task)}"></span>{_escape(task)}</span>'
        for task in tasks
    ]
    if any(span.outcome in (FAILED, TIMED_OUT) for span in snapshot.spans):
        items.append(f'<span><b style="color:{FAILURE_COLOUR}">✕</b> failed</span>')
    if any(span.outcome == CANCELLED_OUTCOME for span in snapshot.spans):
        items.append('<span><span class="casa-live-swatch" style="background:repeating-linear-gradient(45deg,#9e9e9e 0 2px,#d9d9d9 2px 6px)"></span>cancelled</span>')
    if not items:
        items.append(f'<span class="casa-live-muted">no requests in the last {_duration(snapshot.window)}</span>')
    return f'<div class="casa-live-legend">{"".join(items)}</div>'


def render_html(snapshot: Snapshot, colours: TaskColours | None = None, note: str = "", fit: bool = False) -> str:
    """The live view as HTML: a header with the totals, a row per server, the task stream.

    Parameters
    ----------
    snapshot : Snapshot
        What to draw.
    colours : TaskColours, optional
        The tasks' colours (a view keeps one, so colours stay put); default: a new one.
    note : str
        Added to the header (e.g. that this is a snapshot, not live).
    fit : bool
        Narrow the task stream to its bars (:func:`fitted_window`), for a
        last state that no longer scrolls.

    Returns
    -------
    str
        One ``<div class="casa-live">``, with its own ``<style>``.
    """
    colours = colours or TaskColours()
    colours.assign(span.task for span in snapshot.spans)  # oldest first, so colours do not jump
    totals = "".join(
        f'<span class="casa-live-total{" bad" if name == "failed" and count else ""}" data-total="{name}">'
        f"{name} <b>{count}</b></span>"
        for name, count in _totals_words(snapshot)
    )
    state = "stopped: the last state" if snapshot.stopped else f"at {_clock(snapshot.now)}"
    sub = " · ".join(part for part in (snapshot.cluster, state, note) if part)
    return (
        f'{_STYLE}<div class="casa-live" data-stopped="{str(snapshot.stopped).lower()}">'
        f'<div class="casa-live-head"><span class="casa-live-title">CASA servers</span>'
        f'<span class="casa-live-sub">{_escape(sub)}</span><span class="casa-live-totals">{totals}</span></div>'
        f"{_server_rows(snapshot, colours)}{_task_stream(snapshot, colours, fit)}{_legend(snapshot, colours)}</div>"
    )


# ---------------------------------------------------------------- text
def render_text(snapshot: Snapshot, recent: int = 5) -> str:
    """The live view as text: the totals, a row per server, the last ``recent`` ended requests.

    Parameters
    ----------
    snapshot : Snapshot
        What to show.
    recent : int
        How many ended requests to list.
    """
    rows = []
    for view in snapshot.servers:
        running = view.running
        rows.append(
            {
                "server": view.server,
                "host": view.host,
                "state": _state(view),
                "running": f"{running.label} (#{running.request})" if running else (view.lost or ""),
                "for": _duration(max(snapshot.now - running.start, 0.0)) if running else "",
                "memory": _memory(view),
                "CASA": view.casa or "",
            }
        )
    totals = ", ".join(f"{name} {count}" for name, count in _totals_words(snapshot))
    state = "stopped: the last state" if snapshot.stopped else f"at {_clock(snapshot.now)}"
    caption = f"CASA servers ({snapshot.cluster}, {state}): {totals}" if snapshot.cluster else f"CASA servers ({state}): {totals}"
    lines = [text_table(rows, caption=caption)]
    ended = [span for span in snapshot.spans if span.outcome != RUNNING][-recent:]
    if ended:
        lines.append("Last ended:")
        lines.extend(
            f"  #{s.request} server {s.server} {s.label}: {_OUTCOME_WORDS[s.outcome]}, {_duration((s.stop or s.start) - s.start)}"
            for s in ended
        )
    return "\n".join(lines)
