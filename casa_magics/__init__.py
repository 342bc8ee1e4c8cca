"""casa_magics: run CASA in parallel from Jupyter.

An IPython extension and a casampi-compatible client on an ipyparallel
cluster whose engines are MPI processes.

>>> from casa_magics import MPICommandClient, MPIEnvironment   # doctest: +SKIP
>>> client = MPICommandClient()                                # doctest: +SKIP
>>> client.push_command_request("1 + 1", block=True)[0]["ret"] # doctest: +SKIP
2

In IPython or Jupyter: ``%load_ext casa_magics``.

Importing the package imports none of its modules: each public name is
imported when first used (PEP 562), so a server, which imports only what it
runs, never loads the client side (the ipyparallel client, the magics).

Runs in every process that imports casa_magics; it imports nothing more by itself.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from casa_magics.casampi.mpi4casa_alias import install_mpi4casa_alias

__version__ = "0.1.0"

#: Each public name, and the module that defines it.
_PUBLIC = {
    "MPICommandClient": "client.client",
    "CommandClient": "client.client",
    "MPIEnvironment": "core.world",
    "CommandRequestError": "core.errors",
    "ClusterError": "core.errors",
    "ClusterSession": "cluster.session",
    "current_session": "cluster.session",
    "set_current_session": "cluster.session",
    "enable_casampi": "casampi.layer",
    "disable_casampi": "casampi.layer",
    "casampi_enabled": "casampi.layer",
    "ServerMap": "cluster.server_map",
    "live_view": "notebook.live_view",
}

__all__ = [*_PUBLIC, "load_ipython_extension", "unload_ipython_extension", "__version__"]


#: Modules a public name needs beside its own: MPIEnvironment describes the current
#: session's world in the client, which the session module provides when imported.
_NEEDS = {"MPIEnvironment": "cluster.session"}


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'casa_magics' has no attribute {name!r}")
    if name in _NEEDS:
        importlib.import_module(f".{_NEEDS[name]}", __name__)
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next look-up is a plain one
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


def load_ipython_extension(ipython):
    """Register the ``%casa_*`` magics (``%load_ext casa_magics``). Starts no cluster.

    When the ``casa`` extra is installed, this kernel is also set up to
    import CASA offline (``casa_magics.cluster.casa_env.prepare_client_process``).
    """
    from casa_magics.cluster.casa_env import prepare_client_process
    from casa_magics.notebook.magics import load_ipython_extension as load
    from casa_magics.cluster.session import default_run_dir

    prepare_client_process(default_run_dir())
    load(ipython)


def unload_ipython_extension(ipython):
    """Remove the ``%casa_*`` magics (``%unload_ext casa_magics``)."""
    from casa_magics.notebook.magics import unload_ipython_extension as unload

    unload(ipython)


# A library logs, the application decides where to: nothing is printed unless asked.
logging.getLogger("casa_magics").addHandler(logging.NullHandler())
install_mpi4casa_alias()
