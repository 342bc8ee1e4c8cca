"""The %casa_* magics in a real IPython shell and a real Jupyter kernel, on real MPI engines.

Shell tests run on the shared two-server cluster of ``conftest.py`` (the
process-wide session the magics use). The kernel tests drive one kernel
through a whole life: loading, the first push starting an embedded cluster,
progress, an interrupted wait, stop, ``start -n``, and connecting to the
shared cluster by profile and by connection file.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import sys
import time
from pathlib import Path

import pytest
from IPython import get_ipython
from IPython.core.error import UsageError
from IPython.testing.globalipapp import start_ipython

from casa_magics.notebook.display import ResponseList, ServerStatus
from casa_magics.notebook.magics import CasaMagics, load_ipython_extension, unload_ipython_extension

from .conftest import WAIT, started_marker, wait_until

pytestmark = pytest.mark.needs_mpi


@pytest.fixture(scope="module")
def ip(client):
    """A real IPython shell with the extension loaded, on the shared cluster."""
    start_ipython()  # once per process; later calls return None
    shell = get_ipython()
    shell.run_line_magic("load_ext", "casa_magics")
    yield shell
    shell.run_line_magic("unload_ext", "casa_magics")


def line(ip, text):
    """Run ``%magic args`` the way IPython does and return the magic's value."""
    name, _, rest = text.partition(" ")
    return ip.run_line_magic(name.lstrip("%"), rest)


def requests_known(client) -> int:
    return len(client.get_command_request_list())


# ---------------------------------------------------------------- loading
def test_load_registers_every_magic_and_twice_is_harmless(ip):
    manager = ip.magics_manager
    first = manager.registry["CasaMagics"]
    load_ipython_extension(ip)
    assert manager.registry["CasaMagics"] is first
    for name in ("casa_cluster", "casa_push", "casa_get", "casa_status", "casa_abort"):
        assert ip.find_line_magic(name).__self__ is first
    assert ip.find_cell_magic("casa_push").__self__ is first
    assert ip.find_cell_magic("casa_get") is None


def test_unload_removes_the_magics_and_load_brings_them_back(ip):
    unload_ipython_extension(ip)
    unload_ipython_extension(ip)  # twice is harmless too
    assert ip.find_line_magic("casa_push") is None and "CasaMagics" not in ip.magics_manager.registry
    with pytest.raises(UsageError, match="Line magic function `%casa_push` not found"):
        ip.run_line_magic("casa_push", "1")
    load_ipython_extension(ip)
    assert isinstance(ip.find_line_magic("casa_push").__self__, CasaMagics)


def test_help_is_generated_from_docstring_and_options(ip):
    doc = ip.find_line_magic("casa_push").__doc__
    assert "::\n\n  %casa_push [-b] [-t SERVERS] [-p NAME] [-g] [command ...]" in doc
    assert "In [1]:" in doc and "-t SERVERS, --target SERVERS" in doc
    assert "%casa_get [-b] [--timeout S] IDS [IDS ...]" in ip.find_line_magic("casa_get").__doc__


# ---------------------------------------------------------------- push / get
def test_non_blocking_push_returns_request_ids(ip, client):
    ids = line(ip, "%casa_push -t 1,2 casa_server_id * 10")
    assert type(ids) is list and len(ids) == 2 and all(type(i) is int for i in ids)
    responses = client.get_command_response(ids, block=True, timeout=WAIT)
    assert [r["ret"] for r in responses] == [10, 20]


def test_blocking_push_returns_the_plain_response_list(ip, client):
    responses = line(ip, "%casa_push -b -t 2,1 casa_server_id")
    assert isinstance(responses, ResponseList) and isinstance(responses, list)
    assert responses == client.get_command_response([r["id"] for r in responses])
    assert [(r["server"], r["ret"], r["successful"]) for r in responses] == [(2, 2, True), (1, 1, True)]


def test_untargeted_push_runs_once(ip):
    (response,) = line(ip, "%casa_push --block 6 * 7")
    assert response["ret"] == 42 and response["target_server"] is None


