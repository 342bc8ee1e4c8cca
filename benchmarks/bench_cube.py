"""A cube ``tclean`` run serially vs as a gang of casa_magics servers, in one run.

Run by ``make bench`` and ``make bench-casa`` (or ``python benchmarks/bench_cube.py``;
``--json results.json`` also writes the results). It takes a few minutes and
about 2 GB of disk in a temporary directory, removed afterwards (``--keep``
keeps it, with each side's logs and the servers' CASA logs).

Data: CASA's NGC5921 demo (``casadata``'s ``demo/NGC5921.fits``), imported
once. The task: ``tclean`` of field 2 (N5921_2), ``specmode='cube'``, all 63
channels, ``datacolumn='data'``, imsize 512, cell 15arcsec, niter 1000 (the
size and iterations: ``--imsize``, ``--niter``).

Sides, each a separate Python process; every process images with
``OMP_NUM_THREADS=1``, as the servers do (see ``casa_magics.cluster.casa_env``):

* serial: ``casatasks.tclean`` in a process where casampi is not enabled;
* gang: an embedded cluster of ``--servers`` (default 3) servers, started and
  warmed up (casatasks imported, one small cube ``tclean`` run as a gang)
  before the clock runs, then the same ``tclean`` through
  ``CommandClient.push_gang_request``: server 1 is CASA's MPI master, the
  others its workers;
* gang, spinning: the same with Open MPI's busy polling back
  (``OMPI_MCA_mpi_yield_when_idle=0``,
  ``OMPI_MCA_threads_pthreads_yield_strategy=sched_yield`` in the cluster's
  environment, which wins over casa_magics' defaults), to show what
  ``casa_magics.cluster.launcher.open_mpi_environment`` saves.

``--gang NAME=VALUE,...`` adds a gang side with more environment for its
cluster (e.g. ``OMPI_MCA_threads_pthreads_nanosleep_time=1000000``), ``-n``
changes the number of servers.

Each side's ``.image`` is checked to be identical to the serial one
(``np.array_equal``, on server 1). The first table gives, per side, the wall
time, the speed-up, each process's CPU seconds (the serial process's own; the
servers' from ``psutil`` before and after) and the CPU seconds the rest of
the machine used meanwhile (``/proc/stat``: other users' work, which a gang on
every core feels more than a serial run does). The second splits ``tclean``
into the steps of casatasks' ``PySynthesisImager`` (``makePSF``,
``runMajorCycle``, ``runMinorCycle``, ``hasConverged``, ``restoreImages``,
...), with the wall and CPU time of the serial process and of each gang's
master: a step whose master CPU is close to its wall runs on the master
alone; in a step the workers do, the master's CPU is what it spends waiting
for them.

All sides run ``--rounds`` times (default 2), alternating, and each side's
fastest round counts: the machine may be shared.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench_casa_tasks import _run, _site_config  # noqa: E402  (beside this script)
from markdown_table import table  # noqa: E402

TARGET_FIELD = "2"  # N5921_2
SPINNING = {"OMPI_MCA_mpi_yield_when_idle": "0", "OMPI_MCA_threads_pthreads_yield_strategy": "sched_yield"}
GOAL = 1.5


def tclean_args(imsize: int, niter: int) -> dict:
    return dict(field=TARGET_FIELD, specmode="cube", imsize=imsize, cell="15arcsec", niter=niter,
                gridder="standard", deconvolver="hogbom", weighting="natural", datacolumn="data")


#: The untimed warm-up: a few channels, small, no deconvolution.
WARM_UP = dict(field=TARGET_FIELD, specmode="cube", imsize=64, cell="15arcsec", niter=0, nchan=4,
               gridder="standard", datacolumn="data")


# --------------------------------------------------------------------------------------
# Workers: each runs in its own process, in its own directory, and writes a JSON file.
# --------------------------------------------------------------------------------------


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _machine_busy_seconds() -> float:
    """CPU seconds all processes on this machine have used so far (all cores; ``/proc/stat``)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # up to steal; guest is inside user


def prepare(data: Path) -> dict:
    """Import NGC5921 into ``data/ngc5921.ms``."""
    import casadata
    import casatasks

    start = time.perf_counter()
    casatasks.importuvfits(fitsfile=os.path.join(casadata.datapath, "demo", "NGC5921.fits"),
                           vis=str(data / "ngc5921.ms"))
    return {"seconds": time.perf_counter() - start}


