"""Every behaviour of ../shared/REFERENCE.md, on real MPI engines."""

from __future__ import annotations

import threading
import time

import pytest

from casa_magics import CommandClient, CommandRequestError, MPICommandClient, MPIEnvironment
from casa_magics.client.requests import RESPONSE_KEYS

from .conftest import WAIT, started_marker, wait_until

pytestmark = pytest.mark.needs_mpi


def push(client, command, **kwargs):
    return client.push_command_request(command, block=True, **kwargs)


# ---------------------------------------------------------------- servers
def test_server_rank_list_is_right_before_start_services(session):
    client = MPICommandClient()
    assert MPIEnvironment.mpi_server_rank_list() == [1, 2]
    assert client is MPICommandClient()


def test_servers_are_mpi_ranks_plus_one(client):
    ranks = client.push_command_request("__import__('mpi4py.MPI').MPI.COMM_WORLD.Get_rank()", block=True, target_server=[1, 2])
    assert [(r["server"], r["ret"]) for r in ranks] == [(1, 0), (2, 1)]
    assert push(client, "casa_server_id", target_server=[2, 1])[0]["ret"] == 2


def test_state_persists_on_each_server(client):
    push(client, "x = 1", target_server=[1])
    push(client, "x = 10", target_server=[2])
    assert push(client, "x + 1", target_server=[1])[0]["ret"] == 2
    assert push(client, "x + 1", target_server=[2])[0]["ret"] == 11


def test_state_is_shared_with_px(client, session):
    engine = session.servers.engine_of(2)
    session.client[engine].execute("from_px = 42", block=True)
    assert push(client, "from_px", target_server=2)[0]["ret"] == 42
    push(client, "from_facade = 'yes'", target_server=2)
    assert session.client[engine].pull("from_facade", block=True) == "yes"


# ------------------------------------------------------------ eval / exec
def test_expression_returns_value_in_eval_mode(client):
    (response,) = push(client, "6 * 7")
    assert (response["mode"], response["ret"], response["successful"]) == ("eval", 42, True)


def test_statements_run_in_exec_mode_with_ret_none(client):
    (response,) = push(client, "a = 3\nb = a * 2", target_server=1)
    assert (response["mode"], response["ret"], response["successful"]) == ("exec", None, True)
    assert push(client, "b", target_server=1)[0]["ret"] == 6


def test_command_that_compiles_as_neither_is_rejected_before_sending(client):
    before = len(client.get_command_request_list())
    with pytest.raises(CommandRequestError, match=r"command 'x = = 1' is not valid Python"):
        client.push_command_request("x = = 1")
    assert len(client.get_command_request_list()) == before


# ---------------------------------------------------------------- targets
def test_untargeted_request_goes_to_first_free_server(client, tmp_path):
    marker = tmp_path / "slow-started"
    slow = client.push_command_request(f"{started_marker(marker)}; import time; time.sleep(2)", target_server=1)
    wait_until(marker.exists, message="the slow request running on server 1")
    start = time.time()
    (quick,) = client.push_command_request("1 + 1", block=True)
    waited = time.time() - start
    assert quick["server"] == 2
    assert client.get_command_response(slow, block=False) == [], f"quick answered after {waited:.2f} s"
    client.get_command_response(slow, block=True, timeout=WAIT)


def test_untargeted_requests_wait_in_holding_queue_while_all_busy(client):
    busy = client.push_command_request("import time; time.sleep(1)", target_server=[1, 2])
    (held,) = client.push_command_request("'ran'")
    assert client.get_command_request_list()[held]["status"] == "holding queue"
    (response,) = client.get_command_response(held, block=True, timeout=WAIT)
    assert response["status"] == "response received" and response["ret"] == "ran"
    client.get_command_response(busy, block=True, timeout=WAIT)


def test_int_target_runs_on_that_server(client):
    assert push(client, "casa_server_id", target_server=2)[0]["server"] == 2


def test_list_target_makes_one_request_per_server_in_order(client):
    responses = push(client, "casa_server_id", target_server=[2, 1])
    assert [(r["server"], r["ret"]) for r in responses] == [(2, 2), (1, 1)]
    assert len({r["id"] for r in responses}) == 2


def test_commands_for_one_server_run_in_push_order(client):
    push(client, "order = []", target_server=1)
    ids = [client.push_command_request(f"order.append({i})", target_server=1) for i in range(200)]
    client.get_command_response(ids, block=True, timeout=WAIT)
    assert push(client, "order", target_server=1)[0]["ret"] == list(range(200))


