"""A real three-node Slurm on this one machine, each node a network namespace.

:class:`MultiNodeSlurm` makes "several machines" out of one so that tests can
put servers on different hosts for real:

- a Linux bridge on the host with an address on a private /24 that nothing
  else on the machine uses (``10.253.X.1``), and for each node a network
  namespace joined to the bridge by a veth pair (``eth0`` inside, address
  ``10.253.X.1K``). The nodes get no default route, and ``ip_forward`` is not
  touched: traffic goes only between the host and the nodes.
- ``slurmctld`` on the host, and one ``slurmd`` per node, entered with
  ``nsenter --net`` and ``unshare --uts --mount --propagation private``, so
  that the node has its own host name (``nodeK``) and its own ``/etc/hosts``
  (bind-mounted inside its mount namespace only; it maps the host's name to
  the bridge address, since inside a node that name would otherwise resolve
  to the node's own loopback). Job steps inherit those namespaces.
  (``ip netns exec`` is not used: it remounts ``/sys`` and slurmd then finds
  no ``/sys/fs/cgroup``.)
- a ``munged`` of its own, its own ports and ``ClusterName``, so it runs
  beside the one-node Slurm of ``tests/support/slurm_cluster.py``.

The nodes share the host's PIDs, files, ``/tmp`` and ``/dev/shm``: only the
network, the host name and ``/etc/hosts`` differ. Tests must treat another
host name as another machine.

Every daemon is started and stopped by the PID in its pid file; whatever is
left in a node's namespace is ended by PID (``ip netns pids``) before the
namespace is deleted. :meth:`MultiNodeSlurm.stop` removes every namespace,
device and file that :meth:`MultiNodeSlurm.start` made, also when the start
failed half-way. :func:`why_no_multinode` says why it cannot run here.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .slurm_cluster import COMMAND_TIMEOUT, _alive, _end, common_settings, squeue_ids, why_no_slurm

__all__ = ["NODES", "MultiNodeSlurm", "why_no_multinode"]

NODES = 3
CPUS_PER_NODE = 4
#: The commands used besides Slurm's and munge's, and the Debian package of each.
TOOLS = {"ip": "iproute2", "nsenter": "util-linux", "unshare": "util-linux", "mount": "mount",
         "hostname": "hostname", "runuser": "util-linux"}
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
#: Candidate /24s, the first one with no address or route on this machine is used.
_instances = itertools.count()
SUBNETS = [ipaddress.ip_network(f"10.253.{third}.0/24") for third in range(32)]


def _run(command: list[str], timeout: float = COMMAND_TIMEOUT, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    if check and done.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return done


@functools.cache
def why_no_multinode() -> str | None:
    """Why the namespaced multi-node Slurm cannot run here (None when it can; asked once per process)."""
    reason = why_no_slurm()
    if reason is not None:
        return reason
    missing = [name for name in TOOLS if shutil.which(name, path=SYSTEM_PATH) is None]
    if missing:
        packages = sorted({TOOLS[name] for name in missing})
        return (f"{', '.join(missing)} not found (from Debian's {', '.join(packages)}): "
                "run `make slurm-packages` as root")
    probe = subprocess.run(["unshare", "--net", "--uts", "--mount", "true"], capture_output=True, text=True,
                           timeout=COMMAND_TIMEOUT, check=False)
    if probe.returncode != 0:
        return f"cannot make network, UTS and mount namespaces here: {probe.stderr.strip()}"
    if not Path("/etc/hosts").is_file():
        return "/etc/hosts is not a regular file to bind-mount the nodes' own hosts file over"
    if _free_subnet() is None:
        return f"every candidate private /24 ({SUBNETS[0]} ... {SUBNETS[-1]}) is already in use on this machine"
    return None


def _subnets_in_use() -> list[ipaddress.IPv4Network]:
    used = []
    for command in (["ip", "-4", "-o", "addr", "show"], ["ip", "-4", "route", "show", "table", "all"]):
        for word in _run(command, check=False).stdout.split():
            try:
                used.append(ipaddress.ip_network(word, strict=False))
            except ValueError:
                continue
    return [net for net in used if net.version == 4 and not net.is_loopback and net.prefixlen > 0]


def _free_subnet() -> ipaddress.IPv4Network | None:
    used = _subnets_in_use()
    return next((net for net in SUBNETS if not any(net.overlaps(other) for other in used)), None)


class MultiNodeSlurm:
    """Three Slurm nodes in network namespaces, a controller on the host; started and stopped by PID.

    Attributes
    ----------
    base : pathlib.Path
        The directory holding configuration, state, logs, pid files and the nodes' hosts file.
    env : dict
        ``os.environ`` plus ``SLURM_CONF``: the environment for Slurm commands run on the host.
    bridge_ip : str
        The host's address on the nodes' network: where the nodes reach the controller.
    nodes : dict
        Node name (``node1`` ...) -> its address.
    """

    def __init__(self, nodes: int = NODES, cpus_per_node: int = CPUS_PER_NODE) -> None:
        self.cpus_per_node = cpus_per_node
        # Readable by all, so the munge user reaches its socket directory below it.
        self.base = Path(tempfile.mkdtemp(prefix="casa-magics-multinode-"))
        self.base.chmod(0o755)
        self.conf = self.base / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.host = socket.gethostname().split(".")[0]
        self.cluster_name = "casamultinode"
        # Short names (an interface name has at most 15 characters), unique per process and instance.
        self.tag = f"{os.getpid() % 10000:04d}{next(_instances) % 10}"
        self.bridge = f"cmbr{self.tag}"
        self.node_names = [f"node{k}" for k in range(1, nodes + 1)]
        self.namespaces = {name: f"casa-magics-{self.tag}-{name}" for name in self.node_names}
        self.host_veths = {name: f"cmv{self.tag}n{k}" for k, name in enumerate(self.node_names, 1)}
        self.subnet: ipaddress.IPv4Network | None = None
        self.bridge_ip = ""
        self.nodes: dict[str, str] = {}
        self._pid_files: list[Path] = []
        self._made_bridge = False
        self._made_namespaces: list[str] = []
        self.started_in = self.stopped_in = None

    # ------------------------------------------------------------ commands
    def run(self, *command: str, check: bool = True, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess:
        """Run a Slurm command on the host with this cluster's configuration."""
        return subprocess.run(list(command), env=self.env, capture_output=True, text=True, timeout=timeout, check=check)

    def jobs(self) -> list[str]:
        """IDs of the jobs in this cluster's queue."""
        return squeue_ids(self.env)

    def namespace_pids(self, node: str) -> list[int]:
        """PIDs of every process inside ``node``'s network namespace (its slurmd among them)."""
        out = _run(["ip", "netns", "pids", self.namespaces[node]], check=False).stdout
        return [int(word) for word in out.split() if word.isdigit()]

    def slurmd_pid(self, node: str) -> int | None:
        """The PID of ``node``'s slurmd, from its pid file."""
        try:
            return int((self.base / f"slurmd-{node}.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    # ------------------------------------------------------------ start
    def start(self, timeout: float = 60) -> MultiNodeSlurm:
        """Make the network, start munged, slurmctld and every slurmd; return once every node is idle."""
        began = time.monotonic()
        try:
            self._make_network()
            self._write_files()
            self._start_daemons(timeout)
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - began
        return self

    def _make_network(self) -> None:
        self.subnet = _free_subnet()
        if self.subnet is None:
            raise RuntimeError("no free private /24 for the nodes' network")
        hosts = list(self.subnet.hosts())
        self.bridge_ip = str(hosts[0])
        self.nodes = {name: str(hosts[10 + k]) for k, name in enumerate(self.node_names)}
        prefix = self.subnet.prefixlen
        _run(["ip", "link", "add", self.bridge, "type", "bridge"])
        self._made_bridge = True
        _run(["ip", "addr", "add", f"{self.bridge_ip}/{prefix}", "dev", self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])
        for name in self.node_names:
            namespace, outside = self.namespaces[name], self.host_veths[name]
            _run(["ip", "netns", "add", namespace])
            self._made_namespaces.append(namespace)
            inside = f"cmi{self.tag}{name[-1]}"
            _run(["ip", "link", "add", outside, "type", "veth", "peer", "name", inside])
            _run(["ip", "link", "set", inside, "netns", namespace])
            _run(["ip", "link", "set", outside, "master", self.bridge, "up"])
            in_ns = ["ip", "-n", namespace]
            _run([*in_ns, "link", "set", inside, "name", "eth0"])
            _run([*in_ns, "addr", "add", f"{self.nodes[name]}/{prefix}", "dev", "eth0"])
            _run([*in_ns, "link", "set", "eth0", "up"])
            _run([*in_ns, "link", "set", "lo", "up"])
            # No default route on purpose: the nodes reach the host's bridge address and each other only.

    def _write_files(self) -> None:
        for name in ("state", "spool"):
            (self.base / name).mkdir(mode=0o700)
        munge_dir = self.base / "munge"
        munge_dir.mkdir()
        munge_dir.chmod(0o755)  # munged insists that every client can reach its socket
        munge = pwd.getpwnam("munge")
        os.chown(munge_dir, munge.pw_uid, munge.pw_gid)
        lines = ["127.0.0.1 localhost", f"{self.bridge_ip} {self.host}"]
        lines += [f"{address} {name}" for name, address in self.nodes.items()]
        (self.base / "hosts").write_text("\n".join(lines) + "\n")
        self.conf.write_text(self._config())

    def _config(self) -> str:
        base = self.base
        node_lines = "\n".join(
            f"NodeName={name} NodeHostname={name} NodeAddr={address} CPUs={self.cpus_per_node} State=UNKNOWN"
            for name, address in self.nodes.items()
        )
        return f"""\
# The namespaced three-node Slurm of tests/support/multinode_slurm.py.
ClusterName={self.cluster_name}
SlurmctldHost={self.host}({self.bridge_ip})
{common_settings(base, daemon_files='%n')}{node_lines}
PartitionName=nodes Nodes={",".join(self.node_names)} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""

    def _start_daemons(self, timeout: float) -> None:
        munge_dir = self.base / "munge"
        self._daemon(munge_dir / "munged.pid", [
            "runuser", "-u", "munge", "--", "munged",
            f"--socket={munge_dir}/munge.socket",
            f"--pid-file={munge_dir}/munged.pid",
            f"--log-file={munge_dir}/munged.log",
            f"--seed-file={munge_dir}/munged.seed",
        ])
        self._daemon(self.base / "slurmctld.pid", ["slurmctld"])
        for name in self.node_names:
            # Inside the node: its host name and hosts file, then slurmd (which forks and writes its pid file).
            inside = (f"hostname {shlex.quote(name)} && mount --bind {shlex.quote(str(self.base / 'hosts'))} /etc/hosts"
                      f" && exec slurmd -N {shlex.quote(name)}")
            self._daemon(self.base / f"slurmd-{name}.pid", [
                "nsenter", f"--net=/run/netns/{self.namespaces[name]}",
                "unshare", "--uts", "--mount", "--propagation", "private",
                "sh", "-c", inside,
            ])
        deadline = time.monotonic() + timeout
        states = ""
        while time.monotonic() < deadline:
            states = self.run("sinfo", "-h", "-N", "-o", "%N %T", check=False).stdout.strip()
            words = dict(line.split() for line in states.splitlines() if len(line.split()) == 2)
            if sorted(words) == self.node_names and set(words.values()) == {"idle"}:
                return
            time.sleep(0.1)
        raise RuntimeError(f"the nodes are not all idle after {timeout:g} s (sinfo says {states!r}); logs in {self.base}")

    def _daemon(self, pid_file: Path, command: list[str], timeout: float = 20) -> None:
        """Run a daemon that forks and writes its pid file; wait for the file."""
        self._pid_files.append(pid_file)
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{command[0]} failed ({done.returncode}): {done.stderr.strip()} (logs in {self.base})")
        deadline = time.monotonic() + timeout
        while not (pid_file.exists() and pid_file.read_text().strip()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{pid_file.name} was not written within {timeout:g} s (logs in {self.base})")
            time.sleep(0.02)

    # ------------------------------------------------------------ stop
    def stop(self, timeout: float = 30) -> None:
        """Cancel every job, stop every daemon by PID, delete the namespaces, devices and files.

        Safe to call on a half-started cluster and more than once.
        """
        began = time.monotonic()
        if self.conf.exists():
            self.run("scancel", "--user=root", check=False)
            self.run("scontrol", "shutdown", check=False)
        for pid_file in reversed(self._pid_files):
            try:
                pid = int(pid_file.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            # scontrol shutdown asked the Slurm daemons to go; munged is told by SIGTERM.
            _end(pid, timeout, asked=pid_file.name != "munged.pid")
        self._pid_files.clear()
        for namespace in list(self._made_namespaces):
            # A namespace lives on while a process is in it: end what is left there by PID.
            out = _run(["ip", "netns", "pids", namespace], check=False).stdout
            for pid in (int(word) for word in out.split() if word.isdigit()):
                if _alive(pid):
                    _end(pid, timeout / 3, asked=False)
            _run(["ip", "netns", "delete", namespace], check=False)
            self._made_namespaces.remove(namespace)
        for veth in self.host_veths.values():  # gone with their namespace's end, unless that failed half-way
            if Path(f"/sys/class/net/{veth}").exists():
                _run(["ip", "link", "delete", veth], check=False)
        if self._made_bridge:
            _run(["ip", "link", "delete", self.bridge], check=False)
            self._made_bridge = False
        shutil.rmtree(self.base, ignore_errors=True)
        self.stopped_in = time.monotonic() - began

    def leftovers(self) -> list[str]:
        """What of this cluster still exists on the machine (empty after :meth:`stop`)."""
        left = []
        namespaces = _run(["ip", "netns", "list"], check=False).stdout
        left += [ns for ns in self.namespaces.values() if ns in namespaces.split()]
        left += [dev for dev in (self.bridge, *self.host_veths.values()) if Path(f"/sys/class/net/{dev}").exists()]
        if self.base.exists():
            left.append(str(self.base))
        return left