def timed_tclean(**arguments) -> dict:
    """``casatasks.tclean(**arguments)`` with its wall and CPU time, in total and per imager step.

    The steps are the methods of casatasks' ``PySynthesisImager`` that
    ``tclean`` calls (``makePSF``, ``runMajorCycle``, ``runMinorCycle``,
    ``restoreImages``, ...; a method called by another counts in its caller);
    the rest of the task is "other". CPU is this process's, all threads.
    Runs in the serial process and on the gang's master alike.
    """
    import casatasks
    from casatasks.private.imagerhelpers.imager_base import PySynthesisImager

    steps: dict[str, list] = {}  # name: [calls, wall s, CPU s], in the order first called
    depth = [0]

    def timed(name, method):
        def step(*args, **kwargs):
            if depth[0]:
                return method(*args, **kwargs)
            depth[0] += 1
            cpu, start = time.process_time(), time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                depth[0] -= 1
                record = steps.setdefault(name, [0, 0.0, 0.0])
                record[0] += 1
                record[1] += time.perf_counter() - start
                record[2] += time.process_time() - cpu
        return step

    originals = {name: value for name, value in vars(PySynthesisImager).items()
                 if callable(value) and not name.startswith("__")}
    for name, method in originals.items():
        setattr(PySynthesisImager, name, timed(name, method))
    cpu, start = time.process_time(), time.perf_counter()
    try:
        casatasks.tclean(**arguments)
    finally:
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        for name, method in originals.items():
            setattr(PySynthesisImager, name, method)
    steps["other"] = [1, wall - sum(r[1] for r in steps.values()), cpu - sum(r[2] for r in steps.values())]
    return {"task_s": wall, "task_cpu_s": cpu, "steps": steps}


def run_serial(data: Path, imsize: int, niter: int) -> dict:
    """The cube ``tclean`` in this process, casatasks alone (no casampi)."""
    import casatasks

    vis = str(data / "ngc5921.ms")
    casatasks.tclean(vis=vis, imagename=str(Path("warm").resolve()), **WARM_UP)
    os.sync()
    busy, start = _machine_busy_seconds(), time.perf_counter()
    record = timed_tclean(vis=vis, imagename=str(Path("image").resolve()), **tclean_args(imsize, niter))
    wall, busy = time.perf_counter() - start, _machine_busy_seconds() - busy
    return {**record, "wall_s": wall, "cpu_s": record["task_cpu_s"], "others_cpu_s": busy - record["task_cpu_s"],
            "image": str(Path("image.image").resolve())}


_COMPARE = """\
import numpy as np, casatools
def _pixels(name):
    ia = casatools.image()
    ia.open(name)
    try:
        return ia.getchunk()
    finally:
        ia.close()
_a, _b = _pixels(a), _pixels(b)
compared = {'identical': bool(np.array_equal(_a, _b)), 'shape': list(_b.shape)}
"""


def run_gang(data: Path, servers: int, imsize: int, niter: int, serial_image: str) -> dict:
    """The cube ``tclean`` as a gang of ``servers`` casa_magics servers."""
    import psutil

    import casa_magics

    started = time.perf_counter()
    session = casa_magics.ClusterSession.start(n=servers)
    client = casa_magics.CommandClient(session)
    try:
        client.follow_cwd = True
        ids = list(range(1, servers + 1))
        here = os.path.dirname(os.path.abspath(__file__))
        responses = client.push_command_request(
            f"import sys; sys.path.insert(0, {here!r}); import bench_cube, casatasks", True, ids)
        assert all(r["successful"] for r in responses), responses[0]["traceback"]
        vis = str(data / "ngc5921.ms")
        command = "__import__('bench_cube').timed_tclean(vis=vis, imagename=imagename, **arguments)"
        warm = client.push_gang_request(command, True, {"vis": vis, "imagename": str(Path("warm").resolve()),
                                                        "arguments": WARM_UP})
        assert all(r["successful"] for r in warm), warm[0]["traceback"]
        start_s = time.perf_counter() - started
        processes = {server: psutil.Process(state["pid"]) for server, state in client.get_server_status().items()}

        os.sync()
        cpu_before = {server: sum(p.cpu_times()[:2]) for server, p in processes.items()}
        busy, mine = _machine_busy_seconds(), _cpu_seconds()
        begun = time.perf_counter()
        responses = client.push_gang_request(command, True, {
            "vis": vis, "imagename": str(Path("image").resolve()), "arguments": tclean_args(imsize, niter)})
        wall = time.perf_counter() - begun
        cpu = {server: sum(p.cpu_times()[:2]) - cpu_before[server] for server, p in processes.items()}
        busy, mine = _machine_busy_seconds() - busy, _cpu_seconds() - mine
        failed = [r for r in responses if not r["successful"]]
        assert not failed, failed[0]["traceback"]
        master, workers = responses[0], responses[1:]

        done = client.push_command_request(_COMPARE, True, [1], {"a": serial_image,
                                                                 "b": str(Path("image.image").resolve())})[0]
        assert done["successful"], done["traceback"]
        compared = client.push_command_request("compared", True, [1])[0]["ret"]
        return {**master["ret"], "wall_s": wall, "cluster_start_s": start_s, "client_cpu_s": mine,
                "others_cpu_s": busy - mine - sum(cpu.values()),
                "cpu_s": {str(server): value for server, value in cpu.items()},
                "workers": {str(r["server"]): r["ret"] for r in workers}, **compared}
    finally:
        session.stop()