# ------------------------------------------------------------- parameters
def test_parameters_exist_only_during_the_command(client):
    (response,) = push(client, "p + q", target_server=1, parameters={"p": 2, "q": 3})
    assert response["ret"] == 5 and response["parameters"] == {"p": 2, "q": 3}
    (after,) = push(client, "'p' in globals() or 'q' in globals()", target_server=1)
    assert after["ret"] is False


def test_parameters_do_not_overwrite_existing_names(client):
    push(client, "kept = 'original'", target_server=1)
    push(client, "kept", target_server=1, parameters={"kept": "temporary"})
    assert push(client, "kept", target_server=1)[0]["ret"] == "original"


def test_bare_call_with_parameters_becomes_keyword_call(client):
    push(client, "def task(vis, caltable, spw=()):\n    return (vis, caltable, list(spw))", target_server=[1, 2])
    params = {"vis": "uid.ms", "caltable": "cal-wvr", "spw": [1, 3, 5, 7]}
    (response,) = push(client, "task()", parameters=params)
    assert response["ret"] == ("uid.ms", "cal-wvr", [1, 3, 5, 7])
    assert response["mode"] == "eval"


def test_native_types_travel_in_parameters(client):
    import numpy as np

    (response,) = push(client, "arr.sum() + len(d)", target_server=2, parameters={"arr": np.arange(10), "d": {"a": 1}})
    assert response["ret"] == 46


# ---------------------------------------------------------------- returns
def test_non_blocking_push_returns_request_ids(client):
    one = client.push_command_request("1")
    two = client.push_command_request("2", target_server=[1, 2])
    assert len(one) == 1 and len(two) == 2
    assert one[0] < two[0] < two[1]
    assert [r["ret"] for r in client.get_command_response([one, two], block=True, timeout=WAIT)] == [1, 2, 2]


def test_get_accepts_int_list_and_nested_lists(client):
    a = client.push_command_request("'a'")
    b = client.push_command_request("'b'", target_server=[1, 2])
    assert [r["ret"] for r in client.get_command_response(a[0], block=True, timeout=WAIT)] == ["a"]
    assert [r["ret"] for r in client.get_command_response([b[1], a[0]], block=True, timeout=WAIT)] == ["b", "a"]
    assert [r["ret"] for r in client.get_command_response([a, b], block=True, timeout=WAIT)] == ["a", "b", "b"]


def test_non_blocking_get_leaves_out_pending_requests(client):
    quick = client.push_command_request("'done'", target_server=2, block=True)[0]["id"]
    slow = client.push_command_request("import time; time.sleep(1.5)", target_server=1)
    assert [r["id"] for r in client.get_command_response([quick, slow])] == [quick]
    assert len(client.get_command_response([quick, slow], block=True, timeout=WAIT)) == 2


def test_blocking_get_with_timeout_raises_and_loses_nothing(client):
    slow = client.push_command_request("import time; time.sleep(1.5); 'late'", target_server=1)
    with pytest.raises(TimeoutError, match=rf"requests \[{slow[0]}\] have no response after 0.2 s"):
        client.get_command_response(slow, block=True, timeout=0.2)
    assert client.get_command_response(slow, block=True, timeout=WAIT)[0]["successful"]


def test_unknown_request_id_is_an_error(client):
    with pytest.raises(CommandRequestError, match=r"^unknown request ID 987654$"):
        client.get_command_response([987654], block=True)


# ---------------------------------------------------------------- responses
def test_response_has_every_reference_key(client):
    (response,) = push(client, "1 + 1", target_server=1)
    assert set(RESPONSE_KEYS) <= set(response)
    assert response["status"] == "response received"
    assert response["traceback"] is None
    assert response["command"] == "1 + 1" and response["parameters"] is None
    assert response["server"] == 1 and response["host"] and response["pid"] > 0


def test_failure_carries_formatted_traceback(client):
    (response,) = push(client, "1 / 0", target_server=2)
    assert response["successful"] is False and response["ret"] is None
    assert "Traceback (most recent call last)" in response["traceback"]
    assert "ZeroDivisionError: division by zero" in response["traceback"]
    assert "runner.py" not in response["traceback"]  # none of casa_magics' own frames


def test_start_and_stop_times_are_measured_on_the_server(client):
    before = time.time()
    (response,) = push(client, "import time; time.sleep(0.3)", target_server=1)
    start, stop = response["command_start_time"], response["command_stop_time"]
    assert before - 1 < start < stop
    assert stop - start >= 0.29


