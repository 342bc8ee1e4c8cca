"""Make ``from mpi4casa.MPICommandClient import MPICommandClient`` find ours.

The seed's scripts import casampi's old name, ``mpi4casa``. After
``import casa_magics`` those imports resolve to this package's facade, unless
a real ``mpi4casa`` is installed, which then stays in charge.

Runs in every process that imports casa_magics (the alias modules resolve only when used).
"""

from __future__ import annotations

import importlib.util
import sys
import types
from typing import Any

__all__ = ["install_mpi4casa_alias"]

_ALIASES = {
    "mpi4casa.MPICommandClient": ("MPICommandClient",),
    "mpi4casa.MPIEnvironment": ("MPIEnvironment",),
}


def install_mpi4casa_alias() -> bool:
    """Register ``mpi4casa`` modules that re-export the facade.

    Returns
    -------
    bool
        True if the alias is in place, False if a real ``mpi4casa`` exists.
    """
    existing = sys.modules.get("mpi4casa")
    if existing is not None:
        return getattr(existing, "__casa_magics_alias__", False)
    if importlib.util.find_spec("mpi4casa") is not None:
        return False
    package = types.ModuleType("mpi4casa", "Alias of casa_magics for scripts written for casampi's mpi4casa.")
    package.__path__ = []
    package.__casa_magics_alias__ = True
    sys.modules["mpi4casa"] = package
    for name, exported in _ALIASES.items():
        module = _Alias(name, f"Alias of casa_magics' {', '.join(exported)}.")
        module.__exported__ = exported
        sys.modules[name] = module
        setattr(package, name.rsplit(".", 1)[1], module)
    return True


def _facade(name: str) -> Any:
    """The facade's class of that name, imported from the module that defines it."""
    if name == "MPICommandClient":
        from casa_magics.client.client import MPICommandClient

        return MPICommandClient
    # MPIEnvironment describes the current session's world, which the session module provides.
    from casa_magics.cluster import session  # noqa: F401
    from casa_magics.core.world import MPIEnvironment

    return MPIEnvironment


class _Alias(types.ModuleType):
    """An alias module that takes its names from casa_magics when first asked (nothing is imported before)."""

    def __getattr__(self, name: str) -> Any:
        if name not in self.__dict__.get("__exported__", ()):
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = _facade(name)
        setattr(self, name, value)
        return value
