"""Every request gets an answer, and its parameters come back as the server left them (casampi's response).

Against the shared two-server cluster: values that one side cannot pickle or
the other cannot unpickle fail only their own request, with a one-line
traceback naming them, also when they travel in one message with others.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from casa_magics.core.errors import CommandRequestError

pytestmark = pytest.mark.needs_mpi

SUPPORT = str(Path(__file__).parent / "support")
#: Waits, on the server, until a file exists: holds a server busy without a fixed sleep.
GATE = "import os, time\nwhile not os.path.exists({path!r}): time.sleep(0.005)"


@pytest.fixture(scope="module")
def values(client):
    """The module answer_values, importable here and on both servers (taken off their sys.path after)."""
    sys.path.insert(0, SUPPORT)
    import answer_values

    setup = f"import sys; sys.path.insert(0, {SUPPORT!r}); import answer_values"
    assert all(r["successful"] for r in client.push_command_request(setup, True, [1, 2]))
    yield answer_values
    client.push_command_request(f"sys.path.remove({SUPPORT!r})", True, [1, 2])
    sys.path.remove(SUPPORT)


def one_line(response: dict) -> str:
    """The response's traceback, checked to be a single line."""
    assert response["successful"] is False
    lines = response["traceback"].strip().splitlines()
    assert len(lines) == 1, response["traceback"]
    return lines[0]


def held_in_one_message(client, tmp_path, commands: list[tuple[str, dict | None]]) -> list[dict]:
    """Push ``commands`` to server 1 while it is busy, so that they are sent together in one message."""
    gate = tmp_path / "open"
    busy = [client.push_command_request(GATE.format(path=str(gate)), target_server=1)[0] for _ in range(2)]
    ids = [client.push_command_request(c, target_server=1, parameters=p)[0] for c, p in commands]
    waiting = client._services()._servers[1].waiting
    assert [r.id for r in waiting] == ids  # held together: they leave as one batch
    gate.touch()
    responses = client.get_command_response(busy + ids, block=True, timeout=60)
    assert all(r["successful"] for r in responses[:2])
    return responses[2:]


# ------------------------------------------------------ parameters come back
@pytest.mark.parametrize("block", [True, False])
@pytest.mark.parametrize(
    "command, ret",
    [
        ("job.log.append(casa_server_id)", None),  # exec
        ("job.log.append(casa_server_id) or len(job.log)", 1),  # eval
        ("answer_values.note()", 1),  # a bare call: note(job=job)
    ],
)
def test_a_parameter_changed_on_each_server_comes_back_from_that_server(client, values, command, ret, block):
    job = values.Job("split")
    pushed = client.push_command_request(command, block, [1, 2], {"job": job, "n": 3})
    responses = pushed if block else client.get_command_response(pushed, block=True, timeout=60)
    for server, response in zip([1, 2], responses):
        assert response["successful"], response["traceback"]
        assert response["ret"] == ret
        assert list(response["parameters"]) == ["job", "n"] and response["parameters"]["n"] == 3
        assert response["parameters"]["job"].log == [server]  # each response has its own server's copy
    assert job.log == []  # the client's own object is not touched
    again = client.get_command_response([r["id"] for r in responses], block=True)
    assert [r["parameters"]["job"].log for r in again] == [[1], [2]]


def test_an_untargeted_request_brings_back_the_parameters_of_the_server_it_ran_on(client, values):
    response = client.push_command_request("job.log.append(casa_server_id)", True, None, {"job": values.Job("any")})[0]
    assert response["successful"] and response["parameters"]["job"].log == [response["server"]]


def test_push_mode_brings_back_the_servers_copy_of_what_it_stored(client, values):
    job = values.Job("kept")
    response = client.push_command_request("push", True, 2, {"kept_job": job, "label": "x"})[0]
    assert response["successful"] and response["mode"] == "push"
    copy = response["parameters"]["kept_job"]
    assert copy is not job and copy.name == "kept" and response["parameters"]["label"] == "x"
    changed = client.push_command_request("kept_job.log.append(1); del kept_job", True, 2)[0]
    assert changed["successful"] and changed["parameters"] is None


def test_a_failed_command_still_brings_back_its_parameters(client, values):
    response = client.push_command_request("job.log.append('before'); 1 / 0", True, 1, {"job": values.Job("f")})[0]
    assert not response["successful"] and "ZeroDivisionError" in response["traceback"]
    assert response["parameters"]["job"].log == ["before"]


# ---------------------------------------------------- unreadable values
def test_values_that_cannot_travel_back_fail_only_their_own_request_in_one_message(client, values, tmp_path):
    define = "class OnlyOnTheServer:\n    pass\n"
    assert client.push_command_request(define, True, 1)[0]["successful"]
    lock, local, broken, good = held_in_one_message(client, tmp_path, [
        ("__import__('threading').Lock()", None),  # cannot be pickled on the server
        ("OnlyOnTheServer()", None),  # a class of the server's __main__: cannot be unpickled here
        ("job.__dict__.update(broken=True) or job", {"job": values.Job("b")}),  # its __setstate__ raises here
        ("casa_server_id * 10", None),
    ])
    assert one_line(lock) == (
        "TypeError: the value of \"__import__('threading').Lock()\" (_thread.lock) cannot be sent back to the "
        "client: TypeError: cannot pickle '_thread.lock' object"
    )
    assert one_line(local).startswith(
        f"TypeError: the value of request {local['id']} (__main__.OnlyOnTheServer) from server 1 cannot be unpickled "
        "in the client: AttributeError: Can't get attribute 'OnlyOnTheServer'"
    )
    assert one_line(broken) == (
        f"TypeError: the value of request {broken['id']} (answer_values.Job) from server 1 cannot be unpickled in the "
        "client: ValueError: job 'b' was marked broken and cannot be restored; parameter 'job' (answer_values.Job) "
        "from server 1 cannot be unpickled in the client: ValueError: job 'b' was marked broken and cannot be restored"
    )
    assert lock["ret"] is local["ret"] is broken["ret"] is None
    assert good["successful"] and good["ret"] == 10
    assert client.push_command_request("casa_server_id", True, 1)[0]["ret"] == 1  # the server still answers


