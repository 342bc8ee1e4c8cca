"""How long 2 servers take to start through Slurm, against the embedded cluster.

Brings up the tests' one-node Slurm (``tests/support/slurm_cluster.py``: root
and ``make slurm-packages`` needed), then alternately times, ``--rounds`` times
each, in this one process:

* embedded: ``ClusterSession.start(n=N)`` (``mpiexec`` on this machine);
* Slurm: ``ClusterSession.start(n=N, scheduler='slurm')`` (``sbatch``, the
  job scheduled, the same ``mpiexec`` line inside it).

Each is timed from the call until every engine answers, then stopped
(untimed). On a real cluster the time in the queue comes on top.

Run: ``.venv/bin/python benchmarks/bench_slurm_startup.py [--servers 2] [--rounds 1]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
os.environ.setdefault("CASA_MAGICS_IMPORT_CASA", "0")

from casa_magics import ClusterSession  # noqa: E402
from tests.support.slurm_cluster import LocalSlurm, why_no_slurm  # noqa: E402


def timed_start(n: int, **kwargs) -> float:
    began = time.perf_counter()
    session = ClusterSession.start(n=n, timeout=120, **kwargs)
    session.client[:].apply_sync(os.getpid)
    took = time.perf_counter() - began
    session.stop()
    return took


def main(argv: list[str] | None = None) -> tuple[float, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    if (why := why_no_slurm()) is not None:
        raise SystemExit(f"cannot run: {why}")
    slurm = LocalSlurm().start()
    os.environ["SLURM_CONF"] = str(slurm.conf)
    os.environ.setdefault("IPYTHONDIR", tempfile.mkdtemp(prefix="ipython-"))
    try:
        embedded, through_slurm = [], []
        for _ in range(args.rounds):
            embedded.append(timed_start(args.servers))
            through_slurm.append(timed_start(args.servers, scheduler="slurm"))
    finally:
        slurm.stop()
    row = (statistics.median(embedded), statistics.median(through_slurm))
    print(f"start-up of {args.servers} servers, median of {args.rounds}, {os.cpu_count()} cores, one-node Slurm")
    print("| servers | embedded | through Slurm (sbatch) | difference |")
    print("|---|---|---|---|")
    print(f"| {args.servers} | {row[0]:.2f} s | {row[1]:.2f} s | {row[1] - row[0]:+.2f} s |")
    return row


if __name__ == "__main__":
    main()
