"""``python -m casa_magics.demo`` (``make demo``): the seed's two examples, end to end.

Starts an embedded cluster of MPI servers, runs casampi's Example 1
(stateless commands on any free server, both command forms) and Example 2
(state built up on servers 1 and 2 in order, blocking only on the last
command), prints the responses, and shuts everything down. The CASA tasks of
the seed are replaced by pure-Python stand-ins so the demo needs no CASA.
"""

from __future__ import annotations

import sys
import time

from casa_magics import MPICommandClient, MPIEnvironment
from casa_magics.display import responses_text, status_text

__all__ = ["main"]

# A stand-in for CASA's wvrgcal: a stateless task that takes keyword arguments.
WVRGCAL_STANDIN = '''
def wvrgcal(vis, caltable, spw=()):
    """Stand-in for CASA's wvrgcal: 'calibrates' one execution block."""
    import time, zlib
    time.sleep(0.5)
    return {"vis": vis, "caltable": caltable, "spw": list(spw), "checksum": zlib.crc32(vis.encode()) % 1000}
'''

# Example 2's steps, as in the seed: open, filter, put back, close.
OPEN_MS = "import numpy as np; rng = np.random.default_rng(casa_server_id); data = rng.normal(size=(2, 64, 100)); opened = f'eb{casa_server_id}.ms'"
IMPORT_FILTER = "from numpy.lib.stride_tricks import sliding_window_view"
APPLY_FILTER = (
    "padded = np.pad(data, ((0, 0), (2, 2), (0, 0)), mode='edge'); "
    "filtered = np.median(sliding_window_view(padded, 5, axis=1), axis=-1)"
)
PUT_BACK = "data = filtered"
SUMMARY = "round(float(np.abs(data).mean()), 6)"
CLOSE_MS = "closed = opened; del opened"


def show(title: str, responses: list[dict]) -> None:
    """Print responses as the magics' text table, then any tracebacks."""
    print(f"\n{title}\n{responses_text(responses)}")
    for r in responses:
        if r["traceback"]:
            print(f"request {r['id']}:\n{r['traceback']}")


def main() -> int:
    started = time.time()
    client = MPICommandClient()
    client.set_log_mode("redirect")
    servers = MPIEnvironment.mpi_server_rank_list()
    client.start_services()
    print(f"Started {client.session.description} in {time.time() - started:.1f} s; servers {servers}")
    print(client.session.servers)
    try:
        client.push_command_request(WVRGCAL_STANDIN, block=True, target_server=servers)

        # Example 1: two stateless commands, any server will do.
        cmd1 = "wvrgcal(vis='uid___A002_X1.ms', caltable='cal-wvr_X54', spw=[1, 3, 5, 7])"
        cmdId1 = client.push_command_request(cmd1, block=False)
        params2 = {"vis": "uid___A002_X2.ms", "caltable": "cal-wvr_X55", "spw": [1, 3, 5, 7]}
        cmdId2 = client.push_command_request("wvrgcal()", block=False, parameters=params2)
        resultList = client.get_command_response([cmdId1, cmdId2], block=True)
        show("Example 1: wvrgcal on two execution blocks (target_server=None)", resultList)

        # Example 2: stateful commands on servers 1 and 2, FIFO; block only on the last.
        targets = servers[:2]
        for command in (OPEN_MS, IMPORT_FILTER, APPLY_FILTER, PUT_BACK, SUMMARY):
            last = client.push_command_request(command, target_server=targets)
        filtered = client.get_command_response(last, block=True)
        closed = client.push_command_request(CLOSE_MS, block=True, target_server=targets)
        show("Example 2: median filter on servers 1 and 2 (mean |data| after filtering)", filtered)
        show("Example 2: close", closed)

        failed = [r for r in resultList + filtered + closed if not r["successful"]]
        print(f"\n{status_text(client.get_server_status())}")
        return 1 if failed else 0
    finally:
        client.stop_services()
        print(f"\nStopped the cluster; demo took {time.time() - started:.1f} s.")


if __name__ == "__main__":
    sys.exit(main())
