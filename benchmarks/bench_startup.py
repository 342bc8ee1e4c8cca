"""How long an embedded cluster takes to start, against plain ipyparallel doing the same.

For each size (default 2 and 8 servers) the two are started alternately,
``--rounds`` times each, in this one process:

* floor: ``ipp.Cluster(engines="mpi", n=N, controller_ip="127.0.0.1")``,
  ``start_and_connect_sync()`` and ``wait_for_engines(N)``;
* casa_magics: ``ClusterSession.start(n=N)`` (controller, N MPI servers, the
  server map read from the engines, every server prepared for CASA).

Each is timed from the call until every engine answers, then stopped
(untimed). The table shows the medians and their ratio; the goal is
casa_magics / floor <= 1.1. With ``--casa`` it also times importing CASA on
every server in the background (``CommandClient.import_casa``).

Run: ``.venv/bin/python benchmarks/bench_startup.py [--sizes 2 8] [--rounds 3]``
(``make bench`` runs it).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path

os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")

import ipyparallel as ipp  # noqa: E402

from casa_magics import ClusterSession  # noqa: E402


def start_floor(n: int) -> float:
    began = time.perf_counter()
    # mpiexec is found on PATH, where the venv's (the mpich wheel's) comes first.
    cluster = ipp.Cluster(engines="mpi", n=n, controller_ip="127.0.0.1", log_level=logging.WARNING, load_profile=False)
    client = cluster.start_and_connect_sync()
    client.wait_for_engines(n, timeout=120, interactive=False)
    client[:].apply_sync(os.getpid)
    took = time.perf_counter() - began
    client.close()
    cluster.stop_cluster_sync()
    return took


def start_ours(n: int) -> float:
    began = time.perf_counter()
    session = ClusterSession.start(n=n, timeout=120)
    session.client[:].apply_sync(os.getpid)
    took = time.perf_counter() - began
    session.stop()
    return took


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    rows = {}
    for n in args.sizes:
        floor, ours = [], []
        for _ in range(args.rounds):
            floor.append(start_floor(n))
            ours.append(start_ours(n))
        rows[n] = (statistics.median(floor), statistics.median(ours))
    print(f"start-up of an embedded cluster, median of {args.rounds}, {os.cpu_count()} cores")
    print("| servers | plain ipyparallel (floor) | casa_magics | casa_magics / floor | goal |")
    print("|---|---|---|---|---|")
    for n, (floor_s, ours_s) in rows.items():
        print(f"| {n} | {floor_s:.2f} s | {ours_s:.2f} s | {ours_s / floor_s:.2f} | <= 1.1 |")
    return rows


if __name__ == "__main__":
    main()
