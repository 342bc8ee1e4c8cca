"""How the servers of an embedded cluster are launched: pure decisions, no processes.

:func:`plan_launch` turns the settings into what ipyparallel's MPI engine
launcher needs (the launcher command, its arguments, the program each rank
runs); :func:`launch_command` shows the whole command line it will run. Both
are pure functions, so every combination (MPICH's hydra or Open MPI, a
hostfile, extra arguments) is tested without an ``mpiexec``.

Runs in the client.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "LaunchPlan",
    "plan_launch",
    "launch_command",
    "find_mpiexec",
    "is_hydra",
    "open_mpi_defaults",
    "open_mpi_environment",
    "KEEPER_SCRIPT",
]

#: The per-rank keeper, run as a script so that it imports nothing but the standard library.
KEEPER_SCRIPT = str(Path(__file__).parent.parent / "server" / "engine_keeper.py")


@dataclass(frozen=True)
class LaunchPlan:
    """What ipyparallel's ``MPIEngineSetLauncher`` gets for one engine set.

    Attributes
    ----------
    mpi_cmd : list of str
        The launcher (``mpiexec``), a full path.
    mpi_args : list of str
        Its arguments after ``-n N``.
    engine_cmd : list of str
        What every rank runs (ipyparallel appends ``--mpi`` and the engine's
        own arguments).
    """

    mpi_cmd: list[str]
    mpi_args: list[str] = field(default_factory=list)
    engine_cmd: list[str] = field(default_factory=list)
    #: Environment variables the servers get (the user's own values win).
    environment: dict[str, str] = field(default_factory=dict)


def find_mpiexec(mpiexec: str) -> str | None:
    """Full path of the MPI launcher.

    A bare name is looked up next to this Python first (where the ``mpich``
    wheel puts the ``mpiexec`` that matches this environment's mpi4py), then
    on ``PATH``. A path is used as given.
    """
    if os.sep in mpiexec:
        return shutil.which(mpiexec)
    return shutil.which(mpiexec, path=str(Path(sys.executable).parent)) or shutil.which(mpiexec)


def is_hydra(mpiexec_path: str) -> bool:
    """True for MPICH's launcher (hydra), whose options differ from Open MPI's."""
    return "hydra" in os.path.realpath(mpiexec_path) or Path(mpiexec_path).with_name("hydra_pmi_proxy").exists()


def open_mpi_defaults(extra_args: list[str] = (), *, as_root: bool = False) -> list[str]:
    """Open MPI's ``mpiexec`` options that make it behave like a casampi cluster.

    Each one is left out when the user's own arguments already decide it.

    - ``--oversubscribe``: more servers than cores is normal (MPICH's hydra
      allows it without asking).
    - ``--bind-to none``: the servers' CASA threads may use any core.
    - ``--enable-recovery``: one server's death is its own; without it Open
      MPI ends the whole job.
    - ``--allow-run-as-root``: only as root (containers, CI), where Open MPI
      otherwise refuses to start.
    """
    given = " ".join(extra_args)
    defaults = []
    if not any(word in given for word in ("--oversubscribe", "--nooversubscribe", "--map-by", "OVERSUBSCRIBE")):
        defaults.append("--oversubscribe")
    if "--bind-to" not in given:
        defaults += ["--bind-to", "none"]
    if "--enable-recovery" not in given and "--disable-recovery" not in given:
        defaults.append("--enable-recovery")
    if as_root and "--allow-run-as-root" not in given:
        defaults.append("--allow-run-as-root")
    return defaults


def open_mpi_environment(environ: "dict[str, str] | os._Environ[str] | None" = None) -> dict[str, str]:
    """Open MPI settings that keep a waiting server from spinning a core.

    Open MPI waits for a message by polling. In a gang (see
    :mod:`casa_magics.server.gang_member`) the master waits while its workers
    image, and on a machine with fewer cores than servers that polling took
    a worker's core. With these, a rank with nothing to do sleeps 1 ms
    between polls. Variables already set in ``environ`` (default: this
    process's environment) are left out, so the user's own win.
    """
    environ = os.environ if environ is None else environ
    wanted = {
        "OMPI_MCA_mpi_yield_when_idle": "1",
        "OMPI_MCA_threads_pthreads_yield_strategy": "nanosleep",
        "OMPI_MCA_threads_pthreads_nanosleep_time": "1000000",
    }
    return {name: value for name, value in wanted.items() if name not in environ}


def plan_launch(
    mpiexec_path: str,
    *,
    hydra: bool,
    extra_args: list[str] = (),
    hostfile: str | None = None,
    engine_command: list[str] | None = None,
    python: str = sys.executable,
    as_root: bool | None = None,
) -> LaunchPlan:
    """Decide how ``mpiexec`` starts the servers.

    Parameters
    ----------
    mpiexec_path : str
        The launcher (see :func:`find_mpiexec`).
    hydra : bool
        True for MPICH's hydra, False for Open MPI's ``mpiexec``.
    extra_args : list of str
        The user's own launcher arguments, passed on unchanged.
    hostfile : str, optional
        A hostfile: ``-f`` for hydra, ``--hostfile`` for Open MPI.
    engine_command : list of str, optional
        The engine program (default: ``python -m ipyparallel.engine``).
    python : str
        The Python that runs the per-rank keeper.
    as_root : bool, optional
        Whether the servers run as root (default: whether this process does);
        Open MPI must then be told it may.

    Returns
    -------
    LaunchPlan

    Notes
    -----
    Each rank runs a small keeper around its engine, so one server's death
    is its own: hydra ends a whole job when one rank dies from a signal, so
    the keeper exits instead, and hydra is told to tolerate that
    (``-disable-auto-cleanup``). Open MPI is told the same with
    ``--enable-recovery`` (see :func:`open_mpi_defaults`).
    """
    if as_root is None:
        as_root = os.geteuid() == 0
    defaults = ["-disable-auto-cleanup"] if hydra else open_mpi_defaults(extra_args, as_root=as_root)
    args = defaults + list(extra_args)
    if hostfile:
        args += ["-f" if hydra else "--hostfile", hostfile]
    engine = list(engine_command or [python, "-m", "ipyparallel.engine"])
    return LaunchPlan(
        mpi_cmd=[mpiexec_path],
        mpi_args=args,
        engine_cmd=[python, "-I", KEEPER_SCRIPT] + engine,
        environment={} if hydra else open_mpi_environment(),
    )


def launch_command(plan: LaunchPlan, n: int, engine_args: list[str] = ()) -> list[str]:
    """The full command line ipyparallel runs for ``n`` servers (for messages and tests)."""
    return plan.mpi_cmd + ["-n", str(n)] + plan.mpi_args + plan.engine_cmd + ["--mpi"] + list(engine_args)
