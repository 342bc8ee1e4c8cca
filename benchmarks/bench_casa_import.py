"""Round trips while the servers import CASA in the background, against the steady state.

Right after start, each server imports casatools and casatasks in a thread
of its own (``CASA_MAGICS_IMPORT_CASA=1``, the default). This measures, on
2 servers, the blocking round trip of ``"1+1"`` on server 1 in the seconds
after start, until server 1 says CASA is ready, then the same once it is;
and how long CASA took to be ready after start returned, under that load
and with no request sent. Best of
``--rounds`` fresh clusters; the medians are printed with their ratio.

    .venv/bin/python benchmarks/bench_casa_import.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from markdown_table import table


def one_round() -> dict[str, float]:
    from casa_magics import ClusterSession, CommandClient

    os.environ["CASA_MAGICS_IMPORT_CASA"] = "1"
    started = time.monotonic()
    session = ClusterSession.start(n=2, timeout=120)
    up = time.monotonic()
    client = CommandClient(session)
    client.start_services()
    during, after = [], []
    ready_at = None
    try:
        while ready_at is None or len(after) < 50:
            begin = time.perf_counter()
            client.push_command_request("1+1", True, 1)
            took = (time.perf_counter() - begin) * 1000
            if ready_at is None and session.casa_state(1) == "ready":
                ready_at = time.monotonic()
            (during if ready_at is None else after).append(took)
            if time.monotonic() - up > 120:
                raise RuntimeError("CASA was not ready on server 1 within 120 s")
    finally:
        client.stop_services()
        session.stop()
    return {
        "start_s": up - started,
        "casa_ready_after_start_s": ready_at - up,
        "during_ms": statistics.median(during) if during else float("nan"),
        "during_n": len(during),
        "steady_ms": statistics.median(after),
    }


def ready_when_idle() -> float:
    """Seconds from start until CASA is ready on every server, with no request sent meanwhile."""
    from casa_magics import ClusterSession

    os.environ["CASA_MAGICS_IMPORT_CASA"] = "1"
    session = ClusterSession.start(n=2, timeout=120)
    up = time.monotonic()
    try:
        while any(session.casa_state(server) != "ready" for server in session.servers.server_ids):
            if time.monotonic() - up > 120:
                raise RuntimeError("CASA was not ready within 120 s")
            time.sleep(0.05)  # reads the servers' state files only
        return time.monotonic() - up
    finally:
        session.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rounds = [one_round() for _ in range(args.rounds)]
    rows = [("round", "start (s)", "CASA ready after start (s)", "round trip while importing (ms, median)", "steady round trip (ms, median)", "ratio")]
    for i, r in enumerate(rounds):
        rows.append((
            str(i + 1), f"{r['start_s']:.2f}", f"{r['casa_ready_after_start_s']:.2f}",
            f"{r['during_ms']:.2f} (n={r['during_n']})", f"{r['steady_ms']:.2f}", f"{r['during_ms'] / r['steady_ms']:.2f}x",
        ))
    print(table(rows))
    idle = [ready_when_idle() for _ in range(args.rounds)]
    print(f"\nCASA ready on both servers after start, no requests meanwhile: best {min(idle):.2f} s, "
          f"all {', '.join(f'{t:.2f}' for t in idle)} s")


if __name__ == "__main__":
    main()
