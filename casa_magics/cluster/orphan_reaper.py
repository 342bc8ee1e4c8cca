"""Ending an embedded cluster whose client died: a watcher that outlives the client by a few seconds.

``ClusterSession.start()`` (without ``keep=True``) starts one watcher per
cluster, before the controller: ``python -I orphan_reaper.py --cluster-id ID``
in a session of its own (so a signal to the client's process group, such as
a Jupyter kernel restart, does not reach it). Its standard input is the read
end of a pipe whose write end only the client holds: the write end is
close-on-exec (so ``mpiexec``, the controller and every other program the
client starts never hold it) and is closed in children the client forks
without exec. When the client ends in any way (exit, uncaught exception,
SIGTERM, SIGKILL, a kernel restart), the pipe reaches end-of-file and the
watcher ends the cluster:

* every process of this user whose environment has ``IPP_CLUSTER_ID=ID``
  (ipyparallel sets it for the controller and each engine launcher, and the
  MPI launcher's ranks, keepers and engines inherit it), replacements
  included;
* every process the client named (``watch PID`` lines: the controller, the
  ``mpiexec`` launchers, the engines) and their descendants;
* the Slurm jobs the client named (``scancel JOB`` lines), with ``scancel``.

They get SIGTERM, and SIGKILL after :data:`GRACE` seconds; then the watcher
exits. A clean :meth:`ClusterSession.stop` sends ``release`` first: the
watcher then exits without ending anything.

The client starts this file as a script (``python -I``) rather than as
``python -m casa_magics.cluster.orphan_reaper`` (which works too), so the watcher does
not import the whole package (ipyparallel, IPython): it imports only the
standard library and psutil.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

__all__ = ["OrphanReaper", "reap", "main", "GRACE"]

#: Seconds between SIGTERM and SIGKILL for the processes of a dead client's cluster.
GRACE = 3.0
#: Seconds ``scancel`` may take.
SCANCEL_TIMEOUT = 30.0
#: Environment variable ipyparallel sets in the processes it launches for a cluster.
CLUSTER_VARIABLE = "IPP_CLUSTER_ID"

_write_ends: set[int] = set()  # the client's ends of its watchers' pipes, closed in forked children
_fork_hook = threading.Lock()
_fork_hook_registered = False


def _close_in_child() -> None:  # pragma: no cover - runs in a forked child
    """A child forked without exec must not keep a watcher's pipe open, or the watcher never sees EOF."""
    for fd in list(_write_ends):
        try:
            os.close(fd)
        except OSError:
            pass
    _write_ends.clear()


class OrphanReaper:
    """The client's side: starts the watcher and tells it what to end if the client dies.

    Parameters
    ----------
    cluster_id : str, optional
        The ipyparallel cluster ID whose processes (found by their
        ``IPP_CLUSTER_ID``) the watcher ends.

    Attributes
    ----------
    process : subprocess.Popen
        The watcher.
    """

    def __init__(self, cluster_id: str | None = None) -> None:
        global _fork_hook_registered
        command = [sys.executable, "-I", os.path.abspath(__file__)]
        if cluster_id:
            command += ["--cluster-id", cluster_id]
        read_end, write_end = os.pipe()  # both close-on-exec (PEP 446)
        try:
            self.process = subprocess.Popen(
                command,
                stdin=read_end,  # dup2'd to the watcher's fd 0; every other fd is closed (close_fds)
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # a signal to the client's process group does not reach it
            )
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        self._fd: int | None = write_end
        self._lock = threading.Lock()
        with _fork_hook:
            _write_ends.add(write_end)
            if not _fork_hook_registered:
                os.register_at_fork(after_in_child=_close_in_child)
                _fork_hook_registered = True

    def _send(self, line: str) -> None:
        with self._lock:
            if self._fd is None:
                return
            try:
                os.write(self._fd, (line + "\n").encode())
            except OSError:  # the watcher is gone: nothing will be ended for us
                pass

    def watch(self, *pids: int | None) -> None:
        """End these processes and their descendants if the client dies (None is skipped)."""
        for pid in pids:
            if pid is not None:
                self._send(f"watch {int(pid)}")

    def watch_cluster(self, cluster: Any, servers: Any = ()) -> None:
        """Name a started cluster's controller, engine launchers and this host's engines to the watcher.

        They carry the cluster's ``IPP_CLUSTER_ID`` and would be found by it;
        naming them also covers a process whose environment cannot be read.

        Parameters
        ----------
        cluster : ipyparallel.Cluster
        servers : iterable of ServerInfo, optional
        """
        launchers = [getattr(cluster, "controller", None), *getattr(cluster, "engines", {}).values()]
        self.watch(*(getattr(getattr(launcher, "process", None), "pid", None) for launcher in launchers))
        self.watch(*(info.pid for info in servers if info.on_this_host))

    def scancel(self, job_id: str | None) -> None:
        """``scancel`` this Slurm job if the client dies."""
        if job_id:
            self._send(f"scancel {job_id}")

    def release(self, timeout: float = 5.0) -> None:
        """The cluster was stopped cleanly: the watcher exits without ending anything. Safe to repeat."""
        self._send("release")
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is None:
            return
        with _fork_hook:
            _write_ends.discard(fd)
        os.close(fd)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:  # it will exit; do not hold up the client's stop
            pass


