"""How casatasks' parallel tasks on casa_magics scale: data size and sub-MSs, in one table.

Run with ``make bench-scaling`` (or ``python benchmarks/bench_scaling.py``;
``--json results.json`` also writes the results). The sides, tasks, checks and
the best-of-rounds rule are those of ``bench_casa_tasks.py`` (read its
docstring); this script runs them over several configurations:

* NGC5921 concatenated ``--copies`` times (default 6, 12 and 24), each on an
  MMS of one sub-MS per server;
* at ``--subms-copies`` (default 12) also MMSs of each of ``--numsubms``
  sub-MSs (default 2, 4 and 8), on the same ``--servers`` (default 2).

For every data size the serial side runs once per round (its ``partition``
writes one sub-MS per server), then every parallel configuration of that
size: rounds alternate serial and parallel as in ``bench_casa_tasks.py``.
The table gives, per configuration, the data-parallel tasks' total (serial,
casa_magics, speed-up, each best time with the spread of its rounds), the
part of casa_magics' time when no server was working on a task (the client's
own steps and dispatch: the fixed cost), the CPU time the servers spent on
them against the serial process's (above 1: work casatasks does once per
sub-MS, such as opening it and writing its own output), each data-parallel
task's speed-up, and ``tclean``'s.

Run time on a 2-core machine: about 10 minutes per round with the defaults,
7 with ``--no-tclean`` (the data-parallel tasks only), data preparation aside
(NGC5921 x 24 takes a few minutes to prepare; ``--data-dir`` keeps prepared
data sets for the next run).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import bench_casa_tasks as bench
from markdown_table import table


def configurations(copies: list[int], servers: int, subms_copies: int, numsubms: list[int]) -> list[tuple[int, int]]:
    """``(copies, sub-MSs)`` pairs: every size with one sub-MS per server, and the sub-MS counts at one size."""
    pairs = {(c, servers) for c in copies} | {(subms_copies, k) for k in numsubms}
    return sorted(pairs)


def row(copies: int, numsubms: int, data: dict, serial: dict, parallel: dict) -> tuple[str, ...]:
    fixed = sum(parallel["times"][t] - parallel["server_busy_any"][t] for t in bench.DATA_PARALLEL)
    extra = (sum(parallel["servers_cpu"][t] for t in bench.DATA_PARALLEL)
             / sum(serial["cpu"][t] for t in bench.DATA_PARALLEL))
    s_total, p_total = bench.total(serial), bench.total(parallel)
    tasks = " / ".join(f"{serial['times'][t] / parallel['times'][t]:.2f}" for t in bench.DATA_PARALLEL)
    cells = (f"x {copies}", f"{data['bytes'] / 1e6:.0f}", str(numsubms),
             bench._cell(serial, bench.DATA_PARALLEL), bench._cell(parallel, bench.DATA_PARALLEL),
             f"{s_total / p_total:.2f}x", f"{fixed:.2f}", f"{extra:.2f}", tasks)
    if "tclean" not in serial["times"]:
        return (*cells, "-", "-", "-")
    s_tc, p_tc = serial["times"]["tclean"], parallel["times"]["tclean"]
    return (*cells, bench._cell(serial, ("tclean",)), bench._cell(parallel, ("tclean",)), f"{s_tc / p_tc:.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--servers", type=int, default=2, help="servers (engines), default 2")
    parser.add_argument("--copies", type=int, nargs="+", default=[6, 12, 24],
                        help="data sizes, NGC5921 x N (default 6 12 24)")
    parser.add_argument("--numsubms", type=int, nargs="+", default=[2, 4, 8],
                        help="sub-MS counts at --subms-copies (default 2 4 8)")
    parser.add_argument("--subms-copies", type=int, default=12, help="the data size of the sub-MS rows (default 12)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per configuration; best counts (default 3)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed for each side, default 1800")
    parser.add_argument("--data-dir", metavar="DIR", help="keep the prepared data sets in DIR and reuse them")
    parser.add_argument("--no-tclean", action="store_true", help="leave tclean out (the data-parallel tasks only)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    args = parser.parse_args(argv)

    python = sys.executable
    workdir = Path(tempfile.mkdtemp(prefix="bench-scaling-"))
    env = bench.environment(workdir, python)
    pairs = configurations(args.copies, args.servers, args.subms_copies, args.numsubms)
    serial_side, parallel_side = ("serial", python, env, []), ("parallel", python, env, [])
    results: dict = {"configurations": []}
    problems: list[str] = []
    started = time.perf_counter()
    ok = False
    try:
        for copies in sorted({c for c, _ in pairs}):
            data, info = bench.prepare_data(python, env, copies,
                                            Path(args.data_dir).resolve() if args.data_dir else workdir, args.timeout)
            counts = [k for c, k in pairs if c == copies]
            rounds: dict = {"serial": [], **{k: [] for k in counts}}
            for round_ in range(args.rounds):
                tag = f"x{copies}-{round_}"
                rounds["serial"].append(bench.run_side(serial_side, data, workdir / f"serial-{tag}",
                                                       workdir / f"serial-{tag}.json", args.servers,
                                                       args.servers, args.timeout, not args.no_tclean))
                for k in counts:
                    rounds[k].append(bench.run_side(parallel_side, data, workdir / f"parallel{k}-{tag}",
                                                    workdir / f"parallel{k}-{tag}.json", args.servers, k,
                                                    args.timeout, not args.no_tclean))
            serial = bench._best(rounds["serial"])
            for k in counts:
                problems += [f"x{copies}, {k} sub-MSs, round {i}: {p}" for i, record in enumerate(rounds[k])
                             for p in bench._agree(rounds["serial"][0]["checks"], record["checks"])]
                results["configurations"].append({"copies": copies, "numsubms": k, "data": info,
                                                  "serial": serial, "parallel": bench._best(rounds[k])})
            if not args.data_dir:
                shutil.rmtree(data)  # the next size needs the disk
        ok = True
    finally:
        if ok and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"working directory kept: {workdir}", file=sys.stderr)
    results.update({"date": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
                    "cores": os.cpu_count(), "servers": args.servers, "rounds_run": args.rounds,
                    "wall_s": time.perf_counter() - started, "problems": problems})

    print(f"casatasks on casa_magics, scaling, {results['date'][:10]}, {platform.node()}: {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.2f}, Python {platform.python_version()}, {args.servers} servers, "
          f"OMP_NUM_THREADS=1")
    print(f"best of {args.rounds} rounds (spread of the rounds in brackets){'; tclean not run' if args.no_tclean else ''}; data-parallel: "
          f"{', '.join(bench.DATA_PARALLEL)}; no server busy: the casa_magics wall time of those tasks when no "
          f"server was working on them (client steps, dispatch); servers CPU / serial CPU: the work the "
          f"servers did for them against the serial process's\n")
    rows = [("NGC5921", "MB", "sub-MSs", "serial s", "casa_magics s", "speed-up", "no server busy s",
             "servers CPU / serial CPU",
             "speed-up per task (" + " / ".join(bench.DATA_PARALLEL) + ")",
             "tclean serial s", "tclean casa_magics s", "tclean speed-up")]
    for config in results["configurations"]:
        rows.append(row(config["copies"], config["numsubms"], config["data"], config["serial"], config["parallel"]))
    print(table(rows))
    print(f"\nwhole run {results['wall_s']:.0f} s")
    if problems:
        print("WARNING: the sides' outputs differ: " + "; ".join(problems))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
