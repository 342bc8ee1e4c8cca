"""The casampi-compatible client: :class:`MPICommandClient`.

Scripts written for ``casampi.MPICommandClient`` run unchanged: the same
methods, arguments and response dicts. Behind it is a :class:`ClusterSession`
(an ipyparallel cluster of MPI engines) and a :class:`Dispatcher`.

Runs in the client.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Callable

from casa_magics.cluster import session as _session
from casa_magics.cluster.casa_env import require_casa
from casa_magics.core.checks import check_block, short
from casa_magics.client.commands import check_parameters, compile_command
from casa_magics.client.dispatcher import Dispatcher, flatten_request_ids
from casa_magics.core.errors import CommandRequestError
from casa_magics.client.gang import WORKER_COMMAND, gang_unavailable
from casa_magics.client.waiting import deferred_interrupts, wait_interactive

__all__ = ["CommandClient", "MPICommandClient", "LOG_MODES", "CASA_LOG_LEVELS"]

log = logging.getLogger("casa_magics")

#: Log modes casampi accepts; all are accepted (servers log to their own files here).
LOG_MODES = ("unified", "redirect", "separated", "console")

#: CASA log priorities :meth:`CommandClient.set_log_level` accepts (casampi's list).
CASA_LOG_LEVELS = (
    ("DEBUG", "DEBUG1", "DEBUG2", "NORMAL")
    + tuple(f"NORMAL{i}" for i in range(1, 6))
    + ("INFO",)
    + tuple(f"INFO{i}" for i in range(1, 6))
)

#: Life-cycle states of :meth:`CommandClient.get_lifecyle_state`, as in casampi.
NOT_STARTED, STARTED, STOPPED = 0, 1, 2


class CommandClient:
    """Send Python/CASA commands to servers and collect their responses.

    The casampi client without the singleton: use it to drive a particular
    :class:`ClusterSession` (for example a second cluster next to the one
    :class:`MPICommandClient` uses). Same methods as :class:`MPICommandClient`.

    Parameters
    ----------
    session : ClusterSession, optional
        The cluster to use. Default: the process-wide session, started or
        connected when first needed.
    """

    def __init__(self, session: "_session.ClusterSession | None" = None) -> None:
        self._given_session = session
        self._dispatcher: Dispatcher | None = None
        self._lock = threading.RLock()
        self._log_mode = "unified"
        self._log_level: str | None = None  # the servers' per-request CASA log notes; None: none asked
        self._stopped_once = False
        #: Run every request in this process's current directory on its server
        #: (what casampi jobs expect; turned on by :func:`casa_magics.enable_casampi`).
        self.follow_cwd = False

    # ---------------------------------------------------------------- set-up
    def set_log_mode(self, mode: str) -> None:
        """Accept casampi's log modes (``'unified'``, ``'redirect'``, ...).

        Servers always write CASA's log to their own file in the run
        directory (see ``get_server_status``), so the mode is recorded only.
        """
        if mode not in LOG_MODES:
            raise CommandRequestError(f"log mode must be one of {list(LOG_MODES)}, got {short(mode)}")
        self._log_mode = mode

    def set_log_level(self, level: str) -> None:
        """Set the CASA log priority at which servers note each request they run.

        As in casampi: every server writes a line per request into its CASA
        log (``casa-server-<id>.log``) at this priority, once CASA is
        imported there. ``'DEBUG'`` hides the lines under CASA's default
        filter; ``'INFO'`` (or ``'NORMAL'``) shows them.

        Parameters
        ----------
        level : str
            One of casampi's CASA log priorities (``'DEBUG'``, ``'DEBUG1'``,
            ``'DEBUG2'``, ``'NORMAL'``, ``'NORMAL1'`` to ``'NORMAL5'``, ``'INFO'``,
            ``'INFO1'`` to ``'INFO5'``; ``CASA_LOG_LEVELS`` in this module), in
            any case.
        """
        if not isinstance(level, str) or level.upper() not in CASA_LOG_LEVELS:
            raise CommandRequestError(f"unknown log level {short(level)}")
        self._log_level = level.upper()
        with self._lock:
            dispatcher = self._dispatcher
        if dispatcher is not None:
            dispatcher.session.set_command_log_level(self._log_level)

    @property
    def log_level(self) -> str | None:
        """The level last given to :meth:`set_log_level` (None if never)."""
        return self._log_level

    def get_lifecyle_state(self) -> int:
        """casampi's life-cycle state (its spelling): 0 not started, 1 started, 2 stopped.

        Unlike casampi, a stopped client starts again when asked.
        """
        with self._lock:
            running = self._dispatcher is not None and not self._dispatcher.session.stopped
        if running:
            return STARTED
        return STOPPED if self._stopped_once else NOT_STARTED

    def start_services(self) -> None:
        """Bring up the servers (start or connect the cluster) and the dispatcher.

        Idempotent: a second call does nothing.
        """
        self._services()

    def _services(self) -> Dispatcher:
        with self._lock:
            if self._dispatcher is not None:
                if self._dispatcher.session.stopped:
                    self._dispatcher.close()  # its cluster was stopped or replaced behind our back
                    self._dispatcher = None
                elif self._given_session is None and _session.live_current_session() not in (None, self._dispatcher.session):
                    # set_current_session() chose another cluster: follow it, as MPIEnvironment does.
                    self._dispatcher.close("set_current_session() chose another cluster")
                    self._dispatcher = None
            if self._dispatcher is None:
                session = self._given_session or _session.current_session()
                if self._log_level is not None:
                    session.set_command_log_level(self._log_level)
                self._dispatcher = Dispatcher(session, session.settings.server_timeout)
            return self._dispatcher

    @property
    def session(self) -> "_session.ClusterSession":
        """The cluster session behind the client (started on first use)."""
        return self._services().session

    def stop_services(self, force: bool = False) -> list[int]:
        """End the session: answer unfinished requests as cut short, stop what was started.

        A cluster this client started is shut down (controller, engines and
        ``mpiexec``); a cluster it connected to is left running.

        Returns
        -------
        list of int
            IDs of the requests that were cut short.
        """
        with self._lock:
            dispatcher, self._dispatcher = self._dispatcher, None
            self._stopped_once = self._stopped_once or dispatcher is not None
        cut = dispatcher.close() if dispatcher is not None else []
        if cut:
            log.warning("stop_services cut short requests %s", cut)
        if self._given_session is not None:
            self._given_session.stop()
        elif _session.has_current_session():
            _session.current_session().stop()
            _session.set_current_session(None)
        return cut

    # ---------------------------------------------------------------- pushing
    def push_command_request(
        self,
        command: str,
        block: bool = False,
        target_server: int | list[int] | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> list[int] | list[dict[str, Any]]:
        """Send a command to one, several or any server.

        Parameters
        ----------
        command : str
            Python source. One expression is evaluated and its value returned
            in ``ret``; otherwise the statements are executed (``ret`` None).
        block : bool
            Wait for the responses and return them (default False: return
            the request IDs at once).
        target_server : None, int or list of int
            None: the first free server. An int: that server. A list: one
            request per listed server.
        parameters : dict, optional
            Values placed in the server's namespace for this command only.
            With a bare call like ``"wvrgcal()"`` they are passed as keyword
            arguments: ``wvrgcal(**parameters)``.

        Returns
        -------
        list of int or list of dict
            Request IDs (one per target server), or with ``block=True`` the
            response dicts in the order of the target servers.

        Raises
        ------
        CommandRequestError
            For an invalid command, target, parameters or ``block``; nothing
            is sent.
        """
        check_block(block)
        compiled = compile_command(command)
        checked = check_parameters(parameters)
        dispatcher = self._services()
        targets = dispatcher.session.servers.parse_targets(target_server)
        return self._send(dispatcher, block, lambda cwd: dispatcher.push(compiled, checked, targets, cwd))

    def _send(self, dispatcher: Dispatcher, block: bool, push: Any) -> list[int] | list[dict[str, Any]]:
        """Run ``push(cwd)``, which creates and sends requests; with ``block``, wait for their responses.

        A Ctrl-C during the push is held until the requests are sent, so none is half-sent.
        """
        with deferred_interrupts():
            ids = push(os.getcwd() if self.follow_cwd else None)
            if block:
                return dispatcher.responses(ids, block=True)
        return ids

    def push_gang_request(
        self, command: str, block: bool = False, parameters: dict[str, Any] | None = None
    ) -> list[int] | list[dict[str, Any]]:
        """Run one command on all servers as a gang, for CASA's C++-MPI code.

        Server 1 (MPI rank 0) runs ``command`` as the master, with casatasks
        seeing MPI as enabled; every other server is its worker, inside
        ``synthesisimager().initmpi()`` from when the master's task asks for
        workers until it releases them. A cube ``tclean`` in ``command``
        is then imaged by all servers, as under mpicasa.

        Parameters
        ----------
        command : str
            Python source for the master, as for :meth:`push_command_request`.
        block : bool
            Wait and return the responses (default False: the request IDs).
        parameters : dict, optional
            Values in the master's namespace for this command only.

        Returns
        -------
        list of int or list of dict
            One request per server, the master's first: IDs, or with
            ``block=True`` the responses. A worker's ``ret`` says whether it
            joined (``joined``) and how long it waited and worked.

        Raises
        ------
        CommandRequestError
            If the command or its parameters are invalid, or the servers
            cannot run a gang (the message says why, e.g. the mpich wheel, a
            lost server); nothing is sent then.

        Notes
        -----
        If a member is lost, every other member's response gets status
        ``'timeout'`` naming it, and a member stuck in CASA's C++ is killed
        after a few seconds (its server is then lost). Aborting the requests
        interrupts the master, whose task releases the workers.
        """
        check_block(block)
        compiled = compile_command(command)
        checked = check_parameters(parameters)
        dispatcher = self._services()
        why = gang_unavailable(self)
        if why is not None:
            raise CommandRequestError(f"cannot run a gang: {why}")
        worker = compile_command(WORKER_COMMAND)
        return self._send(dispatcher, block, lambda cwd: dispatcher.push_gang(compiled, worker, checked, cwd))

    # ---------------------------------------------------------------- getting
    def get_command_response(
        self,
        command_request_id_list: int | list,
        block: bool = False,
        verbose: bool = True,
        timeout: float | None = None,
    ) -> list[dict[str, Any]]:
        """Response dicts of earlier requests, in the order of the IDs given.

        Parameters
        ----------
        command_request_id_list : int, list of int, or list of lists
            As returned by non-blocking ``push_command_request`` calls.
        block : bool
            Wait until all have responses; otherwise return those available now.
        verbose : bool
            Accepted for casampi compatibility.
        timeout : float, optional
            Longest wait when blocking; then :class:`TimeoutError` (nothing
            is lost: a later call still returns the responses).

        Raises
        ------
        CommandRequestError
            For a malformed or unknown request ID.
        KeyboardInterrupt
            On Ctrl-C during a blocking wait; the requests keep running.
        """
        check_block(block)
        ids = flatten_request_ids(command_request_id_list)
        if not ids:
            return []
        if not block:
            return self._services().responses(ids, block=False)
        with deferred_interrupts():
            return self._services().responses(ids, block=True, timeout=timeout)

    def wait_interactive(self, command_request_id_list: int | list, timeout: float | None = None) -> None:
        """Wait for the responses of earlier requests, with a progress bar when it is not short. (Not in casampi.)

        ipyparallel's ``AsyncResult.wait_interactive``: the bar (done/total,
        elapsed) appears after 0.5 s for several requests, 1 s for one; in
        Jupyter it is left complete, in a terminal erased. Collect the
        responses with :meth:`get_command_response` afterwards.

        Raises
        ------
        TimeoutError
            After ``timeout`` seconds; the requests keep running.
        KeyboardInterrupt
            On Ctrl-C; the requests keep running.
        """
        ids = flatten_request_ids(command_request_id_list)
        if ids:
            with deferred_interrupts():
                self._services().wait(ids, timeout=timeout, progress=True)

    def get_command_response_event(self, command_request_id_list: int | list) -> threading.Event:
        """A :class:`threading.Event` that is set once every listed request has a response."""
        return self._services().event_for(flatten_request_ids(command_request_id_list))

    def wait_until_idle(self, timeout: float | None = None) -> bool:
        """Wait until every request sent so far has a response (at most ``timeout`` s). (Not in casampi.)

        Returns True when nothing is left unanswered.
        """
        dispatcher = self._services()
        pending = dispatcher.unfinished_ids()
        return not pending or wait_interactive(dispatcher.event_for(pending), timeout=timeout)

    def get_command_request_list(self) -> dict[int, dict[str, Any]]:
        """Every request this client knows, finished or not, keyed by request ID."""
        return self._services().request_states()

    def get_command_response_list(self) -> dict[int, dict[str, Any]]:
        """The responses received so far, keyed by request ID."""
        return self._services().finished_responses()

    def get_server_status(self) -> dict[int, dict[str, Any]]:
        """State of every server, keyed by server ID.

        Each value has ``rank``, ``processor`` (host name), ``pid``, ``busy``,
        ``command``, ``command_start_time``, ``timeout``, and also
        ``engine``, ``queued``, ``running_for``, ``lost``, ``log`` (the
        server's CASA log file) and ``casa`` (whether CASA is imported
        there: see :meth:`ClusterSession.casa_state`).
        """
        return self._services().server_status()

    # ---------------------------------------------------------------- extras
    def activity_source(self) -> Callable[[float], Any]:
        """What the live view reads: a function of a window (seconds) returning a :class:`~casa_magics.client.activity.Snapshot`. (Not in casampi.)

        Bound to the cluster running now (started if none is): once that
        cluster stops, its snapshots say ``stopped`` for good. Reading one
        sends nothing to the servers.
        """
        return self._services().activity_snapshot

    def abort_command_request(self, command_request_id_list: int | list) -> dict[int, str]:
        """Cancel requests: queued ones are dropped, running ones interrupted.

        Their responses get status ``'cancelled'``. Returns what happened to
        each, keyed by request ID. (Not in casampi.)
        """
        return self._services().cancel(flatten_request_ids(command_request_id_list))

    def import_casa(self) -> list[dict[str, Any]]:
        """Import ``casatools`` and ``casatasks`` on every server, and wait. (Not in casampi.)

        CASA takes a few seconds to import; doing it up front on all servers
        at once makes the first real task start without that wait. Servers
        read the offline site config (``casadata``, no downloads) and log to
        their own file in the run directory.

        Returns
        -------
        list of dict
            One response per server.

        Raises
        ------
        ImportError
            With a one-line message saying how to install the ``casa`` extra,
            when it is missing here.
        """
        require_casa()
        servers = [s for s, state in self.get_server_status().items() if not state["timeout"]]
        return self.push_command_request("import casatools, casatasks", block=True, target_server=servers)

    def forget_command_responses(self, command_request_id_list: int | list | None = None) -> list[int]:
        """Let go of finished requests so their memory is freed. (Not in casampi.)

        With no argument, every finished request is forgotten; their IDs then
        count as unknown. Returns the forgotten IDs.
        """
        ids = None if command_request_id_list is None else flatten_request_ids(command_request_id_list)
        return self._services().forget(ids)

    def __repr__(self) -> str:
        state = "running" if self._dispatcher is not None else "not started"
        return f"<{type(self).__name__} {state}>"


class MPICommandClient(CommandClient):
    """casampi's client: send commands to servers, collect response dicts.

    A singleton, as in casampi: every ``MPICommandClient()`` in a process is
    the same object, on the process-wide cluster session. Creating it starts
    nothing; the cluster comes up when first needed (``start_services()``,
    the first push, or ``MPIEnvironment.mpi_server_rank_list()``).

    Examples
    --------
    >>> client = MPICommandClient()                        # doctest: +SKIP
    >>> client.start_services()                            # doctest: +SKIP
    >>> client.push_command_request("1 + 1", block=True)   # doctest: +SKIP
    [{'id': 1, 'server': 1, 'successful': True, 'ret': 2, ...}]
    """

    _instance: "MPICommandClient | None" = None
    _instance_lock = threading.Lock()

    def __new__(cls) -> "MPICommandClient":
        with cls._instance_lock:
            if cls._instance is None:
                instance = super().__new__(cls)
                CommandClient.__init__(instance)
                cls._instance = instance
            return cls._instance

    def __init__(self) -> None:
        """State is set once, in ``__new__``; later instantiations change nothing."""
