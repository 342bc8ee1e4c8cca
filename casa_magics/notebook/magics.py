"""The ``%casa_*`` magics: the IPython face of :class:`~casa_magics.MPICommandClient`.

``%load_ext casa_magics`` registers them; nothing starts until a magic needs
a cluster. Every magic works on the process-wide client and session, the
same ones a script's ``MPICommandClient()`` uses, so magics and facade calls
can be mixed in one notebook and share request IDs.

Returned values stay plain: request IDs are a ``list`` of ints, responses a
:class:`~casa_magics.notebook.display.ResponseList` and status a
:class:`~casa_magics.notebook.display.ServerStatus`, a ``list`` and a ``dict`` that
only add a table for IPython's display (HTML in Jupyter, text in a terminal).
They compare equal to plain lists and dicts, and ``repr()`` shows them as such.

A blocking wait is the client's ``wait_interactive`` (one implementation for
the facade and the magics, :mod:`casa_magics.client.waiting`): it shows a progress
bar (done/total, elapsed) once it has lasted
:data:`~casa_magics.client.waiting.PROGRESS_AFTER_SEVERAL` seconds for several
requests or :data:`~casa_magics.client.waiting.PROGRESS_AFTER_ONE` for one; in
Jupyter the bar is left complete, in a terminal it is erased. Ctrl-C stops
the wait wherever it lands; the requests keep running.

Runs in the client, in IPython or Jupyter.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from typing import Any, Iterator

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from casa_magics.casampi.layer import enable_casampi
from casa_magics.client.client import MPICommandClient
from casa_magics.core.checks import short
from casa_magics.client.commands import compile_command
from casa_magics.notebook.display import ResponseList, ServerStatus, echo_streams, text_table
from casa_magics.notebook.live_view import WINDOW, LiveView, live_view
from casa_magics.core.config import load_settings
from casa_magics.client.dispatcher import flatten_request_ids
from casa_magics.core.errors import ClusterError, CommandRequestError, SettingError
from casa_magics.core.units import parse_memory_size
from casa_magics.cluster import detached
from casa_magics.cluster.session import ClusterSession, current_session, has_current_session, set_current_session
from casa_magics.cluster.slurm_launch import starting_job

__all__ = ["CasaMagics", "load_ipython_extension", "unload_ipython_extension", "split_options"]

_NO_CLUSTER = "no cluster is running: %casa_cluster start starts one (so does the first %casa_push)"
_OPTION = re.compile(r"-[A-Za-z-]")


# ---------------------------------------------------------------- parsing
def split_options(line: str, valued: frozenset[str]) -> tuple[str, str]:
    """Split a magic's line into its leading options and the verbatim rest.

    Options are the leading tokens that start with ``-`` and a letter (a
    negative number is not an option), plus the value after each option
    in ``valued``. ``--`` ends the options explicitly.

    Parameters
    ----------
    line : str
        The text after the magic's name.
    valued : frozenset of str
        Options that take a value as the next token, e.g. ``{"-t", "--target"}``.

    Returns
    -------
    options, rest : str
        ``rest`` is the line from its first non-option token on, untouched.

    Examples
    --------
    >>> split_options("-b -t 1,2 print('a  b')  # c", frozenset({"-t"}))
    ('-b -t 1,2 ', "print('a  b')  # c")
    >>> split_options("-b -- -x", frozenset())
    ('-b ', '-x')
    """
    wants_value = False
    for token in re.finditer(r"\S+", line):
        text = token.group()
        if wants_value:
            wants_value = False
        elif text == "--":
            return line[: token.start()], line[token.end() :].lstrip()
        elif _OPTION.match(text):
            wants_value = text in valued
        else:
            return line[: token.start()], line[token.start() :]
    return line, ""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _memory_size(text: str) -> int:
    try:
        return parse_memory_size(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a size like 4GB, 500MB or a number of bytes, got {text!r}") from None


def _server_ids(text: str) -> list[int]:
    parts = text.split(",")
    if not all(part.strip().isdigit() for part in parts):
        raise argparse.ArgumentTypeError(f"takes server IDs separated by commas, got {text!r}")
    return [int(part) for part in parts]


@contextlib.contextmanager
def _usage_errors() -> Iterator[None]:
    """Turn the facade's one-line refusals (and a bad setting, a failed start) into IPython's UsageError."""
    try:
        yield
    except (CommandRequestError, SettingError, ClusterError) as error:
        raise UsageError(str(error)) from None


# ---------------------------------------------------------------- magics
@magics_class
class CasaMagics(Magics):
    """Run Python/CASA commands on the servers of an MPI cluster.

    ``%casa_cluster`` starts, connects, stops and describes the cluster;
    ``%casa_push`` / ``%%casa_push`` send commands; ``%casa_get`` collects
    responses; ``%casa_status`` shows what the servers are doing;
    ``%casa_abort`` cancels requests.
    """

    # ------------------------------------------------------------ helpers
    def _client(self, start: bool = False) -> MPICommandClient:
        """The process-wide client; with ``start``, bring a cluster up if none is running."""
        client = MPICommandClient()
        if not has_current_session():
            if not start:
                raise UsageError(_NO_CLUSTER)
            client.stop_services()  # drop what is left of a cluster stopped behind the client's back
            client.start_services()  # the embedded cluster, or the one CASA_MAGICS_* names
            session = client.session
            verb = "started" if session.owns_cluster else "connected to"
            print(f"No cluster was running: {verb} {session.description} (%casa_cluster status shows it).")
        return client

    def _variable(self, name: str, option: str) -> Any:
        try:
            return self.shell.user_ns[name]
        except KeyError:
            raise UsageError(f"{option}: no variable named {name!r}") from None

    def _request_ids(self, tokens: list[str], option: str) -> list[int]:
        """Request IDs from ``3 4``, ``3,4`` or names of variables holding IDs."""
        ids: list[int] = []
        for token in tokens:
            for part in token.split(","):
                part = part.strip().strip("[]")
                if not part:
                    continue
                if part.isdigit():
                    ids.append(int(part))
                elif part.isidentifier():
                    value = self._variable(part, option)
                    try:
                        ids.extend(flatten_request_ids(value))
                    except CommandRequestError:
                        raise UsageError(
                            f"{option}: variable {part!r} must hold a request ID or a list of them, got {short(value)}"
                        ) from None
                else:
                    raise UsageError(f"{option}: request IDs are integers or a variable name, got {part!r}")
        if not ids:
            raise UsageError(f"{option}: no request IDs given")
        return ids

    def _wait(self, client: MPICommandClient, ids: list[int], timeout: float | None) -> list[dict[str, Any]]:
        """Wait for the responses of ``ids`` (``client.wait_interactive``), then return them."""
        try:
            client.wait_interactive(ids, timeout=timeout)
        except TimeoutError as error:
            answered = {response["id"] for response in client.get_command_response(ids)}
            pending = [i for i in ids if i not in answered]
            raise UsageError(f"{error}; they keep running: %casa_get -b {','.join(map(str, pending))} waits again") from None
        except KeyboardInterrupt:
            again = ",".join(map(str, ids))
            print(
                f"Stopped waiting; the requests keep running: %casa_get -b {again} waits again, "
                f"%casa_abort {again} cancels them.",
                file=sys.stderr,
            )
            raise
        return client.get_command_response(ids)

    def _show(self, responses: list[dict[str, Any]]) -> ResponseList:
        echo_streams(responses)
        return ResponseList(responses)

    # ------------------------------------------------------------ cluster
    @magic_arguments()
    @argument("action", choices=["start", "connect", "stop", "status", "list"], help="what to do with the cluster")
    @argument(
        "-n",
        type=_positive_int,
        metavar="N",
        help="start: number of servers (default CASA_MAGICS_ENGINES, else one per core, at least 2); "
        "connect: wait until N engines have registered",
    )
    @argument("--timeout", type=_seconds, metavar="S", help="start, connect: seconds to wait for the engines")
    @argument("--profile", metavar="P", help="connect: the IPython profile given to ipcluster")
    @argument("--cluster-id", metavar="C", help="connect: the cluster ID given to ipcluster")
    @argument("--connection-file", metavar="F", help="connect: path of the cluster's ipcontroller-client.json")
    @argument("--memory-limit", type=_memory_size, metavar="SIZE", help="start: resident memory each server may use "
              "(e.g. 4GB); over it, its running request is ended (default CASA_MAGICS_MEMORY_LIMIT, else .casarc's)")
    @argument("--keep", action="store_true", default=None, help="start: detached, so that it outlives this kernel; "
              "after a restart %%casa_cluster connect gets it back, %%casa_cluster stop ends it for good")
    @argument("--replace", action=argparse.BooleanOptionalAction, default=None, help="start: replace a lost server "
              "with a new one under its server ID, or not (default CASA_MAGICS_REPLACE_LOST, else on)")
    @argument("--slurm", action="store_true", help="start: the servers are the MPI ranks of one Slurm job (sbatch); "
              "the start timeout also bounds its time in the queue")
    @argument("--partition", metavar="P", help="start --slurm: the Slurm partition")
    @argument("--time", metavar="T", help="start --slurm: the job's time limit, e.g. 04:00:00")
    @argument("--account", metavar="A", help="start --slurm: the Slurm account")
    @argument("--sbatch-arg", action="append", metavar="ARG", help="start --slurm: one more sbatch option, "
              "e.g. --sbatch-arg=--mem-per-cpu=4G (repeat for more)")
    @argument("--controller-ip", metavar="IP", help="start: the address the controller listens on (default "
              "127.0.0.1; with --slurm CASA_MAGICS_CONTROLLER_IP, else this host's address)")
    @argument(
        "--casampi",
        action="store_true",
        help="start, connect: also run casatasks' own parallel code (Multi-MS tasks, tclean(parallel=True)) "
        "on the servers, as casa_magics.enable_casampi() does",
    )
    @line_magic
    def casa_cluster(self, line: str) -> Any:
        """Start, connect to, stop or describe the cluster of CASA servers.

        ``start`` launches an embedded cluster (a controller on this machine
        and N MPI engines under ``mpiexec``); ``connect`` attaches to a
        running one (``ipcluster start --engines=MPI``); both show the server
        map (server ID = MPI rank + 1, and the engine behind it). ``stop``
        ends the session: an embedded cluster is shut down, a connected one is
        left running. ``status`` describes the cluster without starting one.

        Examples
        --------
        In [1]: %casa_cluster start -n 2
        Started embedded cluster of 2 MPI servers (logs in /tmp/casa-magics-1a2b).
        Out[1]:
        server engine rank  host (pid)
             1      0    0  node1 (4711)
             2      1    1  node1 (4712)

        In [2]: %casa_cluster stop
        Stopped embedded cluster of 2 MPI servers.

        ``start --keep`` starts a cluster that outlives this kernel; after a
        restart, ``connect`` (no arguments) gets it back with its servers'
        state and says what became of the requests the old kernel had in
        flight; ``list`` shows such clusters and their age, ``stop`` ends one
        for good (see :mod:`casa_magics.cluster.detached`). ``--memory-limit 4GB``
        ends a request whose server grows past it; ``--no-replace`` leaves a
        lost server lost instead of starting a new one under its ID.

        With ``--casampi``, casatasks' Multi-MS tasks and
        ``tclean(parallel=True)`` use the servers too (see
        :func:`casa_magics.enable_casampi`)::

            In [3]: %casa_cluster start -n 4 --casampi

        With ``--slurm``, the servers are the MPI ranks of one Slurm job
        (``sbatch``); ``status`` shows the job, ``stop`` cancels it. Inside an
        allocation (``salloc``), ``start`` with no ``-n`` starts its
        ``SLURM_NTASKS`` servers without a new job::

            In [4]: %casa_cluster start --slurm -n 64 --partition long --time 04:00:00
            casa_magics: Slurm job 812: PENDING (Priority); waiting up to 60 s in all
            Started 64 MPI servers in Slurm job 812 (logs in /home/me/casa-run).

            In [5]: %casa_cluster status
            Running: 64 MPI servers in Slurm job 812 (logs in /home/me/casa-run).
            Slurm job 812: RUNNING on node[03-04].
        """
        args = parse_argstring(self.casa_cluster, line)
        for name in ("partition", "time", "account", "sbatch_arg"):
            if getattr(args, name) is not None and not args.slurm:
                raise UsageError(f"--{name.replace('_', '-')} applies only to %casa_cluster start --slurm")
        allowed = {
            "start": {"slurm", "controller_ip", "n", "timeout", "memory_limit", "replace", "keep", "casampi"},
            "connect": {"n", "timeout", "profile", "cluster_id", "connection_file", "casampi"},
            "stop": set(),
            "status": set(),
            "list": set(),
        }[args.action]
        for name in ("slurm", "controller_ip", "n", "timeout", "profile", "cluster_id", "connection_file",
                     "memory_limit", "replace", "keep", "casampi"):
            value = getattr(args, name)
            given = bool(value) if name in ("slurm", "casampi") else value is not None  # two plain flags
            if given and name not in allowed:
                option = "-n" if name == "n" else "--" + name.replace("_", "-")
                raise UsageError(f"{option} does not apply to %casa_cluster {args.action}")
        with _usage_errors():
            if args.action in ("start", "connect"):
                load_settings()  # a bad CASA_MAGICS_* value is named before anything starts
            if args.casampi:
                self._refuse_second_cluster()
                if not enable_casampi():
                    raise UsageError("--casampi: a real casampi is installed and stays in charge")
            return getattr(self, "_cluster_" + args.action)(args)

    def _refuse_second_cluster(self) -> None:
        if has_current_session():
            running = current_session().description
            raise UsageError(f"a cluster is already running ({running}): %casa_cluster stop first")
        MPICommandClient().stop_services()  # drop what is left of a cluster stopped behind the client's back

    def _cluster_start(self, args: argparse.Namespace) -> Any:
        self._refuse_second_cluster()
        slurm = {
            "scheduler": "slurm" if args.slurm else None,
            "partition": args.partition,
            "time_limit": args.time,
            "account": args.account,
            "sbatch_args": args.sbatch_arg or (),
            "controller_ip": args.controller_ip,
        }
        session = ClusterSession.start(
            n=args.n, timeout=args.timeout, memory_limit=args.memory_limit, replace_lost=args.replace, keep=args.keep,
            **slurm,
        )
        set_current_session(session)
        MPICommandClient().start_services()
        print(f"Started {session.description} (logs in {session.run_dir}).")
        return session.servers

    def _cluster_connect(self, args: argparse.Namespace) -> Any:
        self._refuse_second_cluster()
        if not (args.profile or args.connection_file or load_settings().wants_connection):
            mine = [c.cluster_id for c in detached.detached_clusters(load_settings())]
            if (args.cluster_id is None and mine) or args.cluster_id in mine:
                return self._reattach(args)
        try:
            session = ClusterSession.connect(
                profile=args.profile,
                cluster_id=args.cluster_id,
                connection_file=args.connection_file,
                n=args.n,
                timeout=args.timeout,
            )
        except ClusterError as error:
            raise UsageError(str(error)) from None
        set_current_session(session)
        MPICommandClient().start_services()
        print(f"Connected to {session.description}: {len(session.servers)} servers.")
        return session.servers

    def _reattach(self, args: argparse.Namespace) -> Any:
        """Connect to a detached cluster of this user, and say what became of the previous kernel's requests."""
        try:
            session = ClusterSession.reattach(args.cluster_id, timeout=args.timeout)
        except ClusterError as error:
            raise UsageError(str(error)) from None
        set_current_session(session)
        MPICommandClient().start_services()
        print(f"Re-attached to {session.description} (logs in {session.run_dir}).")
        if session.previous_requests:
            rows = [{key: row.get(key, "") for key in ("id", "server", "state", "successful", "command")} for row in session.previous_requests]
            for row in rows:
                row["command"] = " ".join(str(row["command"]).split())[:60]
            print(text_table(rows, caption="Requests of the previous kernel (casa_magics.cluster.detached.previous_requests(session) "
                             "shows them again, with their results)"))
        else:
            print("The controller holds no unanswered request of the previous kernel.")
        return session.servers

    def _cluster_list(self, args: argparse.Namespace) -> None:
        clusters = detached.detached_clusters(load_settings())
        if not clusters:
            print("No detached cluster (%casa_cluster start --keep starts one).")
            return
        print(text_table([c.row() for c in clusters], caption="Detached clusters (%casa_cluster connect re-attaches)"))

    def _cluster_stop(self, args: argparse.Namespace) -> None:
        if not has_current_session():
            print("No cluster is running.")
            return
        session = current_session()
        cut = MPICommandClient().stop_services()
        if session.owns_cluster:
            message = f"Stopped {session.description}"
        else:
            message = f"Disconnected from {session.description}, which keeps running"
        if cut:
            message += f"; requests {cut} were cut short"
        print(message + ".")

    def _cluster_status(self, args: argparse.Namespace) -> Any:
        if not has_current_session():
            waiting = starting_job()
            if waiting is not None:  # a start in another thread waits for Slurm
                print(f"Starting: {waiting.describe()}.")
                return None
            print("No cluster is running: %casa_cluster start starts one (so does the first %casa_push).")
            if detached.detached_clusters(load_settings()):  # never forgotten: say they are there
                self._cluster_list(args)
            return None
        session = current_session()
        print(f"Running: {session.description} (logs in {session.run_dir}).")
        if (job := session.scheduler_status()) is not None:
            print(job + ".")
        return session.servers

    # ------------------------------------------------------------ push
    @magic_arguments()
    @argument("-b", "--block", action="store_true", help="wait for the responses, show and return them")
    @argument("-t", "--target", type=_server_ids, metavar="SERVERS", help="server IDs separated by commas, e.g. 1,2 "
              "(one request per server); default: the first free server")
    @argument("-p", "--parameters", metavar="NAME", help="name of a dict in your namespace: its items are the "
              "command's parameters (with a bare call like task(), its keyword arguments)")
    @argument("-g", "--gang", action="store_true", help="run the command on all servers as one MPI job, for "
              "CASA's C++-parallel cube imaging: server 1 runs it, the others are its workers")
    @argument("command", nargs="*", help="the rest of the line, verbatim (or the cell body for %%%%casa_push)")
    @no_var_expand
    @line_cell_magic
    def casa_push(self, line: str, cell: str | None = None) -> Any:
        """Send a command to the servers, like ``client.push_command_request``.

        The rest of the line after the options is the command, exactly as
        typed (no ``$name`` or ``{name}`` expansion); put ``--`` before a
        command that starts with ``-`` and a letter. As a cell magic the cell
        body is the command: several statements, definitions, loops. An
        expression's value comes back as ``ret``.

        Non-blocking (the default) returns the list of request IDs, one per
        target server; ``%casa_get`` collects the responses. With ``-b`` it
        waits (with a progress bar after 0.5 s for several requests, 1 s for
        one), prints what
        the command wrote on each server as ``[server N] text``, and returns
        the response list, shown as a table.

        The first ``%casa_push`` starts the embedded cluster if none is
        running, and says so.

        Examples
        --------
        In [1]: %casa_push -b -t 1,2 casa_server_id * 10
        Out[1]:
        2 responses
        id  server  successful  ret  time    traceback
         1       1  True        10   0.00 s
         2       2  True        20   0.00 s

        In [2]: ids = %casa_push -t 2 print('hello')

        In [3]: ids
        Out[3]: [3]

        In [4]: %%casa_push -t 1,2
           ...: def task(vis, caltable):
           ...:     print(f'task on {vis}')
           ...:     return caltable
        Out[4]: [4, 5]

        In [5]: params = {'vis': 'a.ms', 'caltable': 'a.cal'}

        In [6]: %casa_push -b -p params task()
        [server 1] task on a.ms
        Out[6]:
        1 response
        id  server  successful  ret      time    traceback
         6       1  True        'a.cal'  0.00 s

        With ``--gang``, a cube ``tclean`` is imaged by all servers (one
        request per server, the master's first; see "Parallel cube imaging"
        in the documentation):

        In [7]: cube = {'vis': 'ngc5921.ms', 'imagename': 'cube', 'specmode': 'cube'}

        In [8]: %casa_push -b --gang -p cube tclean()
        """
        options, command = split_options(line, frozenset({"-t", "--target", "-p", "--parameters"}))
        args = parse_argstring(self.casa_push, options)
        if cell is None:
            if not command.strip():
                raise UsageError("%casa_push needs a command after its options, e.g. %casa_push -b 1 + 1")
        else:
            if command.strip():
                raise UsageError(
                    f"%%casa_push takes the command from the cell body; the line holds options only, got {command.strip()!r}"
                )
            command = cell
        with _usage_errors():
            compile_command(command)  # refuse bad syntax before starting anything
        parameters = None
        if args.parameters is not None:
            if not args.parameters.isidentifier():
                raise UsageError(f"-p/--parameters takes the name of a dict variable, got {args.parameters!r}")
            parameters = self._variable(args.parameters, "-p/--parameters")
            if not isinstance(parameters, dict):
                raise UsageError(f"-p/--parameters: {args.parameters!r} must be a dict, got {short(parameters)}")
        if args.gang and args.target is not None:
            targets = ",".join(map(str, args.target))
            raise UsageError(f"--gang runs on every server: it cannot be combined with -t/--target {targets}")
        client = self._client(start=True)
        with _usage_errors():
            if args.gang:
                ids = client.push_gang_request(command, parameters=parameters)
            else:
                ids = client.push_command_request(command, target_server=args.target, parameters=parameters)
        if not args.block:
            return ids
        return self._show(self._wait(client, ids, timeout=None))

    # ------------------------------------------------------------ get
    @magic_arguments()
    @argument("-b", "--block", action="store_true", help="wait until every listed request has a response")
    @argument("--timeout", type=_seconds, metavar="S", help="wait at most S seconds (implies --block); "
              "the requests keep running after that")
    @argument("ids", nargs="+", metavar="IDS", help="request IDs (3 4 or 3,4), or names of variables holding "
              "an ID or a list of IDs")
    @line_magic
    def casa_get(self, line: str) -> ResponseList:
        """Collect the responses of earlier requests, like ``client.get_command_response``.

        Without ``-b`` it returns the responses that are in now (requests
        still running are left out, and a line says how many). With ``-b``
        it waits for all of them. What the commands wrote on their servers is
        printed as ``[server N] text``; the response list is returned and
        shown as a table.

        Examples
        --------
        In [1]: ids = %casa_push -t 1,2 import time; time.sleep(2); print("slept")

        In [2]: %casa_get -b ids
        [server 1] slept
        [server 2] slept
        Out[2]:
        2 responses
        id  server  successful  ret   time    traceback
         1       1  True        None  2.00 s
         2       2  True        None  2.00 s
        """
        args = parse_argstring(self.casa_get, line)
        ids = self._request_ids(args.ids, "%casa_get")
        client = self._client()
        with _usage_errors():
            if args.block or args.timeout is not None:
                responses = self._wait(client, ids, timeout=args.timeout)
            else:
                responses = client.get_command_response(ids)
        if len(responses) < len(ids):
            print(f"{len(ids) - len(responses)} of {len(ids)} requests have no response yet (%casa_get -b waits).")
        return self._show(responses)

    # ------------------------------------------------------------ status
    @magic_arguments()
    @argument("--live", action="store_true", help="a view that updates itself about twice a second (servers, "
              "a task stream, totals) until closed or the cluster stops; see casa_magics.live_view()")
    @argument("--window", type=_seconds, metavar="S", help="--live: seconds of the task stream (default 180)")
    @line_magic
    def casa_status(self, line: str) -> ServerStatus | LiveView:
        """Show what every server is doing, like ``client.get_server_status``.

        Returns the status dict keyed by server ID (shown as a table: server,
        engine, host, pid, busy, current command, running for, queued
        requests, state). Starts no cluster.

        With ``--live``, a view that updates itself in place, also while
        other cells run (see :func:`casa_magics.live_view`): each server's
        state, running command, memory and CASA state, a task stream of the
        last ``--window`` seconds, and the totals. Without a widget front end
        it shows the state once.

        Examples
        --------
        In [1]: ids = %casa_push -t 1 import time; time.sleep(2)

        In [2]: %casa_status
        Out[2]:
        CASA server status
        server  engine  host  pid    busy  command                     running for  queued  state
             1       0  vm    15447  yes   import time; time.sleep(2)  0.4 s             1  ok
             2       1  vm    15446  no                                                  0  ok
        """
        args = parse_argstring(self.casa_status, line)
        if args.window is not None and not args.live:
            raise UsageError("--window applies only to %casa_status --live")
        client = self._client()
        if args.live:
            with _usage_errors():
                return live_view(client, window=WINDOW if args.window is None else args.window)
        return ServerStatus(client.get_server_status())

    # ------------------------------------------------------------ abort
    @magic_arguments()
    @argument("ids", nargs="+", metavar="IDS", help="request IDs (3 4 or 3,4), or names of variables holding "
              "an ID or a list of IDs")
    @line_magic
    def casa_abort(self, line: str) -> dict[int, str]:
        """Cancel requests: queued ones are dropped, running ones interrupted.

        Returns what happened to each, keyed by request ID. Their responses
        get status ``'cancelled'``.

        Examples
        --------
        In [1]: slow = %casa_push -t 1 import time; time.sleep(60)

        In [2]: %casa_abort slow
        Out[2]: {9: 'interrupted while running'}
        """
        args = parse_argstring(self.casa_abort, line)
        ids = self._request_ids(args.ids, "%casa_abort")
        with _usage_errors():
            return self._client().abort_command_request(ids)


# ---------------------------------------------------------------- extension
def load_ipython_extension(ipython: Any) -> None:
    """Register the ``%casa_*`` magics. Loading twice is harmless; no cluster starts."""
    if CasaMagics.__name__ not in ipython.magics_manager.registry:
        ipython.register_magics(CasaMagics)


def unload_ipython_extension(ipython: Any) -> None:
    """Remove the ``%casa_*`` magics (a running cluster is left alone)."""
    manager = ipython.magics_manager
    magics = manager.registry.pop(CasaMagics.__name__, None)
    if magics is None:
        return
    for kind, names in magics.magics.items():
        table = manager.magics[kind]
        for name in names:
            if getattr(table.get(name), "__self__", None) is magics:
                del table[name]
