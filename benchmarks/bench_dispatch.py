"""Dispatch speed of the casa_magics facade against plain ipyparallel (the floor).

Run with ``make bench`` (or ``python benchmarks/bench_dispatch.py``). One
embedded cluster of MPI engines serves both sides, in one process, so the
ratios compare like with like:

* round trip: a blocking ``"1+1"`` on one server (median of many);
* throughput: many non-blocking ``"1+1"`` for any server, then one blocking
  get of all (the floor is the faster of a load-balanced view and direct
  views in turn, one message per command);
* makespan overhead: N ``time.sleep(1)`` on N servers, minus 1 s;
* memory: client memory held per 100,000 finished requests, and after
  ``forget_command_responses()``.

The floor is what a user of plain ipyparallel would write for the same work:
``view.apply_sync(eval, "1+1")``, a load-balanced view for "any engine", and
one ``apply_async`` per engine. With ``--reference`` the real casampi runs
the same workloads too (see ``benchmarks/reference_casampi.py`` for its
set-up) and the speed-up over it is printed.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import ipyparallel as ipp

# The venv's bin first, so ipyparallel finds the mpich wheel's mpiexec.
os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")

from casa_magics import ClusterSession, CommandClient  # noqa: E402
from markdown_table import table  # noqa: E402  (beside this script)


def round_trips_ms(view: ipp.DirectView, client: CommandClient, repeat: int) -> tuple[float, float]:
    """Median round trip of the floor and of the facade, timed alternately so drift hits both alike."""
    floor, facade = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        view.apply_sync(eval, "1+1")
        middle = time.perf_counter()
        client.push_command_request("1+1", block=True, target_server=1)
        floor.append(middle - start)
        facade.append(time.perf_counter() - middle)
    return statistics.median(floor) * 1000, statistics.median(facade) * 1000


def floor_throughput(rc: ipp.Client, n: int) -> float:
    """One message per command, the faster of ipyparallel's two ways to say "any engine":
    a load-balanced view, and direct views taken in turn (round robin, pipelined)."""
    rates = []
    for view_for in (lambda i: balanced, lambda i: direct[i % len(direct)]):
        balanced, direct = rc.load_balanced_view(), [rc[e] for e in rc.ids]
        start = time.perf_counter()
        results = [view_for(i).apply_async(eval, "1+1") for i in range(n)]
        rc.wait(results, timeout=600)
        elapsed = time.perf_counter() - start
        assert all(r.get() == 2 for r in results)
        rates.append(n / elapsed)
    return max(rates)


def facade_throughput(client: CommandClient, n: int) -> float:
    start = time.perf_counter()
    ids = [client.push_command_request("1+1")[0] for _ in range(n)]
    responses = client.get_command_response(ids, block=True, timeout=600)
    elapsed = time.perf_counter() - start
    assert len(responses) == n and all(r["ret"] == 2 for r in responses)
    client.forget_command_responses(ids)
    return n / elapsed


def floor_makespan_ms(rc: ipp.Client) -> float:
    start = time.perf_counter()
    results = [rc[engine].apply_async(time.sleep, 1) for engine in rc.ids]
    rc.wait(results, timeout=60)
    return (time.perf_counter() - start - 1) * 1000


def facade_makespan_ms(client: CommandClient) -> float:
    servers = client.session.servers.server_ids
    start = time.perf_counter()
    client.push_command_request("import time; time.sleep(1)", block=True, target_server=servers)
    return (time.perf_counter() - start - 1) * 1000


def facade_memory_mb(client: CommandClient, n: int) -> tuple[float, float]:
    """Python memory held for n finished requests, scaled to 100,000; and after forgetting them."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    ids = [client.push_command_request("1+1")[0] for _ in range(n)]
    client.get_command_response(ids[-1], block=True, timeout=600)
    client.get_command_response(ids, block=True, timeout=600)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - base
    client.forget_command_responses(ids)
    del ids
    gc.collect()
    after = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    scale = 100_000 / n
    return held * scale / 1e6, after * scale / 1e6


