"""Small helpers for checking arguments and writing the one-line messages about them.

Pure functions, shared by every module that refuses bad input, so that each
kind of check is written once and says the same thing everywhere.
"""

from __future__ import annotations

from typing import Any

from .errors import CommandRequestError

__all__ = ["clip", "short", "check_block", "check_positive_int", "tail", "OUTPUT_TAIL"]

#: Lines of a process's output quoted in a start-up error.
OUTPUT_TAIL = 40


def tail(text: str, lines: int = OUTPUT_TAIL) -> str:
    """The last ``lines`` lines of ``text``, without surrounding blank space."""
    return "\n".join(text.strip().splitlines()[-lines:])


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, ending in ``...`` when cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to at most ``limit`` characters, for messages.

    Examples
    --------
    >>> short("x" * 100, 10)
    "'xxxxxx..."
    """
    return clip(repr(value), limit)


def check_block(block: Any) -> bool:
    """Refuse a ``block`` argument that is not exactly True or False."""
    if not isinstance(block, bool):
        raise CommandRequestError(f"block must be True or False, got {short(block)}")
    return block


def check_positive_int(value: Any, what: str, error: type[Exception] = CommandRequestError) -> int:
    """Refuse ``value`` unless it is an int (not a bool) of at least 1; ``what`` names it in the message."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise error(f"{what} must be a positive integer, got {value!r}")
    return value