def test_command_is_the_rest_of_the_line_verbatim(ip):
    ip.user_ns["x"] = "expanded"
    result = ip.run_cell("%casa_push -b -t 1 '$x {x}  -b'  # not an option")
    assert result.result[0]["ret"] == "$x {x}  -b"
    assert result.result[0]["command"] == "'$x {x}  -b'  # not an option"


def test_double_dash_ends_the_options_and_negative_numbers_are_commands(ip):
    line(ip, "%casa_push -b -t 1 y = 4")
    assert line(ip, "%casa_push -b -t 1 -- -y")[0]["ret"] == -4
    assert line(ip, "%casa_push -b -t 1 -3 + 1")[0]["ret"] == -2


def test_target_option_forms(ip):
    assert [r["server"] for r in line(ip, "%casa_push -b --target=2 casa_server_id")] == [2]
    assert [r["server"] for r in line(ip, "%casa_push -b -t2,1 casa_server_id")] == [2, 1]


def test_parameters_name_a_dict_in_the_namespace(ip):
    line(ip, "%casa_push -b -t 1,2 def task(vis, spw=()):\n    return vis, list(spw)")
    ip.user_ns["params"] = {"vis": "a.ms", "spw": [1, 3]}
    (response,) = line(ip, "%casa_push -b -p params task()")
    assert response["ret"] == ("a.ms", [1, 3]) and response["parameters"] == {"vis": "a.ms", "spw": [1, 3]}
    (named,) = line(ip, "%casa_push -b -t 2 --parameters params vis")
    assert named["ret"] == "a.ms"


def test_cell_magic_sends_the_cell_body(ip):
    cell = "def count(n):\n    total = 0\n    for i in range(n):\n        total += i\n    return total\nsummed = count(5)\n"
    responses = ip.run_cell_magic("casa_push", "-b -t 1,2", cell)
    assert [r["mode"] for r in responses] == ["exec", "exec"]
    assert [r["ret"] for r in line(ip, "%casa_push -b -t 1,2 summed")] == [10, 10]
    ids = ip.run_cell_magic("casa_push", "-t 2", "count(4)")
    assert line(ip, f"%casa_get -b {ids[0]}")[0]["ret"] == 6


@pytest.mark.casa
def test_gang_push_runs_once_on_every_server_the_master_first(ip):
    responses = line(ip, "%casa_push -b --gang casa_server_id * 7")
    assert [r["server"] for r in responses] == [1, 2]
    assert responses[0]["ret"] == 7
    assert responses[1]["command"] == "synthesisimager().initmpi()"
    assert responses[1]["ret"]["joined"] is False  # the master's command never asked for workers


def test_gang_push_with_a_target_is_a_usage_error_and_sends_nothing(ip, client):
    before = requests_known(client)
    with pytest.raises(UsageError, match=r"^--gang runs on every server: it cannot be combined with -t/--target 1,2$"):
        line(ip, "%casa_push --gang -t 1,2 1")
    assert requests_known(client) == before


def test_cell_magic_through_run_cell_is_not_expanded(ip):
    result = ip.run_cell("%%casa_push -b -t 1\n'{x} $x'\n")
    assert result.result[0]["ret"] == "{x} $x"


def test_stdout_and_stderr_appear_prefixed_and_stay_in_responses(ip, capsys):
    responses = line(ip, "%casa_push -b -t 1,2 import sys; print('hello', casa_server_id); print('oops', file=sys.stderr)")
    captured = capsys.readouterr()
    assert "[server 1] hello 1\n[server 2] hello 2\n" in captured.out
    assert "[server 1] oops\n[server 2] oops\n" in captured.err
    assert [r["stdout"] for r in responses] == ["hello 1\n", "hello 2\n"]
    assert [r["stderr"] for r in responses] == ["oops\n", "oops\n"]


