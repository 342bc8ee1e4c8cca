"""``python -I engine_keeper.py ENGINE-COMMAND...``: keep one server's death its own.

MPICH's process manager (hydra) kills every process of an ``mpiexec`` job
as soon as one of them dies from a signal, even with
``-disable-auto-cleanup``. casampi's servers survive each other, and ours
must too: a server killed by the out-of-memory killer must not take the
others' state with it.

So ``mpiexec`` starts this small keeper as each rank, and the keeper runs the
real engine as its child, in a session of its own, inheriting the MPI
process manager's connection. When the engine dies, the keeper *exits*
(status 128 + signal), which hydra with ``-disable-auto-cleanup`` tolerates.
Signals sent to the keeper (Ctrl-C forwarded by ``mpiexec``, shutdown) are
passed on to the engine, and on Linux the engine is killed if the keeper is.

The launcher runs this file as a script (``python -I``), not as
``-m casa_magics.server.engine_keeper``: that would import the whole package
(ipyparallel, IPython) in every rank just to start a child process.
It must therefore import nothing but the standard library.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

__all__ = ["main", "exit_note_path", "gang_ready_environment"]

_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Ask Linux to SIGKILL the engine when its keeper goes away."""
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: the cluster's own shutdown still reaps engines


def gang_ready_environment(environ: "os._Environ[str] | dict[str, str]") -> dict[str, str]:
    """The engine's environment, with a rank alone on its node told it has a neighbour.

    casatools' C++ reads Open MPI's ``OMPI_COMM_WORLD_LOCAL_SIZE``: a rank
    that is alone on its node (local size 1) leaves
    ``synthesisimager().initmpi()`` at once instead of serving as a worker,
    and a gang with members on several nodes then waits for it forever. A
    world of more than one rank is parallel whatever the layout, so such a
    rank is given a local size of 2 (the real one is kept in
    ``CASA_MAGICS_LOCAL_SIZE``). Open MPI itself takes the layout from its
    runtime, not from this variable.
    """
    env = dict(environ)
    if env.get("OMPI_COMM_WORLD_LOCAL_SIZE") == "1" and int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        env["CASA_MAGICS_LOCAL_SIZE"] = "1"
        env["OMPI_COMM_WORLD_LOCAL_SIZE"] = "2"
    return env


def main(argv: list[str] | None = None) -> int:
    """Run ``argv`` (default: this process's arguments) and exit as it exits."""
    command = sys.argv[1:] if argv is None else argv
    if not command:
        print("usage: python -I engine_keeper.py ENGINE-COMMAND...", file=sys.stderr)
        return 2
    # close_fds=False: the engine needs the process manager's PMI socket (PMI_FD).
    engine = subprocess.Popen(
        command, close_fds=False, start_new_session=True, preexec_fn=_die_with_parent,
        env=gang_ready_environment(os.environ),
    )
    for signum in _FORWARDED:
        signal.signal(signum, lambda received, _frame: engine.send_signal(received))
    code = engine.wait()
    _note_exit(engine.pid, code)
    return code if code >= 0 else 128 - code


def exit_note_path(run_dir: str, pid: int) -> str:
    """Where a server's keeper notes how the engine of process ``pid`` ended."""
    return os.path.join(run_dir, f"engine-{pid}.exit")


def _note_exit(pid: int, code: int) -> None:
    """Write how the engine ended (``-9``: SIGKILL) where the client looks when the server is lost."""
    run_dir = os.environ.get("CASA_MAGICS_RUN_DIR")
    if not run_dir:
        return
    try:
        with open(exit_note_path(run_dir, pid), "w") as note:
            note.write(str(code))
    except OSError:  # a note is never worth more than the exit itself
        pass


if __name__ == "__main__":
    sys.exit(main())
