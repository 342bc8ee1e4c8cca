"""casa_magics: run CASA in parallel from Jupyter.

An IPython extension and a casampi-compatible client on an ipyparallel
cluster whose engines are MPI processes.

>>> from casa_magics import MPICommandClient, MPIEnvironment   # doctest: +SKIP
>>> client = MPICommandClient()                                # doctest: +SKIP
>>> client.push_command_request("1 + 1", block=True)[0]["ret"] # doctest: +SKIP
2

In IPython or Jupyter: ``%load_ext casa_magics``.
"""

from __future__ import annotations

import logging

from .casampi_layer import casampi_enabled, disable_casampi, enable_casampi
from .client import CommandClient, MPICommandClient
from .environment import MPIEnvironment
from .errors import ClusterError, CommandRequestError
from .mpi4casa_alias import install_mpi4casa_alias
from .server_map import ServerMap
from .session import ClusterSession, current_session, set_current_session

__version__ = "0.1.0"

__all__ = [
    "MPICommandClient",
    "CommandClient",
    "MPIEnvironment",
    "CommandRequestError",
    "ClusterError",
    "ClusterSession",
    "enable_casampi",
    "disable_casampi",
    "casampi_enabled",
    "ServerMap",
    "current_session",
    "set_current_session",
    "load_ipython_extension",
    "unload_ipython_extension",
    "__version__",
]


def load_ipython_extension(ipython):
    """Register the ``%casa_*`` magics (``%load_ext casa_magics``). Starts no cluster.

    When the ``casa`` extra is installed, this kernel is also set up to
    import CASA offline (see :func:`casa_magics.casa_env.prepare_client_process`).
    """
    from .casa_env import prepare_client_process
    from .magics import load_ipython_extension as load
    from .session import default_run_dir

    prepare_client_process(default_run_dir())
    load(ipython)


def unload_ipython_extension(ipython):
    """Remove the ``%casa_*`` magics (``%unload_ext casa_magics``)."""
    from .magics import unload_ipython_extension as unload

    unload(ipython)


# A library logs, the application decides where to: nothing is printed unless asked.
logging.getLogger("casa_magics").addHandler(logging.NullHandler())
install_mpi4casa_alias()
