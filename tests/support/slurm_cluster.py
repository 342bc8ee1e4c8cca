"""A real one-node Slurm for the tests: munged, slurmctld and slurmd in a fresh directory.

:class:`LocalSlurm` writes its own ``slurm.conf`` (reached through
``SLURM_CONF``), runs ``munged`` as the ``munge`` user on a socket of its own
and both Slurm daemons as root, and waits with a deadline until the node is
idle. :meth:`LocalSlurm.stop` cancels every job, shuts the controller down and
ends each daemon by the PID in its pid file. Nothing is installed and nothing
outside the directory is changed.

The node declares more CPUs than the machine has, and the ``debug``
partition lets up to four jobs share a CPU, so several small jobs fit on two
cores. The ``whole`` partition gives each job the whole node, so a second
job there waits in the queue for resources.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["LocalSlurm", "why_no_slurm", "squeue_ids"]

COMMAND_TIMEOUT = 30  # seconds any Slurm command may take
DAEMONS = ("munged", "slurmctld", "slurmd", "sinfo", "sbatch", "squeue", "scontrol", "scancel", "salloc")
CPUS = 8


def why_no_slurm() -> str | None:
    """Why a local Slurm cannot run here (None when it can)."""
    if os.geteuid() != 0:
        return "a local Slurm needs root (slurmd runs as root)"
    missing = [name for name in DAEMONS if shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin") is None]
    if missing:
        return f"Slurm is not installed ({', '.join(missing)} missing): run `make slurm-packages` as root"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "there is no 'munge' user: run `make slurm-packages` as root"
    if not Path("/etc/munge/munge.key").exists():
        return "there is no /etc/munge/munge.key: run `make slurm-packages` as root"
    return None


def common_settings(base: Path, daemon_files: str = "") -> str:
    """The ``slurm.conf`` lines both test Slurms share (this one and ``multinode_slurm.py``).

    munge authentication through the socket in ``base/munge``, no accounting,
    CPUs as the consumable, fresh ports, and every state, pid and log file
    under ``base``. ``daemon_files``: Slurm's ``%n`` when several slurmd run on
    one machine, so each node's spool, pid and log files are its own.
    """
    spool = f"{base}/spool/{daemon_files}" if daemon_files else f"{base}/spool"
    slurmd = f"slurmd-{daemon_files}" if daemon_files else "slurmd"
    return f"""\
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
AuthInfo=socket={base}/munge/munge.socket
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
EnforcePartLimits=ALL
ReturnToService=2
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
StateSaveLocation={base}/state
SlurmdSpoolDir={spool}
SlurmctldPidFile={base}/slurmctld.pid
SlurmdPidFile={base}/{slurmd}.pid
SlurmctldLogFile={base}/slurmctld.log
SlurmdLogFile={base}/{slurmd}.log
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
KillWait=2
MinJobAge=600
"""


def _config(base: Path, node: str) -> str:
    return f"""\
ClusterName=casatest
SlurmctldHost={node}
{common_settings(base)}NodeName={node} NodeAddr=127.0.0.1 CPUs={CPUS} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
PartitionName=whole Nodes={node} MaxTime=INFINITE State=UP OverSubscribe=EXCLUSIVE
"""


def free_port() -> int:
    """A TCP port free on every interface now."""
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def squeue_ids(env: dict[str, str]) -> list[str]:
    """IDs of the jobs ``squeue`` lists (pending, running or completing)."""
    out = subprocess.run(
        ["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=True
    ).stdout
    return out.split()


class LocalSlurm:
    """A one-node Slurm in a temporary directory, started and stopped by PID.

    Attributes
    ----------
    base : pathlib.Path
        The directory holding the configuration, state, logs and pid files.
    env : dict
        ``os.environ`` plus ``SLURM_CONF``: the environment for Slurm commands.
    """

    def __init__(self) -> None:
        # Readable by all, so the munge user reaches its own socket directory below it.
        self.base = Path(tempfile.mkdtemp(prefix="casa-magics-slurm-"))
        self.base.chmod(0o755)
        self.node = socket.gethostname().split(".")[0]
        self.conf = self.base / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._pid_files: list[Path] = []

    def run(self, *command: str, check: bool = True, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess:
        """Run a Slurm command with this cluster's configuration."""
        return subprocess.run(list(command), env=self.env, capture_output=True, text=True, timeout=timeout, check=check)

    def start(self, timeout: float = 60) -> "LocalSlurm":
        """Start munged, slurmctld and slurmd; return once the node is idle."""
        munge_dir = self.base / "munge"
        munge_dir.mkdir()
        munge_dir.chmod(0o755)  # munged insists that every client can reach its socket
        munge = pwd.getpwnam("munge")
        os.chown(munge_dir, munge.pw_uid, munge.pw_gid)
        for name in ("state", "spool"):
            (self.base / name).mkdir(mode=0o700)
        self.conf.write_text(_config(self.base, self.node))
        try:
            self._start_daemons(munge_dir, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_daemons(self, munge_dir: Path, timeout: float) -> None:
        self._daemon(
            munge_dir / "munged.pid",
            [
                "runuser", "-u", "munge", "--", "munged",
                f"--socket={munge_dir}/munge.socket",
                f"--pid-file={munge_dir}/munged.pid",
                f"--log-file={munge_dir}/munged.log",
                f"--seed-file={munge_dir}/munged.seed",
            ],
        )
        self._daemon(self.base / "slurmctld.pid", ["slurmctld"])
        self._daemon(self.base / "slurmd.pid", ["slurmd"])
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.run("sinfo", "-h", "-o", "%T", check=False).stdout.strip()
            if state.split() and all(word == "idle" for word in state.split()):
                return
            time.sleep(0.2)
        raise RuntimeError(f"the local Slurm node is not idle after {timeout:g} s (sinfo says {state!r}); logs in {self.base}")

    def _daemon(self, pid_file: Path, command: list[str], timeout: float = 20) -> None:
        """Run a daemon that forks and writes its pid file; wait for the file."""
        self._pid_files.append(pid_file)
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{command[0]} failed ({done.returncode}): {done.stderr.strip()} (logs in {self.base})")
        deadline = time.monotonic() + timeout
        while not (pid_file.exists() and pid_file.read_text().strip()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{pid_file.name} was not written within {timeout:g} s (logs in {self.base})")
            time.sleep(0.05)

    def jobs(self) -> list[str]:
        """IDs of the jobs in the queue."""
        return squeue_ids(self.env)

    def stop(self, timeout: float = 30) -> None:
        """Cancel every job, shut Slurm down and end each daemon by its PID."""
        self.run("scancel", "--user=root", check=False)
        self.run("scontrol", "shutdown", check=False)
        for pid_file in reversed(self._pid_files):
            try:
                pid = int(pid_file.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            # scontrol shutdown asked the Slurm daemons to go; munged is told by SIGTERM.
            _end(pid, timeout, asked=pid_file.name != "munged.pid")
        shutil.rmtree(self.base, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        return False


def _end(pid: int, timeout: float, asked: bool) -> None:
    """End ``pid``: wait if it was ``asked`` to exit, then SIGTERM, then SIGKILL, each with a deadline."""
    for sig in ((None,) if asked else ()) + (signal.SIGTERM, signal.SIGKILL):
        if sig is not None and _alive(pid):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout / 3
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _alive(pid):
            return