def test_get_accepts_ids_commas_and_variables(ip, client, capsys):
    first = line(ip, "%casa_push -t 1 print('one'); 1")
    second = line(ip, "%casa_push -t 1,2 'two'")
    ip.user_ns.update(first=first, second=second, single=second[1])
    a, b, c = first[0], *second
    client.get_command_response([first, second], block=True, timeout=WAIT)
    capsys.readouterr()
    for ids in (f"{a} {b} {c}", f"{a},{b},{c}", f"{a}, {b},{c}", "first second", f"first {b} single", f"[{a}, {b}]"):
        responses = line(ip, f"%casa_get {ids}")
        assert type(responses) is ResponseList
    assert [r["id"] for r in line(ip, "%casa_get -b first second")] == [a, b, c]
    assert [r["id"] for r in line(ip, "%casa_get first single")] == [a, c]
    assert "[server 1] one\n" in capsys.readouterr().out


def test_non_blocking_get_leaves_out_pending_requests_and_says_so(ip, client, capsys):
    slow = line(ip, "%casa_push -t 1 import time; time.sleep(1)")
    quick = line(ip, "%casa_push -b -t 2 'quick'")[0]["id"]
    responses = line(ip, f"%casa_get {quick} {slow[0]}")
    assert [r["id"] for r in responses] == [quick]
    assert "1 of 2 requests have no response yet (%casa_get -b waits).\n" in capsys.readouterr().out
    assert len(line(ip, f"%casa_get -b --timeout {WAIT} {quick},{slow[0]}")) == 2


def test_get_timeout_is_a_usage_error_and_loses_nothing(ip):
    (slow,) = line(ip, "%casa_push -t 2 __import__('time').sleep(1) or 'late'")
    with pytest.raises(UsageError, match=rf"^requests \[{slow}\] have no response after 0.2 s; they keep running: %casa_get -b {slow} waits again$"):
        line(ip, f"%casa_get --timeout 0.2 {slow}")
    assert line(ip, f"%casa_get -b {slow}")[0]["ret"] == "late"


# ---------------------------------------------------------------- progress
def test_quick_single_request_shows_no_progress(ip, capsys):
    line(ip, "%casa_push -b -t 1 1 + 1")
    assert "requests done" not in capsys.readouterr().err


def test_wait_on_several_requests_shows_progress_then_erases_it(ip, capsys):
    line(ip, "%casa_push -b -t 1,2 import time; time.sleep(1.2)")
    err = capsys.readouterr().err
    assert re.search(r"\r0/2 requests done \[\.{20}\] \d\.\d s", err), err
    assert err.endswith("\r")  # the line is blanked out at the end


def test_long_wait_on_one_request_shows_progress(ip, capsys):
    line(ip, "%casa_push -b -t 2 import time; time.sleep(1.5)")
    err = capsys.readouterr().err
    assert re.search(r"\r0/1 requests done \[\.{20}\] \d\.\d s", err), err


# ---------------------------------------------------------------- status / abort
def test_status_shows_a_table_and_returns_the_status_dict(ip, client, tmp_path):
    marker = tmp_path / "slow-started"
    (slow,) = line(ip, f"%casa_push -t 2 {started_marker(marker)}; import time; time.sleep(1)")
    wait_until(marker.exists, message="the slow request running on server 2")
    status = line(ip, "%casa_status")
    assert type(status) is ServerStatus and isinstance(status, dict) and sorted(status) == [1, 2]
    assert status[2]["busy"] is True and "sleep" in status[2]["command"]
    assert set(status[1]) == set(client.get_server_status()[1])
    assert '<td class="casa-busy">yes</td>' in status._repr_html_()
    client.get_command_response(slow, block=True, timeout=WAIT)


def test_status_text_appears_in_the_shell(ip, capsys):
    ip.run_cell("%casa_status")
    out = capsys.readouterr().out
    assert "CASA server status (logs in " in out and "\nserver  engine  host" in out and "busy  command  running for  queued  state" in out


