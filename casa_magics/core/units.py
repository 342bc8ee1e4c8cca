"""Memory sizes: read from settings (``'4G'``, ``'512 MiB'``) and shown to people.

Shared by every process.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["parse_memory_size", "format_bytes"]

_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_memory_size(value: Any) -> int:
    """A memory size in bytes, from ``4GB``, ``500MB``, ``1.5G``, ``2GiB`` or a number of bytes.

    Units are powers of 1024 (``1GB`` = ``1GiB`` = 1024**3 bytes), as in
    Slurm's ``--mem`` and in CASA's ``system.resources.memory`` (in MB).

    Raises
    ------
    ValueError
        For anything else, or a size of zero; the message names the value.
    """
    if isinstance(value, bool):
        raise ValueError(f"a memory size must be like 4GB, 500MB or a number of bytes, got {value!r}")
    if isinstance(value, (int, float)):
        size = int(value)
    else:
        match = _SIZE.match(str(value))
        if match is None:
            raise ValueError(f"a memory size must be like 4GB, 500MB or a number of bytes, got {value!r}")
        size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if size <= 0:
        raise ValueError(f"a memory size must be positive, got {value!r}")
    return size


def format_bytes(size: float | None) -> str:
    """``1288490188`` → ``'1.2 GB'`` (powers of 1024, as :func:`parse_memory_size` reads them)."""
    if size is None:
        return ""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(size) < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.3g} {unit}"
        size /= 1024
    return f"{size:.3g} TB"