def floor_memory_mb(rc: ipp.Client, n: int) -> float:
    """Python memory held by n finished AsyncResults kept for later reading, scaled to 100,000."""
    view = rc.load_balanced_view()
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    results = [view.apply_async(eval, "1+1") for _ in range(n)]
    rc.wait(results, timeout=600)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    del results
    return held * 100_000 / n / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--servers", type=int, default=2, help="servers (engines), default 2")
    parser.add_argument("--repeat", type=int, default=500, help="round trips to time, default 500")
    parser.add_argument("--burst", type=int, default=1000, help="requests in the throughput burst, default 1000")
    parser.add_argument("--memory-requests", type=int, default=20_000, help="requests for the memory figure (scaled to 100,000)")
    parser.add_argument("--reference", action="store_true", help="also run the real casampi (see reference_casampi.py)")
    args = parser.parse_args(argv)

    session = ClusterSession.start(n=args.servers)
    client = CommandClient(session)
    client.start_services()
    rc = session.client
    view = rc[session.servers.engine_of(1)]
    try:
        # Warm up both paths (imports, first messages, the dispatcher's duration estimate).
        round_trips_ms(view, client, 20)
        facade_throughput(client, 200)

        mem_facade, mem_after = facade_memory_mb(client, args.memory_requests)
        mem_floor = floor_memory_mb(rc, args.memory_requests)
        rt_floor, rt_facade = round_trips_ms(view, client, args.repeat)
        tp_floor, tp_facade = floor_throughput(rc, args.burst), facade_throughput(client, args.burst)
        ms_floor, ms_facade = floor_makespan_ms(rc), facade_makespan_ms(client)
    finally:
        client.stop_services()

    rows = [
        ("measure", "plain ipyparallel (floor)", "casa_magics facade", "facade / floor", "goal"),
        (f"round trip of \"1+1\", median of {args.repeat}", f"{rt_floor:.2f} ms", f"{rt_facade:.2f} ms", f"{rt_facade / rt_floor:.2f}", "<= 1.2"),
        (f"throughput, {args.burst} non-blocking, any server", f"{tp_floor:.0f} /s", f"{tp_facade:.0f} /s", f"{tp_facade / tp_floor:.2f}", ">= 0.9 (beat 1.0)"),
        (f"makespan overhead, {args.servers} x sleep(1)", f"{ms_floor:.1f} ms", f"{ms_facade:.1f} ms", "-", "<= 50 ms"),
        ("client memory per 100,000 finished", f"{mem_floor:.1f} MB", f"{mem_facade:.1f} MB", f"{mem_facade / mem_floor:.2f}", "<= 100 MB"),
        ("  ... after forget_command_responses()", "-", f"{mem_after:.1f} MB", "-", "released"),
    ]
    print(f"casa_magics dispatch benchmark, {datetime.date.today()}, {platform.node()}: "
          f"{os.cpu_count()} cores, Python {platform.python_version()}, ipyparallel {ipp.__version__}, "
          f"{args.servers} MPI servers")
    print(table(rows))

    if args.reference:
        sys.path.insert(0, str(Path(__file__).parent))
        from reference_casampi import run_reference

        reference = run_reference(n=400, servers=args.servers)
        print("\nreference casampi on the same workloads:")
        print(table([
            ("measure", "casampi", "casa_magics facade", "speed-up", ""),
            ("round trip", f"{reference['round_trip_ms']:.1f} ms", f"{rt_facade:.2f} ms", f"{reference['round_trip_ms'] / rt_facade:.0f}x", ""),
            ("throughput", f"{reference['throughput_per_s']:.1f} /s", f"{tp_facade:.0f} /s", f"{tp_facade / reference['throughput_per_s']:.0f}x", ""),
            ("makespan overhead", f"{reference['makespan_overhead_ms']:.0f} ms", f"{ms_facade:.1f} ms", "-", ""),
        ]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