def test_abort_cancels_a_running_request(ip, tmp_path):
    marker = tmp_path / "slow-started"
    slow = line(ip, f"%casa_push -t 1 {started_marker(marker)}; import time; time.sleep(30)")
    wait_until(marker.exists, message="the slow request running on server 1")
    ip.user_ns["slow"] = slow
    outcome = line(ip, "%casa_abort slow")
    assert type(outcome) is dict and list(outcome) == slow and "interrupted" in outcome[slow[0]]
    (response,) = line(ip, f"%casa_get -b --timeout {WAIT} slow")
    assert response["status"] == "cancelled" and "KeyboardInterrupt" in response["traceback"]
    assert line(ip, f"%casa_abort {slow[0]}") == {slow[0]: "already finished (cancelled)"}


# ---------------------------------------------------------------- cluster
def test_cluster_status_describes_the_running_cluster(ip, session, capsys):
    servers = line(ip, "%casa_cluster status")
    assert servers is session.servers
    assert capsys.readouterr().out == f"Running: embedded cluster of 2 MPI servers (logs in {session.run_dir}).\n"


@pytest.mark.parametrize("action", ["start", "start -n 3", "connect --profile other"])
def test_second_cluster_is_refused(ip, action):
    with pytest.raises(UsageError, match=r"^a cluster is already running \(embedded cluster of 2 MPI servers\): %casa_cluster stop first$"):
        line(ip, f"%casa_cluster {action}")


# ---------------------------------------------------------------- mistakes
PUSH_MISTAKES = [
    ("-t 9 1", r"^unknown server 9: servers are \[1, 2\]$"),
    ("-t 1,9 1", r"^unknown server 9: servers are \[1, 2\]$"),
    ("-t 1,x 1", r"^argument -t/--target: takes server IDs separated by commas, got '1,x'$"),
    ("-t", r"^argument -t/--target: expected one argument$"),
    ("-x 1", r"^unrecognized arguments: -x$"),
    ("--blocking 1", r"^unrecognized arguments: --blocking$"),
    ("-p nope task()", r"^-p/--parameters: no variable named 'nope'$"),
    ("-p not_a_dict task()", r"^-p/--parameters: 'not_a_dict' must be a dict, got 3$"),
    ("-p a.b task()", r"^-p/--parameters takes the name of a dict variable, got 'a.b'$"),
    ("-b", r"^%casa_push needs a command after its options, e.g. %casa_push -b 1 \+ 1$"),
    ("", r"^%casa_push needs a command after its options"),
    ("x = = 1", r"^command 'x = = 1' is not valid Python: invalid syntax \(line 1\)$"),
]


@pytest.mark.parametrize("args, message", PUSH_MISTAKES)
def test_push_mistakes_are_one_line_usage_errors_and_send_nothing(ip, client, args, message):
    ip.user_ns["not_a_dict"] = 3
    before = requests_known(client)
    with pytest.raises(UsageError, match=message):
        line(ip, f"%casa_push {args}")
    assert requests_known(client) == before


def test_cell_magic_line_holds_options_only(ip):
    with pytest.raises(UsageError, match=r"^%%casa_push takes the command from the cell body; the line holds options only, got '1 \+ 1'$"):
        ip.run_cell_magic("casa_push", "-b 1 + 1", "2")
    with pytest.raises(UsageError, match=r"^command must not be empty, got '\\n'$"):
        ip.run_cell_magic("casa_push", "-b", "\n")


GET_MISTAKES = [
    ("987654", r"^unknown request ID 987654$"),
    ("-b 987654", r"^unknown request ID 987654$"),
    ("nosuch", r"^%casa_get: no variable named 'nosuch'$"),
    ("text", r"^%casa_get: variable 'text' must hold a request ID or a list of them, got 'abc'$"),
    ("3.5", r"^%casa_get: request IDs are integers or a variable name, got '3.5'$"),
    ("0", r"^request IDs are positive integers, got 0$"),
    (",", r"^%casa_get: no request IDs given$"),
    ("", r"^the following arguments are required: IDS$"),
    ("--timeout -1 3", r"^argument --timeout: must be a positive number of seconds, got '-1'$"),
    ("--timeout soon 3", r"^argument --timeout: must be a positive number of seconds, got 'soon'$"),
    ("-x 3", r"^unrecognized arguments: -x$"),
]


