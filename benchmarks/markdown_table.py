"""The benchmarks' one table format: rows of strings as a Markdown table, the first row the header."""

from __future__ import annotations


def table(rows: list[tuple[str, ...]]) -> str:
    """Rows of cells (first row: the header) as an aligned Markdown table."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        lines.append("| " + " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) + " |")
        if index == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