# ---------------------------------------------------------------- the watcher
def _cluster_processes(cluster_id: str) -> list:
    """This user's processes whose environment says they belong to the cluster ``cluster_id``."""
    import psutil

    me, uid = os.getpid(), os.getuid()
    wanted = f"{CLUSTER_VARIABLE}={cluster_id}".encode()
    found = []
    for process in psutil.process_iter(["uids"]):
        try:
            uids = process.info["uids"]
            if process.pid == me or uids is None or uids.real != uid:
                continue
            with open(f"/proc/{process.pid}/environ", "rb") as f:
                if wanted in f.read().split(b"\0"):
                    found.append(process)
        except (OSError, psutil.Error):  # gone, or not ours to read
            continue
    return found


def _with_descendants(processes: list) -> list:
    import psutil

    everything = {}
    for process in processes:
        try:
            if not process.is_running():
                continue
            everything[process.pid] = process
            for child in process.children(recursive=True):
                everything.setdefault(child.pid, child)
        except psutil.Error:
            continue
    everything.pop(os.getpid(), None)
    return list(everything.values())


def _signal_all(processes: list, sig: int) -> None:
    import psutil

    for process in processes:
        try:
            process.send_signal(sig)  # psutil checks the PID still names the same process
        except psutil.Error:
            pass


def reap(cluster_id: str | None, watched: list, jobs: list[str], grace: float = GRACE) -> None:
    """End a dead client's cluster: its processes (SIGTERM, then SIGKILL after ``grace`` s) and Slurm jobs.

    Parameters
    ----------
    cluster_id : str or None
        Every process of this user with ``IPP_CLUSTER_ID=cluster_id`` is ended.
    watched : list of psutil.Process
        Processes the client named; they and their descendants are ended.
    jobs : list of str
        Slurm job IDs to ``scancel`` (skipped where there is no ``scancel``).
    grace : float
        Seconds between SIGTERM and SIGKILL.
    """
    import psutil

    def targets() -> list:
        found = list(watched) + (_cluster_processes(cluster_id) if cluster_id else [])
        return _with_descendants(found)

    cancels = [
        subprocess.Popen(["scancel", job], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for job in jobs
        if _which("scancel")
    ]
    first = targets()
    _signal_all(first, signal.SIGTERM)
    _, alive = psutil.wait_procs(first, timeout=grace)
    # Whatever is left, and whatever started meanwhile (a keeper's engine, a replacement), is killed.
    for _ in range(3):
        left = {p.pid: p for p in alive}
        left.update((p.pid, p) for p in targets())
        if not left:
            break
        _signal_all(list(left.values()), signal.SIGKILL)
        _, alive = psutil.wait_procs(list(left.values()), timeout=2)
    deadline = time.monotonic() + SCANCEL_TIMEOUT
    for cancel in cancels:
        try:
            cancel.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            cancel.kill()


def _which(name: str) -> bool:
    import shutil

    return shutil.which(name) is not None


def main(argv: list[str] | None = None) -> int:
    """Watch standard input (the client's pipe) until ``release`` or end-of-file; on EOF, :func:`reap`.

    Parameters
    ----------
    argv : list of str, optional
        ``['--cluster-id', ID]`` or nothing (default ``sys.argv[1:]``).
    """
    import psutil

    argv = sys.argv[1:] if argv is None else argv
    cluster_id = argv[argv.index("--cluster-id") + 1] if "--cluster-id" in argv else None
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # only the pipe says when the client is gone
    watched: list = []
    jobs: list[str] = []
    stream = sys.stdin.buffer
    while True:
        line = stream.readline()
        if not line:
            break  # the client is gone
        word, _, rest = line.decode(errors="replace").strip().partition(" ")
        if word == "release":
            return 0
        if word == "watch":
            try:
                watched.append(psutil.Process(int(rest)))  # now, so a later reuse of the PID is not mistaken for it
            except (ValueError, psutil.Error):
                pass
        elif word == "scancel" and rest:
            jobs.append(rest)
    reap(cluster_id, watched, jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