def _worker_main(args: argparse.Namespace) -> int:
    data, result = Path(args.data).resolve(), Path(args.result).resolve()
    if args.worker == "prepare":
        out = prepare(data)
    elif args.worker == "serial":
        out = run_serial(data, args.imsize, args.niter)
    else:
        out = run_gang(data, args.servers, args.imsize, args.niter, args.serial_image)
    result.write_text(json.dumps(out))
    return 0


# --------------------------------------------------------------------------------------
# The driver: runs the workers one after the other and prints the tables.
# --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--servers", type=int, default=3, help="servers in the gang, default 3 (2 workers)")
    parser.add_argument("--imsize", type=int, default=512, help="image size in pixels, default 512")
    parser.add_argument("--niter", type=int, default=1000, help="clean iterations, default 1000")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of all sides, alternating; best counts")
    parser.add_argument("--no-spinning", action="store_true", help="leave out the side with Open MPI's busy polling")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment of every side (e.g. OMPI_MCA_threads_pthreads_nanosleep_time=...)")
    parser.add_argument("--gang", action="append", default=[], metavar="NAME=VALUE[,NAME=VALUE...]",
                        help="one more gang side, with this environment for its cluster (may be repeated)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed for each side, default 900")
    parser.add_argument("--keep", action="store_true", help="keep the working directory (logs, images)")
    parser.add_argument("--worker", choices=("prepare", "serial", "gang"), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--serial-image", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        sys.argv = sys.argv[:1]  # casaconfig parses sys.argv when casatools is imported
        return _worker_main(args)

    python = sys.executable
    workdir = Path(tempfile.mkdtemp(prefix="bench-cube-"))
    data = workdir / "data"
    data.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("CASA_MAGICS_", "CASASITECONFIG"))}
    env.update({
        "PATH": str(Path(python).parent) + os.pathsep + os.environ.get("PATH", ""),  # the venv's mpiexec
        "OMP_NUM_THREADS": "1",  # as on the servers
        "MPLBACKEND": "Agg",
        "CASASITECONFIG": str(_site_config(workdir / "casasiteconfig.py", python)),
    })
    env.update(dict(item.split("=", 1) for item in args.env))
    sides = {"serial": {}, "gang": {}}
    if not args.no_spinning:
        sides["gang, spinning"] = SPINNING
    for spec in args.gang:
        sides[f"gang, {spec}"] = dict(item.split("=", 1) for item in spec.split(","))
    common = ["--imsize", str(args.imsize), "--niter", str(args.niter), "--servers", str(args.servers)]
    results: dict = {side: [] for side in sides}
    ok = False
    try:
        started = time.perf_counter()
        _run([python, os.path.abspath(__file__), "--worker", "prepare", "--data", str(data),
              "--result", str(workdir / "prepare.json")], data, env, args.timeout, "prepare")
        serial_image = ""
        for round_ in range(args.rounds):
            for side, extra_env in sides.items():
                where = workdir / f"side{list(sides).index(side)}-round{round_}"
                where.mkdir()
                out = where / "result.json"
                command = [python, os.path.abspath(__file__), "--worker", "serial" if side == "serial" else "gang",
                           "--data", str(data), "--result", str(out), "--serial-image", serial_image, *common]
                side_env = {**env, **extra_env, "CASA_MAGICS_RUN_DIR": str(where / "run")}
                _run(command, where, side_env, args.timeout, where.name)
                record = json.loads(out.read_text())
                results[side].append(record)
                if side == "serial" and not serial_image:
                    serial_image = record["image"]  # the one all gangs are compared with
                elif not args.keep:
                    for image in where.glob("image.*"):
                        shutil.rmtree(image)
        results["whole_run_s"] = time.perf_counter() - started
        ok = True
    finally:
        if ok and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"working directory kept: {workdir}", file=sys.stderr)

    best = {side: min(results[side], key=lambda r: r["wall_s"]) for side in sides}
    serial = best["serial"]
    load = os.getloadavg()
    results.update({
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
        "cores": os.cpu_count(), "load_average": load, "servers": args.servers, "tclean": tclean_args(args.imsize, args.niter),
        "extra_env": args.env, "best": best,
        "speedup": {side: serial["wall_s"] / best[side]["wall_s"] for side in sides},
    })

    print(f"cube tclean benchmark, {datetime.date.today()}, {platform.node()}: {os.cpu_count()} cores, "
          f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1/5/15 min), Python {platform.python_version()}, "
          f"OMP_NUM_THREADS=1{''.join(' ' + e for e in args.env)}")
    print(f"NGC5921 field {TARGET_FIELD}, specmode='cube', all channels, imsize {args.imsize}, cell 15arcsec, "
          f"niter {args.niter}, datacolumn='data'; gang: {args.servers} servers (server 1 the MPI master); "
          f"best of {args.rounds} rounds; 'other work': CPU s used on this machine during the run by\n"
          "anything else (other users, the client)\n")
    rows = [("side", "wall s", "speed-up", "CPU s: serial / master", "CPU s: workers", "CPU s: other work",
             "image identical", "rounds s")]
    for side in sides:
        record = best[side]
        rounds = " / ".join(f"{r['wall_s']:.1f}" for r in results[side])
        if side == "serial":
            rows.append((side, f"{record['wall_s']:.2f}", "1.00x", f"{record['cpu_s']:.1f}", "-",
                         f"{record['others_cpu_s']:.1f}", "-", rounds))
            continue
        workers = " / ".join(f"{v:.1f}" for k, v in record["cpu_s"].items() if k != "1")
        identical = all(r["identical"] for r in results[side])
        rows.append((side, f"{record['wall_s']:.2f}", f"{results['speedup'][side]:.2f}x",
                     f"{record['cpu_s']['1']:.1f}", workers, f"{record['others_cpu_s']:.1f}",
                     "yes" if identical else "NO", rounds))
    print(table(rows))

    # Where the time goes: tclean's imager steps, serially and on each gang's master.
    gangs = [side for side in sides if side != "serial"]
    print("\nwhere the time goes: tclean's imager steps, wall s (CPU s of the serial process / the gang's master):")
    rows = [("step", "calls", "serial", *gangs)]
    names = list(dict.fromkeys(name for side in sides for name in best[side]["steps"]))
    names.remove("other")
    small = [name for name in names if all(best[side]["steps"].get(name, (0, 0.0))[1] < 0.01 for side in sides)]
    for name in [*(n for n in names if n not in small), "other"]:
        cells = []
        for side in sides:
            steps = best[side]["steps"]
            parts = [steps.get(n, (0, 0.0, 0.0)) for n in ([name, *small] if name == "other" else [name])]
            cells.append(f"{sum(p[1] for p in parts):.2f} ({sum(p[2] for p in parts):.2f})")
        rows.append((name, str(best["serial"]["steps"].get(name, (0,))[0]), *cells))
    if small:
        rows[-1] = ("other *", *rows[-1][1:])
    rows.append(("tclean in all", "", *(f"{best[side]['task_s']:.2f} ({best[side]['task_cpu_s']:.2f})" for side in sides)))
    print(table(rows))
    if small:
        print("* the rest of tclean, with the steps of under 0.01 s: " + ", ".join(small))
    for side in gangs:
        own = ", ".join(f"server {k} waited {v['waited']:.2f} s, worked {v['worked']:.2f} s"
                        for k, v in best[side]["workers"].items())
        print(f"{side}: workers {own}; cluster start and warm-up {best[side]['cluster_start_s']:.1f} s (not timed)")
    print(f"\ngoal >= {GOAL}x with {args.servers - 1} workers: "
          + ("met" if results["speedup"]["gang"] >= GOAL else "missed") + f"; whole run {results['whole_run_s']:.0f} s")
    problems = [side for side in sides if side != "serial" and not all(r["identical"] for r in results[side])]
    if problems:
        print("WARNING: images differ from the serial one: " + ", ".join(problems))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
