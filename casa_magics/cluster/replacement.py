"""Replacing a lost server: a new engine takes the lost server's ID.

When the dispatcher loses a server (killed, crashed, its engine gone), it
answers that server's requests with status ``'timeout'`` as always, and then
asks the session's :class:`Replacer` for a new server. The replacer launches
one engine with the same launcher plan and environment as the cluster's
(``mpiexec -n 1``: an MPI world of its own, since no one can join the
cluster's world), waits for it to register, maps it to the lost server's ID
(:meth:`ServerMap.replace <casa_magics.cluster.server_map.ServerMap.replace>`),
prepares it as every server is prepared (server ID, memory watcher, server
setups, CASA import), and hands it to the dispatcher.

A server that keeps dying is not replaced forever: at most
:data:`MAX_TRIES` launches per server ID within :data:`TRY_WINDOW` seconds.

Runs in the client.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from casa_magics.cluster.registration import LauncherWatch, Outcome, wait_for_engines
from casa_magics.server.engine_keeper import exit_note_path

if TYPE_CHECKING:
    from casa_magics.cluster.server_map import ServerInfo

__all__ = ["Replacer", "start_replacement", "exit_note_path", "describe_exit", "MAX_TRIES", "TRY_WINDOW", "REPLACES_VARIABLE"]

log = logging.getLogger("casa_magics")

#: Replacements launched for one server ID within TRY_WINDOW seconds before it stays lost.
MAX_TRIES = 3
#: Seconds over which replacement launches are counted.
TRY_WINDOW = 60.0
#: Set in a replacement's environment to the server ID it replaces (a wrapper may read it).
REPLACES_VARIABLE = "CASA_MAGICS_REPLACES"


def _oom_kills() -> int | None:
    """The kernel's count of processes its out-of-memory killer ended (None where unknown)."""
    try:
        for line in Path("/proc/vmstat").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def describe_exit(code: int | None, oom_killed: bool = False) -> str:
    """``-9`` → ``'killed by signal 9 (SIGKILL)'``; ``3`` → ``'exited with status 3'``."""
    if code is None:
        return "how it ended is not known"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "?"
        text = f"killed by signal {-code} ({name})"
        if oom_killed and -code == signal.SIGKILL:
            text += ", probably by the kernel's out-of-memory killer"
        return text
    return f"exited with status {code}"


class Replacer:
    """Launches replacements for one embedded cluster's lost servers.

    Parameters
    ----------
    session : ClusterSession
        The session that started the cluster.
    engine_kwargs : dict
        What :meth:`ipyparallel.Cluster.start_engines` got for the cluster's
        engines (launcher plan and environment).
    """

    def __init__(self, session: Any, engine_kwargs: dict[str, Any]) -> None:
        self.session = session
        self.engine_kwargs = engine_kwargs
        self._lock = threading.Lock()  # one launch at a time: the new engine is then the only new one
        self._tries: dict[int, list[float]] = {}
        self._oom_kills = _oom_kills()

    def why_gone(self, info: "ServerInfo", wait: float = 2.0) -> str:
        """How a lost server's process ended, from its keeper's note (waiting ``wait`` s for it)."""
        path = Path(exit_note_path(str(self.session.run_dir), info.pid))
        deadline = time.monotonic() + wait
        code = None
        while True:
            try:
                code = int(path.read_text())
                break
            except (OSError, ValueError):
                if time.monotonic() >= deadline or not info.on_this_host:
                    break
                time.sleep(0.05)  # the keeper writes the note just after the engine ends
        kills = _oom_kills()
        oom = kills is not None and self._oom_kills is not None and kills > self._oom_kills
        self._oom_kills = kills
        return describe_exit(code, oom)

    def allowed(self, server: int) -> str | None:
        """None if ``server`` may be replaced now, else why not (and count the try if allowed)."""
        now = time.monotonic()
        tries = [t for t in self._tries.get(server, []) if now - t < TRY_WINDOW]
        if len(tries) >= MAX_TRIES:
            return f"{MAX_TRIES} replacements were started within {TRY_WINDOW:g} s, so it stays lost"
        tries.append(now)
        self._tries[server] = tries
        return None

    def launch(self, server: int, timeout: float) -> "ServerInfo":
        """Start one engine, wait until it registers, prepare it as ``server``, and return its info.

        Raises
        ------
        RuntimeError
            If the engine exits or does not register within ``timeout``
            seconds; the message says which, with the end of its output.
        """
        from casa_magics.server.runner import engine_identity

        session = self.session
        client = session.client
        kwargs = dict(self.engine_kwargs)
        kwargs["environment"] = {**kwargs.get("environment", {}), REPLACES_VARIABLE: str(server)}
        with self._lock:
            if session.stopped:
                raise RuntimeError("the session was stopped")
            known = set(client.ids) | {info.engine for info in session.servers}
            engine_set_id = session.cluster.start_engines_sync(1, **kwargs)
            engine_set = session.cluster.engines[engine_set_id]
            if getattr(session, "reaper", None) is not None:  # ended with the cluster if this process dies
                session.reaper.watch(getattr(getattr(engine_set, "process", None), "pid", None))
            registration = wait_for_engines(client, 1, timeout, known=known, launcher=LauncherWatch(engine_set))
            if not registration.ok:
                output = " | ".join((engine_set.get_output() or "").strip().splitlines()[-3:])
                if registration.outcome is Outcome.LAUNCHER_EXITED:
                    status = "" if registration.exit_code is None else f" exit status {registration.exit_code}"
                    why = f"exited during start-up (mpiexec{status}, output: {output or 'none'})"
                else:
                    why = f"did not register within {timeout:g} s (output: {output or 'none'})"
                raise RuntimeError(f"the replacement {why}")
            engine = registration.engines[0]
        identity = client[engine].apply_sync(engine_identity)
        info = session.servers.replace(server, engine, identity)
        session.prepare_replacement(server)
        return info


def start_replacement(dispatcher: Any, server: Any) -> bool:
    """Begin replacing a lost server in the background, if its session allows it.

    Called by the dispatcher (its lock held) right after it lost ``server``.
    Returns True when a replacement is on its way. When one is refused
    (too many tries), the dispatcher hears why through its
    ``replacement_failed(server_id, why)``, as when a replacement fails
    later; the dispatcher words the lost server's reason.
    """
    replacer: Replacer | None = getattr(dispatcher.session, "replacer", None)
    if replacer is None:
        return False
    server_id = server.info.server
    refused = replacer.allowed(server_id)
    if refused is not None:
        dispatcher.replacement_failed(server_id, refused)
        return False
    lost_info = server.info
    started = time.time()

    def replace() -> None:
        why = replacer.why_gone(lost_info)
        timeout = dispatcher.session.settings.start_timeout
        while True:
            try:
                replacer.launch(server_id, timeout)
            except Exception as error:
                log.warning("server %s was not replaced: %s", server_id, error)
                refused = replacer.allowed(server_id)
                if refused is None and not dispatcher.closed:
                    continue
                dispatcher.replacement_failed(server_id, f"{error}; {refused or 'the client stopped'}")
                return
            lost_at, now = (time.strftime("%H:%M:%S", time.localtime(t)) for t in (started, time.time()))
            note = (
                f"server {server_id} was replaced at {now} (the old one, pid {lost_info.pid}, was lost at "
                f"{lost_at}: {why}); its state is fresh"
            )
            if not dispatcher.take_replacement(server_id, note):
                return  # the client stopped meanwhile; the cluster's stop ends the new engine
            log.warning("%s", note)
            return

    threading.Thread(target=replace, name=f"casa-magics-replace-{server_id}", daemon=True).start()
    return True
