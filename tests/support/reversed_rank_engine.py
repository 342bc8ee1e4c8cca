"""An ipyparallel engine that asks for engine ID ``size - 1 - rank``.

ipyparallel's MPI engines request their rank as engine ID, but the
controller may hand out another one (the ID is taken, engines from several
``mpiexec`` runs, a restarted engine). This wrapper makes the mismatch
certain, to prove that server IDs follow MPI ranks and not engine IDs. Used
as ``MPIEngineSetLauncher.engine_cmd``.
"""

import os
import sys

rank = int(os.environ.get("PMI_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0")))
size = int(os.environ.get("PMI_SIZE", os.environ.get("OMPI_COMM_WORLD_SIZE", "1")))
sys.argv.append(f"--IPEngine.id={size - 1 - rank}")

from ipyparallel.engine.app import main  # noqa: E402

sys.exit(main())
