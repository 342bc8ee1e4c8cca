"""With casampi enabled, casatasks' C++-MPI tasks called in the client run as a gang.

Runs in the client. A cube ``tclean``, every ``deconvolve`` and
``sdintimaging`` called in this process go to the servers' gang
(:func:`casa_magics.client.gang.run_task_as_gang`) when the servers can
form one, and run serially here otherwise, with the reason kept for
:data:`~casa_magics.casampi.mpi_interface.CPP_MPI_NOTICE`.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any

from casa_magics.client.client import MPICommandClient
from casa_magics.client.gang import gang_unavailable, run_task_as_gang
from casa_magics.server.gang_member import CPP_MPI_TASKS, AfterImport, wrap_task_implementations

__all__ = ["route_cpp_mpi_tasks", "unroute_cpp_mpi_tasks", "route_when_imported", "last_serial_reason"]

_last_serial_reason: str | None = None
_ROUTED = "__casa_magics_routed__"  # marks an implementation replaced by route_cpp_mpi_tasks


def last_serial_reason() -> str | None:
    """Why the last C++-MPI task called in this process ran serially here (None if none did)."""
    return _last_serial_reason


def _routed(task: str, implementation: Any) -> Any:
    signature = inspect.signature(implementation)

    def routed(*args: Any, **kwargs: Any) -> Any:
        global _last_serial_reason
        arguments = dict(signature.bind(*args, **kwargs).arguments)
        if task == "tclean" and arguments.get("specmode", "mfs") == "mfs":
            return implementation(*args, **kwargs)  # continuum: casatasks' own Python-level parallelism
        client = MPICommandClient()
        client.start_services()
        why = gang_unavailable(client)
        if why is not None:
            _last_serial_reason = why
            return implementation(*args, **kwargs)
        _last_serial_reason = None
        return run_task_as_gang(client, task, arguments)

    return routed


def route_cpp_mpi_tasks() -> list[str]:
    """Send casatasks' C++-MPI tasks called in this process to the servers' gang.

    Rebinds the implementation each task wrapper calls (``_tclean_t`` in
    ``casatasks.tclean``, ...), so parameter checks and logging stay where
    they are. A cube ``tclean``, every ``deconvolve`` and ``sdintimaging``
    then run as a gang when :func:`gang_unavailable` allows it, and serially
    here otherwise. Importing casatasks is left to the caller.

    Returns
    -------
    list of str
        The tasks routed by this call.
    """
    return wrap_task_implementations(_routed, _ROUTED)


def unroute_cpp_mpi_tasks() -> None:
    """Undo :func:`route_cpp_mpi_tasks`."""
    for _wrapper_name, name, _private in CPP_MPI_TASKS.values():
        module = sys.modules.get(_wrapper_name)
        implementation = getattr(module, name, None)
        if getattr(implementation, _ROUTED, False):
            setattr(module, name, implementation.__wrapped__)


_finder = AfterImport({wrapper for wrapper, _name, _private in CPP_MPI_TASKS.values()}, route_cpp_mpi_tasks)


def route_when_imported(enable: bool = True) -> None:
    """Route the tasks now and whenever casatasks imports them later (``enable``), or stop."""
    _finder.install(enable)
    if enable:
        route_cpp_mpi_tasks()
    else:
        unroute_cpp_mpi_tasks()
