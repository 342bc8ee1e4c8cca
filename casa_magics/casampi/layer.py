"""Let casatasks' own parallel code run on casa_magics' servers.

casatasks sends Multi-MS jobs and parallel imaging work to servers only when
``import casampi`` works and ``casampi.MPIEnvironment`` says MPI is enabled.
:func:`enable_casampi` makes those imports resolve to this package: the
modules ``casampi``, ``casampi.MPIEnvironment``, ``casampi.MPICommandClient``,
``casampi.MPIInterface``, ``casampi.private`` and ``casampi.private.start_mpi``
are registered in :data:`sys.modules`, and they hand out the same client,
session and server map the facade and the magics use.

If casatasks was imported first, its modules already decided that there is
no MPI; :func:`enable_casampi` then runs their own MPI detection again (the
module-level ``try: from casampi ...`` blocks), so they see the layer too.
"""

from __future__ import annotations

import ast
import sys
import threading
import types
import warnings
from pathlib import Path
from typing import Any, Collection

from casa_magics.cluster import session as _session
from casa_magics.cluster.casa_env import prepare_client_process
from casa_magics.core.standin import (
    STANDIN_MARK,
    build_casampi_modules,
    install_casampi_modules,
    real_casampi,
    remove_casampi_modules,
    standin_installed,
)
from casa_magics.client.client import MPICommandClient
from casa_magics.core.world import MPIEnvironment, process_role
from casa_magics.casampi.cube_routing import route_when_imported
from casa_magics.casampi.mpi_interface import MPIInterface, MPIInterfaceCore, prompt_imager_job_checks
from casa_magics.server.runner import provide_casampi_namespace

__all__ = ["enable_casampi", "disable_casampi", "casampi_enabled"]

_EXPORTS = {
    "casampi.MPIEnvironment": {"MPIEnvironment": MPIEnvironment},
    "casampi.MPICommandClient": {"MPICommandClient": MPICommandClient},
    "casampi.MPIInterface": {"MPIInterface": MPIInterface, "MPIInterfaceCore": MPIInterfaceCore},
}

_lock = threading.RLock()
#: Names in casatasks' modules that enable_casampi re-bound: {module: {name: previous value or _ABSENT}}.
_rebound: dict[str, dict[str, Any]] = {}
_ABSENT = object()


def casampi_enabled() -> bool:
    """True when ``import casampi`` gives casa_magics' layer in this process."""
    return process_role() == "client" and standin_installed()


def _casampi_detection_blocks(module: types.ModuleType) -> list[ast.Try]:
    """The module-level ``try:`` blocks of a module that import casampi."""
    path = getattr(module, "__file__", None)
    if not path or not path.endswith(".py"):
        return []
    source = Path(path).read_text(encoding="utf-8", errors="replace")
    if "casampi" not in source:
        return []
    blocks = []
    for node in ast.parse(source, path).body:
        if isinstance(node, ast.Try):
            imports = [n for n in ast.walk(ast.Module(body=node.body, type_ignores=[])) if isinstance(n, (ast.Import, ast.ImportFrom))]
            if any("casampi" in (getattr(n, "module", None) or "") or any("casampi" in a.name for a in n.names) for n in imports):
                blocks.append(node)
    return blocks


def _bound_names(block: ast.Try) -> set[str]:
    names = set()
    for node in ast.walk(ast.Module(body=block.body, type_ignores=[])):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return names


def _redetect_in_loaded_casatasks() -> list[str]:
    """Run the casampi detection of casatasks modules imported before the layer existed.

    Returns the names of the modules that now see the layer.
    """
    done = []
    for name, module in sorted(sys.modules.items()):
        if not (name == "casatasks" or name.startswith("casatasks.")) or module is None or name in _rebound:
            continue
        for block in _casampi_detection_blocks(module):
            namespace = vars(module)
            previous = {n: namespace.get(n, _ABSENT) for n in _bound_names(block)}
            code = compile(ast.Module(body=block.body, type_ignores=[]), module.__file__, "exec")
            try:
                exec(code, namespace)
            except Exception as error:
                raise ImportError(
                    f"casatasks was imported before casa_magics.enable_casampi() and {name} cannot be switched "
                    f"to the cluster ({type(error).__name__}: {error}): call enable_casampi() before importing casatasks"
                ) from None
            _rebound.setdefault(name, {}).update({n: v for n, v in previous.items() if n not in _rebound.get(name, {})})
            done.append(name)
    return done


