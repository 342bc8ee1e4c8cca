"""Servers on three nodes against the same servers on one node: start-up, round trip, throughput, memory.

Brings up the tests' three-node Slurm in network namespaces
(``tests/support/multinode_slurm.py``: root, ``make slurm-packages``), then
for 6, 12 and 24 servers starts them through ``sbatch`` spread over 3 nodes
and packed on 1 node, in turn, and measures in this one process:

* start-up: ``ClusterSession.start(...)`` until every server answers;
* round trip: median blocking ``"1+1"`` on the last server, and the same
  through plain ipyparallel (``apply_sync``) on that engine: the floor;
* throughput: 20 untargeted ``"1+1"`` per server, then one blocking get;
* memory per idle server: the servers' own reports (resident memory), mean.

The "nodes" are network namespaces of one 2-core machine: they share its
cores, memory and disk, so this shows what crossing a network costs the
product (routing through the bridge, the control channel), not what more
machines give. CASA is not imported on the servers (``CASA_MAGICS_IMPORT_CASA=0``).

Run: ``.venv/bin/python benchmarks/bench_multinode.py [--servers 6 12 24] [--rounds 1] [--json out.json]``
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
os.environ["CASA_MAGICS_IMPORT_CASA"] = "0"

from casa_magics import ClusterSession, CommandClient  # noqa: E402
from markdown_table import table  # noqa: E402  (beside this script)
from tests.support.multinode_slurm import MultiNodeSlurm, why_no_multinode  # noqa: E402

NODES = 3


def measure(slurm: MultiNodeSlurm, servers: int, nodes: int, trips: int) -> dict[str, float]:
    """Start ``servers`` servers on ``nodes`` nodes, measure, stop."""
    began = time.perf_counter()
    session = ClusterSession.start(
        n=servers, scheduler="slurm", controller_ip=slurm.bridge_ip, time_limit="30", timeout=600,
        sbatch_args=[f"--nodes={nodes}", f"--ntasks-per-node={servers // nodes}", "--overcommit"],
    )
    client = CommandClient(session)
    try:
        client.start_services()
        client.push_command_request("1+1", block=True, target_server=list(range(1, servers + 1)))
        startup = time.perf_counter() - began
        last = session.servers.info(servers)
        view = session.client[last.engine]
        floor, ours = [], []
        for _ in range(trips):  # alternately, so drift hits both alike
            start = time.perf_counter()
            view.apply_sync(eval, "1+1")
            middle = time.perf_counter()
            client.push_command_request("1+1", block=True, target_server=servers)
            floor.append(middle - start)
            ours.append(time.perf_counter() - middle)
        count = 20 * servers
        start = time.perf_counter()
        ids = [client.push_command_request("1+1")[0] for _ in range(count)]
        client.get_command_response(ids, block=True, timeout=600)
        throughput = count / (time.perf_counter() - start)
        status = client.get_server_status()
        memory = statistics.mean(state["memory"] for state in status.values())
        hosts = len({info.host for info in session.servers})
    finally:
        client.stop_services()
        session.stop()
    return {
        "startup_s": startup, "round_trip_ms": 1000 * statistics.median(ours),
        "floor_ms": 1000 * statistics.median(floor), "throughput_per_s": throughput,
        "memory_mb": memory / 2**20, "hosts": hosts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, nargs="+", default=[6, 12, 24])
    parser.add_argument("--rounds", type=int, default=1, help="rounds of each layout (best start-up and throughput)")
    parser.add_argument("--trips", type=int, default=100, help="round trips timed per layout")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    why = why_no_multinode()
    if why is not None:
        sys.exit(f"bench_multinode: no multi-node Slurm here: {why}")
    slurm = MultiNodeSlurm(NODES, cpus_per_node=max(args.servers))
    rows = [("servers", "nodes", "start-up s", "round trip ms", "ipyparallel ms", "ratio", "commands/s", "memory/idle server")]
    figures = []
    try:
        slurm.start(timeout=120)
        os.environ["SLURM_CONF"] = str(slurm.conf)  # sbatch, scontrol and squeue of this process ask these nodes
        for servers in args.servers:
            for nodes in (NODES, 1):
                runs = [measure(slurm, servers, nodes, args.trips) for _ in range(args.rounds)]
                best = {
                    "servers": servers, "nodes": nodes, "hosts": runs[0]["hosts"],
                    "startup_s": min(r["startup_s"] for r in runs),
                    "round_trip_ms": min(r["round_trip_ms"] for r in runs),
                    "floor_ms": min(r["floor_ms"] for r in runs),
                    "throughput_per_s": max(r["throughput_per_s"] for r in runs),
                    "memory_mb": min(r["memory_mb"] for r in runs),
                }
                figures.append(best)
                rows.append((
                    str(servers), str(best["hosts"]), f"{best['startup_s']:.1f}", f"{best['round_trip_ms']:.2f}",
                    f"{best['floor_ms']:.2f}", f"{best['round_trip_ms'] / best['floor_ms']:.2f}×",
                    f"{best['throughput_per_s']:.0f}", f"{best['memory_mb']:.0f} MB",
                ))
                print(rows[-1], flush=True)
    finally:
        slurm.stop()
    print()
    print(f"{datetime.date.today()}, {platform.node()} ({os.cpu_count()} cores), "
          f"`{' '.join([Path(sys.executable).name, *sys.argv])}`; best of {args.rounds}, {args.trips} round trips each")
    print()
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
