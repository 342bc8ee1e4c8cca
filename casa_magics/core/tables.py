"""Tables as HTML and as aligned text: pure formatting, used by every table casa_magics shows.

Runs in the client (the notebook's tables, the server map's own display).
"""

from __future__ import annotations

import html
from typing import Any, Mapping

from casa_magics.core.checks import clip

__all__ = ["BRIEF", "RawHTML", "brief", "one_line", "html_table", "text_table"]

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
    return one_line(repr(value), limit)


def one_line(text: str, limit: int) -> str:
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
