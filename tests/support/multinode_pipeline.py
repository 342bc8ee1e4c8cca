"""``python multinode_pipeline.py WORKDIR CONTROLLER_IP NODES OUT.json``: casatasks' parallel code on servers of several nodes.

Run by ``tests/test_multinode.py`` in a process of its own (casampi's client
is one per process, bound to the process-wide cluster). It starts one
server per node through Slurm, enables casampi, and runs in ``WORKDIR``
(which holds the serial reference, see ``serial_casa_reference.py``) what
``test_casampi_tasks`` runs on one machine: ``partition`` into one sub-MS
per server, ``flagdata``, ``setjy``, ``applycal``, ``split`` and
``tclean(parallel=True)``. It writes the tasks' results and, for every
request casatasks made, its command, sub-MS, server and that server's host.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import casa_magics
from casa_magics import ClusterSession
from casa_magics.cluster.casa_env import prepare_client_process
from casa_magics.cluster.session import set_current_session

sys.path.insert(0, str(Path(__file__).parent))
import casampi_pipeline as pipeline  # noqa: E402

MMS = "nodes.mms"


def main(workdir: str, controller_ip: str, nodes: int, out: str) -> None:
    prepare_client_process(workdir)
    session = ClusterSession.start(
        n=nodes, scheduler="slurm", controller_ip=controller_ip, time_limit="15", timeout=240,
        sbatch_args=[f"--nodes={nodes}", "--ntasks-per-node=1"],
    )
    set_current_session(session)
    try:
        hosts = {info.server: info.host for info in session.servers}
        assert casa_magics.enable_casampi()
        import casatasks
        from casa_magics import MPICommandClient

        os.chdir(workdir)
        client = MPICommandClient()
        before = set(client.get_command_request_list())
        casatasks.partition(vis=pipeline.BASE_MS, outputvis=MMS, createmms=True, separationaxis="scan", numsubms=nodes)
        results = pipeline.calibrate(casatasks, MMS, pipeline.GAIN_TABLE, make_gain_table=False)
        casatasks.split(vis=MMS, outputvis="nodes_split.mms", keepmms=True, **pipeline.SPLIT)
        casatasks.tclean(vis=MMS, imagename="nodes_mfs", parallel=True, **pipeline.MFS)
        requests = [
            {
                "command": r["command"],
                "vis": Path(str((r["parameters"] or {}).get("vis", ""))).name,
                "server": r["server"],
                "host": hosts[r["server"]],
                "successful": r["successful"],
                "error": (r["traceback"] or "").strip().splitlines()[-1:] if not r["successful"] else [],
            }
            for i, r in sorted(client.get_command_request_list().items())
            if i not in before
        ]
        Path(out).write_text(json.dumps({
            "hosts": hosts,
            "requests": requests,
            "flag_summary": pipeline.plain(results["flag_summary"]),
            "setjy": pipeline.plain(results["setjy"]),
        }))
    finally:
        casa_magics.disable_casampi()
        session.stop()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
