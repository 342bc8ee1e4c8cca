"""How long an embedded cluster takes to start, against plain ipyparallel doing the same.

For each size (default 2 and 8 servers) the two are started alternately,
``--rounds`` times each, in this one process:

* floor: ``ipp.Cluster(engines="mpi", n=N, controller_ip="127.0.0.1")``, its
  controller started, then its MPI engines with the launcher settings the
  servers get (:func:`floor_engine_settings`: the same ``mpiexec``, its
  arguments and environment from ``casa_magics.cluster.launcher.plan_launch``; with
  Open MPI ``--oversubscribe``, ``--bind-to none``, ``--enable-recovery`` and,
  as root, ``--allow-run-as-root``; without them the wheel refuses 8 ranks on
  2 cores), each rank running plain ``ipyparallel.engine`` (no keeper, no
  CASA preparation: that is what casa_magics adds), and ``wait_for_engines(N)``;
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
from casa_magics.core.config import load_settings  # noqa: E402
from casa_magics.cluster.launcher import find_mpiexec, is_hydra, plan_launch  # noqa: E402


def floor_engine_settings() -> dict:
    """What the floor's ``start_engines_sync`` gets: the launcher, its arguments and environment
    that ``ClusterSession.start`` gives the servers (same settings, same ``plan_launch``), and
    ipyparallel's own engine command."""
    settings = load_settings()
    mpiexec = find_mpiexec(settings.mpiexec)
    if mpiexec is None:
        raise RuntimeError(f"{settings.mpiexec} not found: make install")
    plan = plan_launch(mpiexec, hydra=is_hydra(mpiexec), extra_args=list(settings.mpiexec_args),
                       hostfile=settings.hostfile)
    return {"mpi_cmd": plan.mpi_cmd, "mpi_args": plan.mpi_args, "environment": dict(plan.environment)}


def start_floor(n: int) -> float:
    began = time.perf_counter()
    engine_settings = floor_engine_settings()  # inside the clock, as ClusterSession.start decides it
    cluster = ipp.Cluster(engines="mpi", n=n, controller_ip="127.0.0.1", log_level=logging.WARNING, load_profile=False)
    cluster.start_controller_sync()
    cluster.start_engines_sync(n, **engine_settings)
    client = cluster.connect_client_sync()
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
    launcher = floor_engine_settings()
    print("both launched as: " + " ".join([*launcher["mpi_cmd"], "-n", "N", *launcher["mpi_args"]])
          + "".join(f" ({name}={value})" for name, value in launcher["environment"].items()))
    print("| servers | plain ipyparallel (floor) | casa_magics | casa_magics / floor | goal |")
    print("|---|---|---|---|---|")
    for n, (floor_s, ours_s) in rows.items():
        print(f"| {n} | {floor_s:.2f} s | {ours_s:.2f} s | {ours_s / floor_s:.2f} | <= 1.1 |")
    return rows


if __name__ == "__main__":
    main()