@pytest.mark.parametrize("args, message", GET_MISTAKES)
def test_get_mistakes_are_one_line_usage_errors(ip, args, message):
    ip.user_ns["text"] = "abc"
    with pytest.raises(UsageError, match=message):
        line(ip, f"%casa_get {args}")


@pytest.mark.parametrize(
    "text, message",
    [
        ("%casa_abort 987654", r"^unknown request ID 987654$"),
        ("%casa_abort nosuch", r"^%casa_abort: no variable named 'nosuch'$"),
        ("%casa_abort", r"^the following arguments are required: IDS$"),
        ("%casa_status now", r"^unrecognized arguments: now$"),
        ("%casa_cluster", r"^the following arguments are required: action$"),
        ("%casa_cluster restart", r"^argument action: invalid choice: 'restart' \(choose from "),
        ("%casa_cluster start -n 0", r"^argument -n: must be a positive integer, got '0'$"),
        ("%casa_cluster start -n two", r"^argument -n: must be a positive integer, got 'two'$"),
        ("%casa_cluster start --timeout 0", r"^argument --timeout: must be a positive number of seconds, got '0'$"),
        ("%casa_cluster start --profile p", r"^--profile does not apply to %casa_cluster start$"),
        ("%casa_cluster start --connection-file f", r"^--connection-file does not apply to %casa_cluster start$"),
        ("%casa_cluster stop -n 2", r"^-n does not apply to %casa_cluster stop$"),
        ("%casa_cluster status --cluster-id c", r"^--cluster-id does not apply to %casa_cluster status$"),
        ("%casa_cluster stop --casampi", r"^--casampi does not apply to %casa_cluster stop$"),
        ("%casa_cluster status --casampi", r"^--casampi does not apply to %casa_cluster status$"),
        ("%casa_cluster start --memory-limit lots", r"^argument --memory-limit: must be a size like 4GB, 500MB or a number of bytes, got 'lots'$"),
        ("%casa_cluster stop --memory-limit 4GB", r"^--memory-limit does not apply to %casa_cluster stop$"),
        ("%casa_cluster stop --no-replace", r"^--replace does not apply to %casa_cluster stop$"),
    ],
)
def test_other_mistakes_are_one_line_usage_errors(ip, text, message):
    with pytest.raises(UsageError, match=message):
        line(ip, text)


def test_usage_errors_show_as_one_line_without_traceback(ip, capsys):
    result = ip.run_cell("%casa_push -t 7 1")
    assert isinstance(result.error_in_exec, UsageError)
    assert capsys.readouterr().err == "UsageError: unknown server 7: servers are [1, 2]\n"


