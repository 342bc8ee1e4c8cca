"""Small helpers for checking arguments and writing the one-line messages about them.

Pure functions, shared by every module that refuses bad input, so that each
kind of check is written once and says the same thing everywhere.
"""

from __future__ import annotations

from typing import Any

from casa_magics.core.errors import CommandRequestError

__all__ = ["clip", "short", "check_block", "check_positive_int", "controller_address", "tail", "OUTPUT_TAIL"]

#: Lines of a process's output quoted in a start-up error.
OUTPUT_TAIL = 40


def tail(text: str, lines: int = OUTPUT_TAIL) -> str:
    """The last ``lines`` lines of ``text``, without surrounding blank space."""
    return "\n".join(text.strip().splitlines()[-lines:])


def controller_address(value: Any) -> str:
    """``value`` as an address the controller may listen on: an IP address, or ``'*'`` for every interface.

    The one check of a controller address, for the ``controller_ip``
    argument and ``CASA_MAGICS_CONTROLLER_IP`` alike.

    Parameters
    ----------
    value : str
        ``'10.1.2.3'``, ``'::1'`` or ``'*'``.

    Returns
    -------
    str
        The address in its normal form (``'*'`` stays ``'*'``).

    Raises
    ------
    ValueError
        If ``value`` is neither an IP address nor ``'*'``; the caller words its own error.

    Examples
    --------
    >>> controller_address("0:0::1")
    '::1'
    """
    import ipaddress

    if value == "*":
        return "*"
    return str(ipaddress.ip_address(value))


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
