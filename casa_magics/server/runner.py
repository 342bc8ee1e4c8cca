"""Code that runs on the servers (ipyparallel engines), not on the client.

The client sends :func:`run_requests` by reference, so this module must be
importable on every engine; it therefore imports nothing heavy. Commands run
in the engine's interactive namespace, the same one ``%px`` uses.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Iterator

from casa_magics.core.cancel_board import CancelBoard, board_path
from casa_magics.core.standin import install_server_casampi
from casa_magics.core.wire import PLAIN_TYPES, WireRequest, pack_value, type_name, unpack_value, why_one_line
from casa_magics.core.world import SERVER_COUNT_VARIABLE, SERVER_ROLE, mpi_library_report
from casa_magics.server.gang_member import (
    MASTER,
    WORKER,
    guard_when_imported,
    hold_interrupt,
    master_context,
    serve_as_worker,
)
from casa_magics.server import memory
from casa_magics.server.memory import take_memory_interrupt

__all__ = ["cancel_here", "server_report", "run_requests", "start_casa_import", "join_casa_import", "casa_import_state_path", "provide_casampi_namespace", "set_command_log_level", "SERVER_ROLE", "request_runner", "engine_identity", "prepare_engine", "user_namespace", "STREAM_LIMIT", "SERVER_ID_NAME"]

#: Characters of stdout/stderr kept per response; more is cut with a note.
STREAM_LIMIT = 1_000_000

_FILENAME = "<casa command>"
_fallback_namespace: dict[str, Any] = {"__name__": "__main__"}
_board: CancelBoard | None = None  # set by prepare_engine
#: CASA log priority at which each request is noted in the server's CASA log
#: (once CASA is imported there); None notes nothing. See set_command_log_level.
_command_log_level: str | None = None



def user_namespace() -> dict[str, Any]:
    """The engine's interactive namespace (where ``%px`` code runs).

    An engine runs an IPython kernel, so IPython is loaded already; this
    module never imports it (outside an engine, a namespace of its own).
    """
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell.user_ns if shell is not None else _fallback_namespace


def engine_identity() -> dict[str, Any]:
    """Who this engine is: MPI rank and size, host, pid.

    ``mpi`` is False when the engine is not an MPI process; rank and size
    then come from nowhere and are None.
    """
    rank = size = None
    mpi_module = sys.modules.get("mpi4py.MPI")
    if mpi_module is not None and mpi_module.Is_initialized():
        rank = mpi_module.COMM_WORLD.Get_rank()
        size = mpi_module.COMM_WORLD.Get_size()
    return {
        "mpi": rank is not None,
        "rank": rank,
        "size": size,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "library": mpi_library_report(),
    }


class _Tee(io.TextIOBase):
    """Write to the engine's own stream (so ipyparallel still sees it) and keep a copy."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.kept: list[str] = []
        self.size = 0

    def write(self, text: str) -> int:
        if self.size < STREAM_LIMIT:
            self.kept.append(text[: STREAM_LIMIT - self.size])
        self.size += len(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def text(self) -> str:
        kept = "".join(self.kept)
        if self.size > STREAM_LIMIT:
            kept += f"\n[... {self.size - STREAM_LIMIT} more characters not kept]\n"
        return kept


def _unpack_parameters(packed: dict[str, Any]) -> dict[str, Any]:
    """The parameters as sent by the client; a TypeError naming the first one that cannot be read here."""
    parameters = {}
    for name, value in packed.items():
        try:
            parameters[name] = unpack_value(value)
        except Exception as error:
            server = os.environ.get("CASA_MAGICS_SERVER_ID", "?")
            raise TypeError(
                f"parameter {name!r} ({value[0]}) cannot be unpickled on server {server}: {why_one_line(error)}"
            ) from None
    return parameters


def _pack_back(parameters: dict[str, Any], packed: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The parameters after a command, to send back, and a line naming those that cannot be pickled.

    The client has the plain ones, which no command can change: they are
    not sent back. One that pickles as it came (``packed``, as the client
    sent it) is sent back as ``(type name, None)``: the client reads its
    copy from what it sent, so an unchanged big parameter does not travel
    back.
    """
    back: dict[str, Any] = {}
    failed = []
    for name, value in parameters.items():
        if type(value) in PLAIN_TYPES:
            continue
        try:
            data = pickle.dumps(value, protocol=5)
        except Exception as error:
            failed.append(
                f"parameter {name!r} ({type_name(value)}) cannot be sent back to the client after the command: "
                f"{why_one_line(error, 200)}"
            )
            continue
        sent = packed.get(name)
        back[name] = type_name(value), (None if type(sent) is tuple and sent[1] == data else data)
    return back, ("TypeError: " + "; ".join(failed)) if failed else None


def _format_failure(error: BaseException) -> str:
    """The traceback of a failed command, without this module's own frames."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename != __file__]
    lines = ["Traceback (most recent call last):\n"] if frames else []
    lines += traceback.format_list(frames)
    lines += traceback.format_exception_only(type(error), error)
    return "".join(lines)


@contextlib.contextmanager
def _request_scope(namespace: dict[str, Any], parameters: dict[str, Any] | None, cwd: str | None) -> Iterator[None]:
    """Within the block: in ``cwd`` (if it exists) with ``parameters`` in the namespace; both put back after."""
    missing = object()
    saved = {name: namespace.get(name, missing) for name in parameters or ()}
    home = None
    if cwd is not None and cwd != os.getcwd() and os.path.isdir(cwd):
        home = os.getcwd()
        os.chdir(cwd)
    namespace.update(parameters or {})
    try:
        yield
    finally:
        if home is not None:
            try:
                os.chdir(home)
            except OSError:  # the command removed it: stay where the command left us
                pass
        for name, value in saved.items():
            if value is missing:
                namespace.pop(name, None)
            else:
                namespace[name] = value


def _run_command(request: WireRequest, parameters: dict[str, Any] | None, namespace: dict[str, Any]) -> Any:
    """The command's value: run as a gang's worker or master, or on its own; a push only places its parameters."""
    _id, source, mode, callee, _packed, _cwd, gang = request
    if mode == "push":  # casampi's "push": the parameters stay
        namespace.update(parameters or {})
        return None
    if gang is not None and gang.role == WORKER:
        return serve_as_worker(gang)
    if gang is not None and gang.role == MASTER:
        with master_context(gang):
            return _evaluate(source, mode, callee, parameters, namespace)
    return _evaluate(source, mode, callee, parameters, namespace)


def _packed_result(source: str, value: Any) -> Any:
    """The command's value as it travels back; a TypeError in one line when it cannot be pickled."""
    try:
        return pack_value(value)
    except Exception as error:
        shown = repr(source) if len(source) <= 60 else repr(source[:57] + "...")
        raise TypeError(
            f"the value of {shown} ({type_name(value)}) cannot be sent back to the client: {why_one_line(error)}"
        ) from None


def _run_one(request: WireRequest, namespace: dict[str, Any]) -> dict[str, Any]:
    out, err = _Tee(sys.stdout), _Tee(sys.stderr)
    sys.stdout, sys.stderr = out, err
    outcome: dict[str, Any] = {"id": request.id, "successful": False, "ret": None, "traceback": None}
    start = time.time()
    received: dict[str, Any] | None = None  # the parameters as read here: sent back after the command
    _note_in_casa_log(request)
    try:
        received = _unpack_parameters(request.parameters) if request.parameters else None
        scoped = None if request.mode == "push" else received
        with _request_scope(namespace, scoped, request.cwd):
            outcome["ret"] = _packed_result(request.source, _run_command(request, received, namespace))
        outcome["successful"] = True
    except BaseException as error:  # a command's KeyboardInterrupt is its failure too
        outcome["traceback"] = _format_failure(error)
    finally:
        outcome["command_stop_time"] = time.time()
        sys.stdout, sys.stderr = out.stream, err.stream
    if received:  # casampi's response carries the server's parameters, as the command left them
        back, failed = _pack_back(received, request.parameters)
        if back:
            outcome["parameters"] = back
        if failed:
            outcome.update(successful=False, ret=None, traceback=(outcome["traceback"] or "") + failed)
    outcome.update(command_start_time=start, stdout=out.text(), stderr=err.text())
    return outcome


def _evaluate(source: str, mode: str, callee: str | None, parameters: dict | None, namespace: dict) -> Any:
    """Run one command in ``namespace``: its value (None for statements)."""
    if callee is not None and parameters:
        value = eval(compile(callee, _FILENAME, "eval"), namespace)(**parameters)
        return None if mode == "exec" else value  # "f();" returns nothing, as any statement
    if mode == "eval":
        return eval(compile(source, _FILENAME, mode), namespace)
    exec(compile(source, _FILENAME, mode), namespace)
    return None


def _note_in_casa_log(request: WireRequest) -> None:
    """Note a request in this server's CASA log, as casampi's servers do."""
    casatasks = sys.modules.get("casatasks") if _command_log_level else None
    if casatasks is None:
        return
    vis = (request.parameters or {}).get("vis")
    on = f" on {vis}" if isinstance(vis, str) else ""
    message = f"server {os.environ.get('CASA_MAGICS_SERVER_ID', '?')} runs request {request.id}{on}: {request.source}"
    try:
        casatasks.casalog.post(message, _command_log_level, "casa_magics")
    except Exception:  # a log line is never worth a failed request
        pass


def set_command_log_level(level: str | None) -> None:
    """Set the CASA log priority of the per-request notes (None: no notes)."""
    global _command_log_level
    _command_log_level = level


def _skipped(request: WireRequest) -> dict[str, Any]:
    now = time.time()
    return {
        "id": request.id,
        "successful": False,
        "ret": None,
        "traceback": "cancelled by the client before it started",
        "command_start_time": now,
        "command_stop_time": now,
        "stdout": "",
        "stderr": "",
        "cancelled": True,
    }


def _interrupt_if_meant(_signum: int, _frame: Any) -> None:
    """SIGINT handler while requests run: interrupt only the request the client named."""
    board = _board
    if board is not None and board.interrupt and board.interrupt == board.running:
        cancelled = board.running
        board.interrupt = 0
        if hold_interrupt(cancelled):  # a gang worker inside CASA's C++ MPI: raised once it is out
            return
        # The memory watcher's reason if it ended the request. No local name holds the
        # exception: its traceback would keep the request's frames (and memory) alive.
        raise take_memory_interrupt(cancelled) or KeyboardInterrupt(f"request {cancelled} was cancelled by the client")


def run_requests(requests: list[WireRequest]) -> list[dict[str, Any]]:
    """Run requests in order and return one outcome dict for each.

    Parameters
    ----------
    requests : list of WireRequest
        As packed by the client.

    Returns
    -------
    list of dict
        Keys ``id``, ``successful``, ``ret``, ``traceback``,
        ``command_start_time``, ``command_stop_time``, ``stdout``, ``stderr``.
        A failing command does not stop the ones after it.
    """
    namespace = user_namespace()
    board = _board
    if board is None:
        return [_run_one(request, namespace) for request in requests]
    outcomes = []
    previous = signal.signal(signal.SIGINT, _interrupt_if_meant)
    try:
        for request in requests:
            try:
                # "running" first, then the check: a cancel the client makes in between is seen
                # either here (skip) or by the client (interrupt), never by neither.
                board.running = request.id
                if board.is_cancelled(request.id):
                    board.running = 0
                    outcomes.append(_skipped(request))
                else:
                    outcomes.append(_run_one(request, namespace))
            except KeyboardInterrupt:  # the signal landed between commands
                outcomes.append(_skipped(request))
    finally:
        board.running = 0
        signal.signal(signal.SIGINT, previous)
    return outcomes


#: Name under which a server's own ID is visible to its commands.
SERVER_ID_NAME = "casa_server_id"


def prepare_engine(server_id: int, run_dir: str, environment: dict[str, str], server_count: int) -> None:
    """Tell an engine who it is and where to write, before any command runs.

    Sets the environment (CASA site config, per-server CASA log file,
    thread count) unless the user already set a variable, defines
    ``casa_server_id`` in the interactive namespace, and makes the engine
    a casampi server: ``import casampi`` works here and its
    ``MPIEnvironment`` gives this server's rank in a world of
    ``server_count`` servers and the client (unless a real casampi is
    installed here).
    """
    for name, value in environment.items():
        os.environ.setdefault(name, value)
    os.environ["CASA_MAGICS_SERVER_ID"] = str(server_id)
    os.environ[SERVER_COUNT_VARIABLE] = str(server_count)
    os.environ["CASA_MAGICS_RUN_DIR"] = run_dir
    os.environ["CASA_MAGICS_ROLE"] = SERVER_ROLE  # for engines started by hand (ipcluster)
    user_namespace()[SERVER_ID_NAME] = server_id
    install_server_casampi()
    guard_when_imported()  # a cube tclean outside a gang fails at once instead of waiting forever
    global _board
    try:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        _board = CancelBoard(board_path(run_dir, server_id), create=True)
    except OSError:  # no run directory here: the board is reached through the engine only (cancel_here)
        _board = CancelBoard(None)
    memory.use_board(_board)


def cancel_here(request_ids: list[int]) -> list[tuple[int, str]]:
    """Cancel requests of this server from inside its process (from any thread).

    A request this server has not started is skipped when its turn comes;
    the running one is interrupted, exactly as when the client writes the
    board itself (see :mod:`casa_magics.core.cancel_board`). This is how a
    client on another host cancels: the engine's control thread calls this.

    Parameters
    ----------
    request_ids : list of int
        The requests to cancel.

    Returns
    -------
    list of (int, str)
        Each request ID with ``'interrupted'`` (it was running) or
        ``'skipped'`` (it will be skipped), or ``'no board'`` if this engine
        was never prepared as a server.
    """
    board = _board
    if board is None:
        return [(request_id, "no board") for request_id in request_ids]
    return [(request_id, "interrupted" if board.cancel_and_interrupt(request_id) else "skipped")
            for request_id in request_ids]


#: States of the background CASA import (see start_casa_import).
CASA_IMPORTING, CASA_READY = "importing", "ready"
_casa_import: threading.Thread | None = None


def casa_import_state_path(run_dir: str | os.PathLike[str], server_id: int) -> Path:
    """Where a server writes the state of its background CASA import."""
    return Path(run_dir) / f"casa-import-{server_id}.state"


_casa_state: str | None = None  # this server's own view of its CASA import (None: not started)


def _write_casa_import_state(state: str) -> None:
    global _casa_state
    _casa_state = state
    path = casa_import_state_path(os.environ["CASA_MAGICS_RUN_DIR"], int(os.environ["CASA_MAGICS_SERVER_ID"]))
    try:
        partial = path.with_suffix(".partial")
        partial.write_text(state)
        partial.replace(path)  # readers see the old state or the new one, whole
    except OSError:  # no run directory here: the state is only known on this server
        pass


#: The interpreter's thread switch interval (seconds) while CASA imports in the background.
IMPORT_SWITCH_INTERVAL = 0.00005
#: How much lower (``nice``) the importing thread's CPU priority is than the server's.
IMPORT_NICENESS = 19


@contextlib.contextmanager
def _yielding_to_requests() -> Iterator[None]:
    """Let requests through while this thread imports CASA.

    The import is mostly Python code that holds the interpreter lock, which
    a waiting thread gets only every switch interval (5 ms by default): a
    request then waited several intervals. A shorter interval hands the
    lock over sooner, and a lower priority for this thread (Linux: per
    thread) gives a request the CPU first on a busy machine.
    """
    previous = sys.getswitchinterval()
    sys.setswitchinterval(min(previous, IMPORT_SWITCH_INTERVAL))
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + IMPORT_NICENESS)
    except (AttributeError, OSError):  # not Linux, or not allowed: the switch interval still helps
        pass
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def _import_casa() -> None:
    _write_casa_import_state(CASA_IMPORTING)
    try:
        with _yielding_to_requests():
            import casatasks
            import casatools

        namespace = user_namespace()  # as "import casatools, casatasks" would, unless the names are taken
        namespace.setdefault("casatools", casatools)
        namespace.setdefault("casatasks", casatasks)
    except BaseException as error:  # reported through the state; a command importing CASA sees it too
        _write_casa_import_state("failed: " + " ".join(f"{type(error).__name__}: {error}".split())[:200])
    else:
        _write_casa_import_state(CASA_READY)


def start_casa_import() -> None:
    """Import ``casatools`` and ``casatasks`` in a background thread of this server.

    Commands keep running meanwhile; one that imports CASA itself simply
    waits for the import in progress. The state (``'importing'``,
    ``'ready'`` or ``'failed: ...'``) is written to
    :func:`casa_import_state_path` in the run directory.
    """
    global _casa_import
    if _casa_import is None:
        _casa_import = threading.Thread(target=_import_casa, name="casa-magics-casa-import", daemon=True)
        _casa_import.start()


def join_casa_import(timeout: float | None = None) -> bool:
    """Wait (at most ``timeout`` s) for the background CASA import; True once it has ended."""
    if _casa_import is None:
        return True
    _casa_import.join(timeout)
    return not _casa_import.is_alive()


def server_report() -> dict[str, Any]:
    """What this server says of itself, read without disturbing the command it runs (from any thread).

    Returns
    -------
    dict
        ``memory`` (its resident memory, bytes), ``available_memory`` (what
        its machine can still give), ``casa`` (its background CASA import:
        ``'importing'``, ``'ready'``, ``'failed: ...'``, or None if it never
        started) and ``running`` (the request it runs now, 0: none).
    """
    try:
        import psutil

        available = psutil.virtual_memory().available
    except Exception:
        available = None
    board = _board
    return {
        "memory": memory.own_memory(),
        "available_memory": available,
        "casa": _casa_state,
        "running": board.running if board is not None else 0,
    }


#: What casampi's servers offer casatasks' jobs besides the tasks themselves.
_CASAMPI_MODULES = ("os", "sys", "time", "traceback", "subprocess", "tempfile", "uuid")


def provide_casampi_namespace(command_log_level: str) -> list[str]:
    """Give the namespace what casampi's servers give casatasks' jobs.

    Imports ``casatasks`` and adds every task (``from casatasks import *``),
    ``casalog`` and a few standard modules. Names the user already defined
    are left as they are. Requests are from now on noted in the CASA log.

    Returns
    -------
    list of str
        The names that were added.
    """
    import importlib

    import casatasks

    namespace = user_namespace()
    offered = {name: getattr(casatasks, name) for name in getattr(casatasks, "__all__", ())}
    offered["casalog"] = casatasks.casalog
    offered.update((name, importlib.import_module(name)) for name in _CASAMPI_MODULES)
    added = [name for name in offered if name not in namespace]
    for name in added:
        namespace[name] = offered[name]
    set_command_log_level(command_log_level)
    return added


class _RequestRunner:
    """:func:`run_requests` in a form that pickles as a reference.

    ipyparallel sends a plain function's code with every message; this
    object pickles as the name ``casa_magics.server.runner.request_runner``,
    a few bytes, which is what makes a round trip cost no more than plain
    ipyparallel's.
    """

    def __call__(self, requests: list[WireRequest]) -> list[dict[str, Any]]:
        return run_requests(requests)

    def __reduce__(self) -> str:
        return "request_runner"


#: What the client sends to the engines (see :class:`_RequestRunner`).
request_runner = _RequestRunner()
