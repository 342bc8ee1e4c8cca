"""An ipyparallel engine that registers late in proportion to its MPI rank's
distance from the last rank, so engine IDs come out in reverse rank order.

Used as ``MPIEngineSetLauncher.engine_cmd`` to prove that server IDs follow
MPI ranks, not registration order.
"""

import os
import sys
import time

rank = int(os.environ.get("PMI_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0")))
size = int(os.environ.get("PMI_SIZE", os.environ.get("OMPI_COMM_WORLD_SIZE", "1")))
time.sleep((size - 1 - rank) * 1.5)

from ipyparallel.engine.app import main  # noqa: E402

sys.exit(main())
