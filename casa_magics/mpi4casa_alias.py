"""Make ``from mpi4casa.MPICommandClient import MPICommandClient`` find ours.

The seed's scripts import casampi's old name, ``mpi4casa``. After
``import casa_magics`` those imports resolve to this package's facade, unless
a real ``mpi4casa`` is installed, which then stays in charge.
"""

from __future__ import annotations

import importlib.util
import sys
import types

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
    import casa_magics

    package = types.ModuleType("mpi4casa", "Alias of casa_magics for scripts written for casampi's mpi4casa.")
    package.__path__ = []
    package.__casa_magics_alias__ = True
    sys.modules["mpi4casa"] = package
    for name, exported in _ALIASES.items():
        module = types.ModuleType(name, f"Alias of casa_magics' {', '.join(exported)}.")
        for attribute in exported:
            setattr(module, attribute, getattr(casa_magics, attribute))
        sys.modules[name] = module
        setattr(package, name.rsplit(".", 1)[1], module)
    return True