# ---------------------------------------------------------------- a real kernel
class Kernel:
    """A Jupyter kernel (the venv's python3 kernel) and the outputs of each execution."""

    def __init__(self, env: dict[str, str]) -> None:
        from jupyter_client.manager import start_new_kernel

        self.manager, self.client = start_new_kernel(kernel_name="python3", env=env, startup_timeout=WAIT)

    def execute(self, code: str) -> str:
        return self.client.execute(code, store_history=True)

    def collect(self, msg_id: str, timeout: float = WAIT) -> "Outputs":
        outputs = Outputs()
        deadline = time.monotonic() + timeout
        while True:
            try:
                message = self.client.get_iopub_msg(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(f"no idle from the kernel within {timeout} s; got {outputs.messages}") from None
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = message["msg_type"], message["content"]
            if kind == "status" and content["execution_state"] == "idle":
                return outputs
            outputs.add(kind, content)

    def run(self, code: str, timeout: float = WAIT) -> "Outputs":
        return self.collect(self.execute(code), timeout)

    def shutdown(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=False)


class Outputs:
    def __init__(self) -> None:
        self.messages: list[tuple[str, dict]] = []

    def add(self, kind: str, content: dict) -> None:
        if kind not in ("status", "execute_input"):
            self.messages.append((kind, content))

    def stream(self, name: str) -> str:
        return "".join(c["text"] for k, c in self.messages if k == "stream" and c["name"] == name)

    @property
    def stdout(self) -> str:
        return self.stream("stdout")

    @property
    def stderr(self) -> str:
        return self.stream("stderr")

    def of(self, kind: str) -> list[dict]:
        return [c for k, c in self.messages if k == kind]

    @property
    def result(self) -> dict:
        (result,) = self.of("execute_result")
        return result["data"]


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    home = tmp_path_factory.mktemp("kernel")
    env = dict(
        os.environ,
        PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
        IPYTHONDIR=str(home / "ipython"),
        CASA_MAGICS_RUN_DIR=str(home / "run"),
        CASA_MAGICS_ENGINES="2",
    )
    for name in ("CASA_MAGICS_PROFILE", "CASA_MAGICS_CLUSTER_ID", "CASA_MAGICS_CONNECTION_FILE"):
        env.pop(name, None)
    running = Kernel(env)
    yield running
    running.run("%casa_cluster stop")
    running.shutdown()


def test_kernel_loading_starts_nothing_and_unload_removes(kernel):
    assert kernel.run("%load_ext casa_magics").messages == []
    assert kernel.run("%load_ext casa_magics").stdout.startswith("The casa_magics extension is already loaded")
    assert kernel.run("%casa_cluster status").stdout == (
        "No cluster is running: %casa_cluster start starts one (so does the first %casa_push).\n"
    )
    no_cluster = "UsageError: no cluster is running: %casa_cluster start starts one (so does the first %casa_push)\n"
    assert kernel.run("%casa_status").stderr == no_cluster
    assert kernel.run("%casa_get 1").stderr == no_cluster
    kernel.run("%unload_ext casa_magics")
    assert "UsageError: Line magic function `%casa_push` not found." in kernel.run("%casa_push 1").stderr
    kernel.run("%load_ext casa_magics")


def test_kernel_first_push_starts_the_embedded_cluster_and_shows_html(kernel):
    out = kernel.run("%casa_push -b -t 1,2 import sys; print('hi from', casa_server_id); print('careful', file=sys.stderr)")
    lines = out.stdout.splitlines()
    assert lines[0] == "No cluster was running: started embedded cluster of 2 MPI servers (%casa_cluster status shows it)."
    assert lines[1:] == ["[server 1] hi from 1", "[server 2] hi from 2"]
    assert out.stderr == "[server 1] careful\n[server 2] careful\n"
    html = out.result["text/html"]
    assert html.startswith('<table class="casa-magics"><caption>2 responses</caption>')
    assert out.result["text/plain"].startswith("2 responses\nid  server  successful  ret   time    traceback\n")
    # No progress bar for a quick wait. This first wait follows the cluster's start and may
    # last over PROGRESS_AFTER_SEVERAL on a busy machine; a wait for answers already in may not.
    again = kernel.run("%casa_get -b 1 2")
    assert again.of("display_data") == [] and again.result["text/plain"] == out.result["text/plain"]

    failed = kernel.run("%casa_push -b -t 2 1 / 0")
    assert "<details><summary>ZeroDivisionError: division by zero</summary><pre>Traceback" in failed.result["text/html"]


def test_kernel_progress_is_one_display_updated_until_complete(kernel):
    out = kernel.run("%casa_push -b -t 1,2 __import__('time').sleep(1.2) or 'done'")
    (shown,) = out.of("display_data")
    display_id = shown["transient"]["display_id"]
    assert shown["data"]["text/html"].startswith('<div class="casa-magics-progress"><progress value="0" max="2"')
    updates = out.of("update_display_data")
    assert updates and {u["transient"]["display_id"] for u in updates} == {display_id}
    assert '<progress value="2" max="2"' in updates[-1]["data"]["text/html"]
    assert updates[-1]["data"]["text/plain"].startswith("2/2 requests done [####################]")
    assert "'done'" in out.result["text/html"]


def test_kernel_interrupted_wait_says_how_to_resume(kernel):
    msg_id = kernel.execute("%casa_push -b -t 1 import time; time.sleep(20)")
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:  # interrupt once the progress bar is up
        message = kernel.client.get_iopub_msg(timeout=WAIT)
        if message["parent_header"].get("msg_id") == msg_id and message["msg_type"] == "display_data":
            break
    kernel.manager.interrupt_kernel()
    out = kernel.collect(msg_id)
    assert out.of("error")[0]["ename"] == "KeyboardInterrupt"
    assert "Stopped waiting; the requests keep running: %casa_get -b " in out.stderr
    request = int(out.stderr.split("%casa_get -b ")[1].split()[0])
    assert kernel.run(f"%casa_abort {request}").result["text/plain"].startswith(f"{{{request}: 'interrupted")
    assert "[cancelled] KeyboardInterrupt" in kernel.run(f"%casa_get -b {request}").result["text/plain"]


def test_kernel_stop_then_start_with_n(kernel):
    assert "Stopped embedded cluster of 2 MPI servers.\n" in kernel.run("%casa_cluster stop").stdout
    assert kernel.run("%casa_cluster stop").stdout == "No cluster is running.\n"
    started = kernel.run("%casa_cluster start -n 1 --timeout 60")
    assert started.stdout.startswith("Started embedded cluster of 1 MPI server (logs in ")
    assert '<td class="casa-server">1</td>' in started.result["text/html"]
    refused = kernel.run("%casa_cluster start")
    assert refused.stderr.startswith("UsageError: a cluster is already running (embedded cluster of 1 MPI server)")
    assert kernel.run("%casa_push -b casa_server_id").result["text/plain"].splitlines()[2].split()[1:4] == ["1", "True", "1"]
    assert "Stopped embedded cluster of 1 MPI server.\n" in kernel.run("%casa_cluster stop").stdout


def test_kernel_connects_by_profile_and_by_connection_file(kernel, session, tmp_path):
    cluster = session.cluster
    connection_file = Path(cluster.profile_dir) / "security" / f"ipcontroller-{cluster.cluster_id}-client.json"
    # The shared cluster, made visible under a profile of the kernel's IPYTHONDIR.
    kernel.run(f"import os; os.environ['CASA_MAGICS_RUN_DIR'] = {str(session.run_dir)!r}")
    ipython_dir = Path(kernel.run("import os; print(os.environ['IPYTHONDIR'])").stdout.strip())
    security = ipython_dir / "profile_casatest" / "security"
    security.mkdir(parents=True, exist_ok=True)
    shutil.copy(connection_file, security / connection_file.name)

    bad = kernel.run("%casa_cluster connect --profile nosuch --timeout 2")
    assert bad.stderr.startswith("UsageError: cannot connect to cluster (profile 'nosuch', cluster_id ''): no connection file ")
    assert bad.stderr.count("\n") == 1

    connected = kernel.run(f"%casa_cluster connect --profile casatest --cluster-id {cluster.cluster_id} -n 2 --timeout {WAIT}")
    assert connected.stderr == ""
    assert connected.stdout == f"Connected to cluster at profile 'casatest', cluster_id '{cluster.cluster_id}': 2 servers.\n"
    assert "<td class=\"casa-server\">2</td>" in connected.result["text/html"]
    assert "'kernel was here'" in kernel.run("%casa_push -b -t 2 'kernel was here'").result["text/plain"]
    left = kernel.run("%casa_cluster stop")
    assert left.stdout == f"Disconnected from cluster at profile 'casatest', cluster_id '{cluster.cluster_id}', which keeps running.\n"

    by_file = kernel.run(f"%casa_cluster connect --connection-file {connection_file}")
    assert by_file.stdout == f"Connected to cluster at {connection_file}: 2 servers.\n"
    assert "Disconnected from" in kernel.run("%casa_cluster stop").stdout
    assert not session.stopped
    assert session.client[session.servers.engine_of(1)].apply_sync(lambda: 1 + 1) == 2


def test_a_bad_setting_is_a_one_line_usage_error_at_first_use(ip, monkeypatch):
    monkeypatch.setenv("CASA_MAGICS_START_TIMEOUT", "soon")
    with pytest.raises(UsageError, match=r"^CASA_MAGICS_START_TIMEOUT must be a positive number, got 'soon'$"):
        line(ip, "%casa_cluster start -n 2")
