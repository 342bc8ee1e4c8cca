"""``python -m casa_magics.demo`` (``make demo``): the seed's two examples, then CASA's own parallel tasks.

Starts an embedded cluster of MPI servers, runs casampi's Example 1
(stateless commands on any free server, both command forms) and Example 2
(state built up on servers 1 and 2 in order, blocking only on the last
command), prints the responses. The CASA tasks of the seed are replaced by
pure-Python stand-ins, so this part needs no CASA. With the ``casa`` extra,
Example 3 then runs casatasks' own parallel code on the same servers
(:func:`casa_magics.enable_casampi`): NGC 5921 from ``casadata`` split into
a Multi-MS, flagged one job per sub-MS, and imaged with
``tclean(parallel=True)``, in a temporary directory. Then everything is
shut down.

Runs in the client (its own process, as ``make demo`` starts it).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

from casa_magics import MPICommandClient, MPIEnvironment, enable_casampi
from casa_magics.cluster.casa_env import casa_available
from casa_magics.notebook.display import responses_text, status_text, text_table

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


def casa_parallel_tasks(client: MPICommandClient) -> bool:
    """Example 3: casatasks' Multi-MS tasks and parallel tclean on the servers; True if all went well."""
    enable_casampi()
    from casa_magics.casampi.cube_routing import last_serial_reason

    import casadata
    import casatasks

    home, workdir = os.getcwd(), tempfile.mkdtemp(prefix="casa-magics-demo-")
    os.chdir(workdir)
    try:
        casatasks.importuvfits(fitsfile=os.path.join(casadata.datapath, "demo", "NGC5921.fits"), vis="ngc5921.ms")
        before = set(client.get_command_request_list())
        casatasks.partition(vis="ngc5921.ms", outputvis="ngc5921.mms", createmms=True, separationaxis="scan", numsubms=2)
        casatasks.flagdata(vis="ngc5921.mms", mode="manual", autocorr=True, flagbackup=False)
        summary = casatasks.flagdata(vis="ngc5921.mms", mode="summary")
        casatasks.tclean(vis="ngc5921.mms", imagename="ngc5921", field="2", spw="0:5~55", specmode="mfs",
                         imsize=128, cell="15arcsec", niter=100, parallel=True)
        before_cube = set(client.get_command_request_list())
        casatasks.tclean(vis="ngc5921.ms", imagename="ngc5921_cube", field="2", spw="0:20~27", specmode="cube",
                         imsize=128, cell="15arcsec", niter=50)
        cube = [r for i, r in sorted(client.get_command_response_list().items()) if i not in before_cube]
        jobs = [r for i, r in sorted(client.get_command_request_list().items()) if i not in before and i in before_cube]
        # partition writes each sub-MS (its outputvis); the other tasks work on one (their vis).
        written = {r["id"]: (r["parameters"] or {}).get("outputvis" if r["command"] == "partition()" else "vis") for r in jobs}
        rows = [
            {"request": r["id"], "task": r["command"], "sub-MS": os.path.basename(written[r["id"]]),
             "server": r["server"], "ok": r["successful"]}
            for r in jobs
            if r["command"].endswith("()") and written[r["id"]]
        ]
        gridding = sorted({r["server"] for r in jobs if "executemajorcycle" in r["command"]})
        print("\nExample 3: casatasks' own parallel code on the servers (enable_casampi)")
        print(text_table(rows, caption="one job per sub-MS"))
        print(f"flagdata: {summary['flagged']:.0f} of {summary['total']:.0f} visibilities flagged")
        print(f"tclean(parallel=True): major cycles gridded on servers {gridding}; image ngc5921.image written")
        workers = [r["server"] for r in cube if isinstance(r["ret"], dict) and r["ret"].get("joined")]
        if workers:
            print(f"tclean(specmode='cube'): imaged as a gang, server 1 the master, servers {workers} its workers")
        else:
            print(f"tclean(specmode='cube'): imaged serially in this process ({last_serial_reason()})")
        return all(r["successful"] for r in jobs + cube) and bool(gridding)
    finally:
        os.chdir(home)
        shutil.rmtree(workdir, ignore_errors=True)


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
        casa_ok = casa_parallel_tasks(client) if casa_available() else True
        print(f"\n{status_text(client.get_server_status())}")
        return 1 if failed or not casa_ok else 0
    finally:
        client.stop_services()
        print(f"\nStopped the cluster; demo took {time.time() - started:.1f} s.")


if __name__ == "__main__":
    sys.exit(main())
