"""casampi's ``MPIInterface``: the cluster object casatasks' imaging code drives.

casatasks reaches the servers in two ways. Multi-MS tasks use
:class:`~casa_magics.MPICommandClient` directly; ``tclean`` (and
``sdintimaging``, ``deconvolve``) go through ``MPIInterface.getCluster()``
and its ``_cluster`` attribute, whose methods (``pgc``, ``odo``,
``check_job``, ...) are thin conveniences over the same client. Both share
the process-wide client, session and server map.

Server IDs are casampi's engine numbers here: ``get_engines()`` is
``[1, ..., N]``, the contiguous range casatasks indexes with ``node - 1``.

Runs in the client.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from casa_magics.client.client import MPICommandClient
from casa_magics.core.world import process_role
from casa_magics.casampi.cube_routing import last_serial_reason
from casa_magics.server.gang_member import is_cpp_worker_start

__all__ = ["MPIInterface", "MPIInterfaceCore", "CPP_MPI_NOTICE", "prompt_imager_job_checks", "JobClock"]

#: Printed when casatasks asks for CASA's C++ MPI workers in this process (cube imaging
#: that could not run as a gang on the servers); ``{why}`` says why not.
CPP_MPI_NOTICE = (
    "casa_magics: cube imaging runs serially in this process: {why} "
    "(see 'Which CASA code runs in parallel' in casa_magics' documentation)"
)


#: casatasks' parallel imaging helper, which polls its jobs with ``time.sleep(1)``.
IMAGER_HELPER = "casatasks.private.imagerhelpers.parallel_imager_helper"


class JobClock:
    """Stands in for the ``time`` module in casatasks' parallel imaging helper.

    The helper's only use of ``time`` is ``time.sleep(1)`` before each look
    at its jobs, so every imaging step (a few per major cycle) cost at least
    a second. Here that sleep ends as soon as every request sent is
    answered, and lasts at most the time asked. Anything else is the real
    :mod:`time`.
    """

    def __init__(self, client: "MPICommandClient") -> None:
        self._client = client

    def sleep(self, seconds: float) -> None:
        self._client.wait_until_idle(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def prompt_imager_job_checks(enable: bool) -> None:
    """Put a :class:`JobClock` in casatasks' imaging helper (``enable``), or its ``time`` back."""
    helper = sys.modules.get(IMAGER_HELPER)
    if helper is None:
        return
    if enable and getattr(helper, "time", None) is time:
        helper.time = JobClock(MPICommandClient())
    elif not enable and isinstance(getattr(helper, "time", None), JobClock):
        helper.time = time


def _refuse_on_a_server(what: str) -> None:
    if process_role() == "server":
        raise RuntimeError(f"{what} is for the client: this process is a casa_magics server, where CASA runs serially")


class MPIInterfaceCore:
    """The ``_cluster`` object of :class:`MPIInterface` (casampi's ``MPIInterfaceCore``).

    Every instance works on the process-wide :class:`~casa_magics.MPICommandClient`.
    """

    def __init__(self) -> None:
        _refuse_on_a_server("MPIInterfaceCore")
        self._client = MPICommandClient()

    # ------------------------------------------------------------ life cycle
    def start_cluster(self, cl_file: str | None = None) -> None:
        """Start the client's services (the cluster comes up if needed)."""
        self._client.set_log_mode(MPIInterface._log_mode)
        self._client.start_services()

    def stop_cluster(self) -> None:
        """Stop the client's services (and a cluster it started)."""
        self._client.stop_services()

    def get_engines(self) -> list[int]:
        """Server IDs ``[1, ..., N]``."""
        return list(self._client.session.servers.server_ids)

    def get_nodes(self) -> list[str]:
        """Host names the servers run on, each once."""
        return sorted({info.host for info in self._client.session.servers})

    # -------------------------------------------------------------- commands
    def pgc(self, commands: str | dict[int, str], block: bool = True) -> list:
        """Run a command on every server, or ``{server: command}`` each on its server.

        Returns the responses (``block=True``) or the request IDs.
        casatasks' ``si.initmpi()`` is not sent: it only arrives here when a
        C++-MPI task runs serially in this process (see
        :mod:`casa_magics.client.gang`), and :data:`CPP_MPI_NOTICE` says why.
        """
        if isinstance(commands, dict):
            ids = [self._client.push_command_request(command, False, server)[0] for server, command in commands.items()]
            return self._client.get_command_response(ids, block, True)
        if is_cpp_worker_start(commands):
            why = last_serial_reason() or "CASA's C++ MPI cannot use these servers"
            print(CPP_MPI_NOTICE.format(why=why), file=sys.stderr)
            return []
        return self._client.push_command_request(commands, block, self.get_engines())

    def odo(self, job: str, nodes: int | list[int]) -> list[int]:
        """Send a command to the given server(s) without waiting; returns request IDs."""
        return self._client.push_command_request(job, False, nodes)

    def execute(self, job: str, nodes: int | list[int]) -> list[dict[str, Any]]:
        """Run a command on the given server(s) and return the responses."""
        return self._client.push_command_request(job, True, nodes)

    def push(self, variables: dict[str, Any], targets: Any = None) -> list[dict[str, Any]]:
        """Define ``variables`` on the servers (all when ``targets`` is None or ``'all'``)."""
        servers = self.get_engines() if targets is None or targets == "all" else list(targets)
        return self._client.push_command_request("push", True, servers, dict(variables))

    def pull(self, varname: str = "", targets: int | list[int] | None = None) -> dict[int, Any]:
        """Evaluate ``varname`` on the servers: ``{server: value}`` (None where it failed)."""
        responses = self.pgc(varname) if targets is None else self.execute(varname, targets)
        return {response["server"]: response["ret"] for response in responses}

    def check_job(self, jobId: Any, verbose: bool = True) -> bool:
        """True once every listed request succeeded; raises if any failed.

        Raises
        ------
        Exception
            One exception for all failed requests, naming each one's server
            and quoting its traceback (casampi's behaviour).
        """
        ids = list(jobId)
        responses = self._client.get_command_response(ids, False, verbose)
        failures = [r for r in responses if not r["successful"]]
        if failures:
            raise Exception(
                "\n".join(f"Exception executing command in server {r['server']}: {r['traceback']}" for r in failures)
            )
        return len(responses) == len(ids)

    # ---------------------------------------------------------------- status
    def get_server_status(self) -> dict[int, dict[str, Any]]:
        return self._client.get_server_status()

    def get_command_request_list(self) -> dict[int, dict[str, Any]]:
        return self._client.get_command_request_list()

    def get_command_response_list(self) -> dict[int, dict[str, Any]]:
        return self._client.get_command_response_list()


