"""Stand-in ``casampi`` modules: the one builder of them, for the client and for the servers.

Runs in every process. The client's layer (:func:`casa_magics.enable_casampi`)
registers modules that hand out the real client; every server registers
modules at preparation (:func:`install_server_casampi`) that describe it as
a casampi server and refuse to act as a client, as casampi's servers do.
Nothing here imports the client side.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import types
from typing import Any, Mapping

from casa_magics.core.world import MPIEnvironment

__all__ = [
    "MODULE_NAMES",
    "STANDIN_MARK",
    "build_casampi_modules",
    "install_casampi_modules",
    "remove_casampi_modules",
    "standin_installed",
    "real_casampi",
    "install_server_casampi",
    "ServerSideCommandClient",
    "ServerSideInterface",
]

#: Attribute that marks a module as casa_magics' stand-in.
STANDIN_MARK = "__casa_magics_layer__"
_PACKAGES = ("casampi", "casampi.private")
#: Every module of casampi a script or casatasks imports, with what it is here.
MODULE_NAMES = {
    "casampi": "casa_magics' stand-in for casampi (see casa_magics.enable_casampi).",
    "casampi.MPIEnvironment": "casa_magics' MPIEnvironment, as casampi's.",
    "casampi.MPICommandClient": "casa_magics' MPICommandClient, as casampi's.",
    "casampi.MPIInterface": "casa_magics' MPIInterface, as casampi's.",
    "casampi.private": "casa_magics' stand-in for casampi: nothing private here.",
    "casampi.private.start_mpi": "Imported by casatasks; casa_magics' processes need no start-up here.",
}


def standin_installed() -> bool:
    """True when ``import casampi`` gives casa_magics' stand-in in this process."""
    return getattr(sys.modules.get("casampi"), STANDIN_MARK, False)


def real_casampi() -> str | None:
    """Where a real casampi lives, if one is imported or importable; None otherwise."""
    module = sys.modules.get("casampi")
    if module is not None:
        return None if getattr(module, STANDIN_MARK, False) else str(getattr(module, "__file__", None) or module)
    spec = importlib.util.find_spec("casampi")
    if spec is None or spec.origin is None:  # a folder named casampi (a namespace package) is no casampi
        return None
    return str(spec.origin)


def build_casampi_modules(exports: Mapping[str, Mapping[str, Any]], note: str = "") -> dict[str, types.ModuleType]:
    """New ``casampi`` modules holding ``exports`` (``{module name: {attribute: value}}``).

    Parameters
    ----------
    exports : mapping
        What each module offers, e.g. ``{"casampi.MPIEnvironment": {"MPIEnvironment": cls}}``.
    note : str
        Added to every module's docstring (which process the modules are for).

    Returns
    -------
    dict
        Every module of :data:`MODULE_NAMES`, by name, submodules set as
        attributes of their packages; nothing is registered yet.
    """
    modules = {}
    for name, doc in MODULE_NAMES.items():
        module = types.ModuleType(name, f"{doc} {note}".strip())
        module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=name in _PACKAGES)
        if name in _PACKAGES:
            module.__path__ = []
        setattr(module, STANDIN_MARK, True)
        for attribute, value in exports.get(name, {}).items():
            setattr(module, attribute, value)
        modules[name] = module
    for name, module in modules.items():
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(modules[parent], child, module)
    return modules


def install_casampi_modules(modules: Mapping[str, types.ModuleType]) -> dict[str, Any]:
    """Register ``modules`` in :data:`sys.modules`; returns what they replaced (None where nothing)."""
    previous = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    return previous


def remove_casampi_modules(previous: Mapping[str, Any] | None = None) -> None:
    """Take the stand-in out of :data:`sys.modules`, putting back ``previous`` entries where given."""
    for name in MODULE_NAMES:
        before = (previous or {}).get(name)
        if before is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = before


def _server_refusal(what: str) -> str:
    server = os.environ.get("CASA_MAGICS_SERVER_ID", "?")
    return (
        f"{what} can only be used in the client: this process is casa_magics server {server}, "
        "where CASA tasks run serially"
    )


class ServerSideCommandClient:
    """casampi's ``MPICommandClient`` as seen on a server: importable, but refuses to be created.

    Raises
    ------
    RuntimeError
        Always, as casampi's servers do.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(_server_refusal("MPICommandClient"))


class ServerSideInterface:
    """casampi's ``MPIInterface`` (and ``MPIInterfaceCore``) as seen on a server: refuses to be created."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(_server_refusal(type(self).__name__))

    @classmethod
    def getCluster(cls) -> "ServerSideInterface":
        raise RuntimeError(_server_refusal("MPIInterface.getCluster()"))

    @staticmethod
    def set_log_mode(logmode: str) -> None:
        """Accepted and ignored: a server has no cluster to log for."""


def install_server_casampi() -> bool:
    """Make this server a casampi server: ``import casampi`` and its submodules work here.

    Left alone when a real casampi is installed on the server, or the
    stand-in is in place already.

    Returns
    -------
    bool
        True when the stand-in is in place.
    """
    if standin_installed():
        return True
    if real_casampi() is not None:
        return False
    interface = type("MPIInterface", (ServerSideInterface,), {"__module__": "casampi.MPIInterface"})
    core = type("MPIInterfaceCore", (ServerSideInterface,), {"__module__": "casampi.MPIInterface"})
    exports = {
        "casampi.MPIEnvironment": {"MPIEnvironment": MPIEnvironment},
        "casampi.MPICommandClient": {"MPICommandClient": ServerSideCommandClient},
        "casampi.MPIInterface": {"MPIInterface": interface, "MPIInterfaceCore": core},
    }
    install_casampi_modules(build_casampi_modules(exports, "(on a casa_magics server)"))
    return True