def _forget_layer_in_casatasks() -> list[str]:
    """Make casatasks modules imported while the layer was on see no casampi again.

    Runs their casampi detection again, now that ``import casampi`` fails
    (so ``mpi_available`` becomes False), and removes every name that still
    refers to the layer. Modules imported before the layer are put back by
    :func:`disable_casampi` from what it saved instead.

    Returns the names of the modules changed.
    """
    layer = {id(value) for exports in _EXPORTS.values() for value in exports.values()}
    done = []
    for name, module in sorted(sys.modules.items()):
        if not (name == "casatasks" or name.startswith("casatasks.")) or module is None or name in _rebound:
            continue
        blocks = _casampi_detection_blocks(module)
        if not blocks:
            continue
        namespace = vars(module)
        for block in blocks:
            try:
                exec(compile(ast.Module(body=[block], type_ignores=[]), module.__file__, "exec"), namespace)
            except Exception:  # a detection block that fails without casampi: its names go below
                pass
            for bound in _bound_names(block):
                value = namespace.get(bound)
                if id(value) in layer or getattr(value, STANDIN_MARK, False):
                    del namespace[bound]
        done.append(name)
    return done


def _provide_namespace(session: "_session.ClusterSession", servers: "Collection[int] | None" = None) -> None:
    """Server setup: what casampi's servers offer casatasks' jobs (run on every (re)start).

    ``servers``: the server IDs to set up (default: every server).
    """
    level = MPICommandClient().log_level or MPIEnvironment.command_handling_log_level
    session.run_on_servers(provide_casampi_namespace, level, servers=servers)


def enable_casampi() -> bool:
    """Run casatasks' parallel code (Multi-MS tasks, ``tclean(parallel=True)``) on the servers.

    Call it before ``import casatasks`` (if casatasks was imported already,
    its MPI detection is run again). After it, ``import casampi`` and its
    submodules give casa_magics' compatibility layer, sharing the client,
    session and server map of :class:`MPICommandClient` and the magics.
    This process is also set up to import CASA offline, as by
    ``%load_ext casa_magics``. Calling it again changes nothing.

    What it changes: casatasks in this process sees MPI as enabled and
    this process as the client; every server gets casampi's namespace
    (``from casatasks import *``, ``casalog``, ``os``, ...) now and after
    every (re)start, without replacing names already defined there;
    requests from the shared client run in this process's current
    directory on their server; servers note each request in their CASA log.

    Returns
    -------
    bool
        True when the layer is in place; False when a real ``casampi`` is
        installed, which is then left in charge (a warning says so).

    Raises
    ------
    RuntimeError
        In a process casa_magics launched as a server.
    ImportError
        If casatasks was imported first and cannot be switched over.

    Examples
    --------
    >>> import casa_magics
    >>> casa_magics.enable_casampi()          # doctest: +SKIP
    True
    >>> import casatasks                      # doctest: +SKIP
    >>> casatasks.flagdata(vis="ngc5921.mms", mode="summary")  # doctest: +SKIP
    """
    if process_role() == "server":
        raise RuntimeError(
            "enable_casampi() is for the client: this process is a casa_magics server, where CASA runs serially"
        )
    with _lock:
        if casampi_enabled():
            return True
        real = real_casampi()
        if real is not None:
            warnings.warn(
                f"a real casampi is installed ({real}): casa_magics leaves it in charge and does not enable its layer",
                RuntimeWarning,
                stacklevel=2,
            )
            return False
        prepare_client_process(_session.default_run_dir())
        install_casampi_modules(build_casampi_modules(_EXPORTS, "(in the client)"))
        try:
            _redetect_in_loaded_casatasks()
        except ImportError:
            disable_casampi()
            raise
        MPICommandClient().follow_cwd = True
        route_when_imported(True)
        _session.add_server_setup(_provide_namespace)
        if _session.has_current_session():
            _provide_namespace(_session.current_session())
        return True


def disable_casampi() -> None:
    """Undo :func:`enable_casampi`: casatasks in this process runs serially again.

    The servers keep the names they were given.
    """
    with _lock:
        if not casampi_enabled():
            return
        for name, names in _rebound.items():
            namespace = vars(sys.modules[name]) if name in sys.modules else {}
            for attribute, value in names.items():
                if value is _ABSENT:
                    namespace.pop(attribute, None)
                else:
                    namespace[attribute] = value
        prompt_imager_job_checks(False)
        route_when_imported(False)
        remove_casampi_modules()
        _forget_layer_in_casatasks()
        _rebound.clear()
        _session.remove_server_setup(_provide_namespace)
        MPICommandClient().follow_cwd = False