def test_a_parameter_the_command_made_unpicklable_fails_its_request_naming_it(client, values, tmp_path):
    lock, good = held_in_one_message(client, tmp_path, [
        ("job.lock = __import__('threading').Lock(); job.log.append(1)", {"job": values.Job("l"), "other": [1]}),
        ("job.log.append(casa_server_id)", {"job": values.Job("fine")}),
    ])
    assert one_line(lock) == (
        "TypeError: parameter 'job' (answer_values.Job) cannot be sent back to the client after the command: "
        "TypeError: cannot pickle '_thread.lock' object"
    )
    assert lock["parameters"]["job"].log == [] and lock["parameters"]["other"] == [1]  # the client's own copy
    assert good["successful"] and good["parameters"]["job"].log == [1]


def test_a_parameter_the_server_cannot_unpickle_fails_its_request_before_the_command_runs(client, values, monkeypatch, tmp_path):
    class OnlyOnTheClient:
        pass

    OnlyOnTheClient.__module__, OnlyOnTheClient.__qualname__ = "__main__", "OnlyOnTheClient"
    monkeypatch.setattr(sys.modules["__main__"], "OnlyOnTheClient", OnlyOnTheClient, raising=False)
    broken = values.Job("sent broken")
    broken.broken = True
    marker = tmp_path / "ran"
    local, bad_state, good = held_in_one_message(client, tmp_path, [
        (f"open({str(marker)!r}, 'w').close()", {"thing": OnlyOnTheClient()}),
        ("job", {"job": broken}),
        ("casa_server_id", None),
    ])
    assert one_line(local).startswith(
        "TypeError: parameter 'thing' (__main__.OnlyOnTheClient) cannot be unpickled on server 1: AttributeError: "
    )
    assert not marker.exists()
    assert one_line(bad_state) == (
        "TypeError: parameter 'job' (answer_values.Job) cannot be unpickled on server 1: ValueError: job 'sent "
        "broken' was marked broken and cannot be restored"
    )
    assert good["successful"] and good["ret"] == 1


def test_a_parameter_the_client_cannot_pickle_is_refused_at_push_and_nothing_is_sent(client):
    import threading

    before = max(client.get_command_request_list(), default=0)
    with pytest.raises(CommandRequestError) as refused:
        client.push_command_request("None", True, [1, 2], {"fine": 1, "lock": threading.Lock()})
    assert str(refused.value) == (
        "parameter 'lock' (_thread.lock) cannot be sent to the servers: TypeError: cannot pickle '_thread.lock' object"
    )
    assert max(client.get_command_request_list(), default=0) == before
    assert client.push_command_request("casa_server_id", True, 2)[0]["ret"] == 2


def test_casa_get_shows_an_unreadable_value_as_a_failed_request(client, values):
    from IPython import get_ipython
    from IPython.testing.globalipapp import start_ipython

    start_ipython()  # once per process; later calls return None
    shell = get_ipython()
    shell.run_line_magic("load_ext", "casa_magics")
    try:
        shell.user_ns["broken_job"] = {"job": values.Job("shown")}
        ids = shell.run_line_magic("casa_push", "-t 1 -p broken_job job.broken = True")
        responses = shell.run_line_magic("casa_get", f"-b {ids[0]}")
    finally:
        shell.user_ns.pop("broken_job", None)
        shell.run_line_magic("unload_ext", "casa_magics")
    assert len(responses) == 1 and one_line(responses[0]) == (
        "TypeError: parameter 'job' (answer_values.Job) from server 1 cannot be unpickled in the client: "
        "ValueError: job 'shown' was marked broken and cannot be restored"
    )
    assert "cannot be unpickled in the client" in repr(responses)
    assert client.push_command_request("casa_server_id", True, 1)[0]["ret"] == 1


@pytest.mark.casa
def test_a_gangs_master_brings_back_its_parameters(client, values):
    from casa_magics.cluster.casa_env import casa_available
    from casa_magics.client.gang import gang_unavailable

    if not casa_available():
        pytest.skip("needs the casa extra (casatools): make install")
    why = gang_unavailable(client)
    if why is not None:
        pytest.skip(f"these servers cannot run a gang: {why}")
    master, worker = client.push_gang_request("job.log.append(casa_server_id) or 100", True, {"job": values.Job("g")})
    assert master["successful"] and master["ret"] == 100 and master["parameters"]["job"].log == [1]
    assert worker["successful"] and worker["parameters"] is None and worker["ret"]["joined"] is False