def test_status_life_cycle(client):
    busy = client.push_command_request("import time; time.sleep(1)", target_server=[1, 2])
    (sent,) = client.push_command_request("'x'", target_server=1)
    (held,) = client.push_command_request("'y'")
    states = client.get_command_request_list()
    assert states[busy[0]]["status"] == "request sent"
    assert states[held]["status"] == "holding queue" and states[held]["server"] is None
    client.get_command_response([busy, sent, held], block=True, timeout=WAIT)
    responses = client.get_command_response_list()
    assert {responses[i]["status"] for i in (*busy, sent, held)} == {"response received"}


def test_stdout_and_stderr_are_kept_per_response(client):
    (response,) = push(client, "import sys; print('hello'); print('oops', file=sys.stderr)", target_server=1)
    assert response["stdout"] == "hello\n" and response["stderr"] == "oops\n"


# ---------------------------------------------------------------- monitoring
def test_server_status_has_reference_fields(client, tmp_path):
    marker = tmp_path / "slow-started"
    slow = client.push_command_request(f"{started_marker(marker)}; import time; time.sleep(1)", target_server=2)
    wait_until(marker.exists, message="the slow request running on server 2")
    status = client.get_server_status()
    assert sorted(status) == [1, 2]
    for key in ("rank", "processor", "pid", "busy", "command", "command_start_time", "timeout"):
        assert key in status[2]
    assert status[2]["busy"] is True and "sleep" in status[2]["command"]
    assert status[2]["rank"] == 1 and status[2]["timeout"] is False
    client.get_command_response(slow, block=True, timeout=WAIT)
    assert client.get_server_status()[2]["busy"] is False


def test_response_event_is_set_when_all_respond(client):
    ids = client.push_command_request("import time; time.sleep(0.5)", target_server=[1, 2])
    event = client.get_command_response_event(ids)
    assert isinstance(event, threading.Event) and not event.is_set()
    assert event.wait(WAIT)
    assert len(client.get_command_response(ids)) == 2


# ---------------------------------------------------------------- life cycle
def test_client_is_a_singleton_and_setup_calls_are_harmless(client):
    again = MPICommandClient()
    assert again is client
    for mode in ("redirect", "unified"):
        again.set_log_mode(mode)
    again.set_log_level("INFO")
    again.start_services()
    again.start_services()
    assert push(again, "'still here'")[0]["ret"] == "still here"


def test_seed_import_path_works():
    from mpi4casa.MPICommandClient import MPICommandClient as Seed
    from mpi4casa.MPIEnvironment import MPIEnvironment as SeedEnv

    assert Seed is MPICommandClient and SeedEnv is MPIEnvironment


def test_request_ids_increase_for_the_life_of_the_client(client):
    first = client.push_command_request("1", block=True)[0]["id"]
    second = client.push_command_request("1", target_server=[1, 2])
    assert first < second[0] < second[1]
    client.get_command_response(second, block=True, timeout=WAIT)


def test_forgotten_requests_become_unknown(client):
    ids = client.push_command_request("1", target_server=[1, 2])
    client.get_command_response(ids, block=True, timeout=WAIT)
    assert client.forget_command_responses(ids) == ids
    with pytest.raises(CommandRequestError, match=rf"unknown request ID {ids[0]}"):
        client.get_command_response(ids)


@pytest.mark.parametrize(
    "command",
    ["kw()  # see (docs)", "kw( )", "kw();", "(kw)()", "tools.kw()"],
)
def test_bare_call_forms_call_the_named_callable_with_parameters(client, command):
    define = "def kw(**named):\n    global seen\n    seen = sorted(named.items())\n    return seen\n"
    push(client, define + "class tools: kw = staticmethod(kw)", target_server=1)
    (response,) = push(client, command, target_server=1, parameters={"a": 5, "b": "(x)"})
    assert response["successful"], response["traceback"]
    called_with = [("a", 5), ("b", "(x)")]
    assert response["ret"] == (None if command.endswith(";") else called_with)
    assert push(client, "seen", target_server=1)[0]["ret"] == called_with


def test_an_empty_id_list_gives_an_empty_response_list(client):
    assert client.get_command_response([]) == []
    assert client.get_command_response([[], []], True, True) == []
    assert client.get_command_response_event([]).is_set()


def test_life_cycle_state_follows_casampis_numbers(client, session):
    assert client.get_lifecyle_state() == 1
    assert CommandClient(session).get_lifecyle_state() == 0