class MPIInterface:
    """casampi's ``MPIInterface``: ``MPIInterface.getCluster()`` and its ``_cluster``.

    A singleton, as in casampi: every ``MPIInterface()`` is the same object.

    Examples
    --------
    >>> cluster = MPIInterface.getCluster()             # doctest: +SKIP
    >>> cluster._cluster.pull("os.getpid()")            # doctest: +SKIP
    {1: 4711, 2: 4712}
    """

    #: Log mode handed to the client when the cluster starts (casampi's name).
    _log_mode = "unified"
    _instance: "MPIInterface | None" = None

    def __new__(cls) -> "MPIInterface":
        _refuse_on_a_server("MPIInterface")
        if cls._instance is None:
            instance = super().__new__(cls)
            instance._cluster = MPIInterfaceCore()
            cls._instance = instance
        return cls._instance

    @staticmethod
    def set_log_mode(logmode: str) -> None:
        """Remember the log mode for the next start (casampi's ``'redirect'``, ...)."""
        MPIInterface._log_mode = logmode

    @staticmethod
    def getCluster() -> "MPIInterface":
        """The cluster, with the client's services started.

        casatasks' imaging helper is loaded by now: its one-second job polls
        are made to end when the jobs do (see :class:`JobClock`).
        """
        cluster = MPIInterface()
        cluster.start_cluster()
        prompt_imager_job_checks(True)
        return cluster

    def isClusterRunning(self) -> bool:
        return self._cluster._client.get_lifecyle_state() == 1

    def init_cluster(self, clusterfile: str | None = None, project: str | None = None) -> None:
        self.start_cluster()

    def start_cluster(self) -> None:
        self._cluster.start_cluster()

    def stop_cluster(self) -> None:
        self._cluster.stop_cluster()

    def do_and_record(self, cmd: str, id: int | list[int] | None = None, group: str = "", subMS: str = "") -> list[int]:
        return self._cluster.odo(cmd, id)

    def get_engine_store(self, id: int) -> str | None:
        """The working directory of server ``id`` (where its commands run)."""
        return self._cluster.execute("__import__('os').getcwd()", id)[0]["ret"]

    def set_log_level(self, log_level: str) -> None:
        """See :meth:`casa_magics.CommandClient.set_log_level`."""
        self._cluster._client.set_log_level(log_level)

    @staticmethod
    def print_table(table: list[list[str]]) -> None:
        """Print rows of strings as aligned columns (casampi's helper)."""
        widths = [max(len(str(row[column])) for row in table) for column in range(len(table[0]))] if table else []
        for row in table:
            print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())

    def get_status(self) -> list[list[str]]:
        """Print and return a table of every request: a header row, then one row per request.

        Rows come running first, then held, timed out, answered and
        cancelled; columns are the request ID, server, host, status,
        command, elapsed seconds and outcome, as in casampi.
        """
        core = self._cluster
        requests = core.get_command_request_list()
        responses = core.get_command_response_list()
        hosts = {server: status["processor"] for server, status in core.get_server_status().items()}
        table = [["JOB ID", "SERVER", "HOSTNAME", "QUEUE STATUS", "COMMAND", "ELAPSED TIME (s)", "EXECUTION STATUS"]]
        for status in _STATUS_ORDER:
            for request_id, request in sorted(requests.items()):
                if request["status"] == status:
                    table.append(_status_row(request_id, request, responses.get(request_id), hosts))
        MPIInterface.print_table(table)
        return table


#: The order of :meth:`MPIInterface.get_status`'s rows: running, held, timed out, answered, cancelled.
_STATUS_ORDER = ("request sent", "holding queue", "timeout", "response received", "cancelled")


def _status_row(request_id: int, request: dict, response: dict | None, hosts: dict[int, str]) -> list[str]:
    server = request["server"]
    status = request["status"]
    start = (response or request).get("command_start_time")
    stop = (response or request).get("command_stop_time")
    if status == "holding queue":
        elapsed, outcome = "N/A", "pending"
    elif status == "request sent":
        elapsed, outcome = ("%.2f" % (time.time() - start) if start else "unset"), "pending"
    elif status in ("timeout", "cancelled"):
        elapsed, outcome = ("%.2f" % (time.time() - start) if start else "unset"), status
    else:
        elapsed = "%.2f" % (stop - start) if start is not None and stop is not None else "unset"
        if not response or not response["successful"]:
            outcome = "exception raised"
        elif isinstance(response["ret"], bool):
            outcome = f"completed - {response['ret']}"
        else:
            outcome = "completed"
    return [str(request_id), str(server), hosts.get(server, ""), status, str(request["command"]), elapsed, outcome]
