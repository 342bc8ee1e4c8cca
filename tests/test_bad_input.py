"""Bad calls to the facade: one documented error, a message naming the value, nothing sent.

(The magics' own table of mistakes is in test_magics.py.)
"""

from __future__ import annotations

import pytest

from casa_magics import CommandRequestError

pytestmark = pytest.mark.needs_mpi


def push(**kwargs):
    return lambda c: c.push_command_request(**{"command": "1", **kwargs})


BAD_CALLS = [
    ("command not a string", push(command=42), r"^command must be a string, got 42$"),
    ("command None", push(command=None), r"^command must be a string, got None$"),
    ("command bytes", push(command=b"1"), r"^command must be a string, got b'1'$"),
    ("empty command", push(command=""), r"^command must not be empty, got ''$"),
    ("blank command", push(command="  \n"), r"^command must not be empty, got '  \\n'$"),
    ("syntax error", push(command="1 +"), r"^command '1 \+' is not valid Python: .* \(line 1\)$"),
    ("unclosed string", push(command="print('x)"), r"^command \"print\('x\)\" is not valid Python: "),
    ("unknown server", push(target_server=3), r"^unknown server 3: servers are \[1, 2\]$"),
    ("server zero", push(target_server=0), r"^unknown server 0: servers are \[1, 2\]$"),
    ("negative server", push(target_server=-1), r"^unknown server -1: servers are \[1, 2\]$"),
    ("float server", push(target_server=1.0), r"^target_server must be None, a server ID or a list of server IDs, got 1.0$"),
    ("bool server", push(target_server=True), r"^target_server must be None, a server ID or a list of server IDs, got True$"),
    ("string server", push(target_server="1,2"), r"^target_server must be None, a server ID or a list of server IDs, got '1,2'$"),
    ("empty server list", push(target_server=[]), r"^target_server must not be an empty list, got \[\]$"),
    ("unknown server in list", push(target_server=[1, 5]), r"^unknown server 5: servers are \[1, 2\]$"),
    ("nested server list", push(target_server=[[1]]), r"^target_server must be None, a server ID or a list of server IDs, got \[1\]$"),
    ("parameters a list", push(parameters=[1, 2]), r"^parameters must be a dict, got \[1, 2\]$"),
    ("parameters a string", push(parameters="vis='a.ms'"), r"^parameters must be a dict, got \"vis='a.ms'\"$"),
    ("parameter name not a name", push(parameters={"not a name": 1}), r"^parameter name must be a Python identifier, got 'not a name'$"),
    ("parameter name an int", push(parameters={1: 1}), r"^parameter name must be a Python identifier, got 1$"),
    ("block not a bool", push(block="yes"), r"^block must be True or False, got 'yes'$"),
    ("unknown request ID", lambda c: c.get_command_response([987654]), r"^unknown request ID 987654$"),
    ("request ID zero", lambda c: c.get_command_response(0), r"^request IDs are positive integers, got 0$"),
    ("negative request ID", lambda c: c.get_command_response([-3]), r"^request IDs are positive integers, got -3$"),
    ("float request ID", lambda c: c.get_command_response([1.5]), r"^request IDs must be integers or lists of integers, got 1.5$"),
    ("bool request ID", lambda c: c.get_command_response(True), r"^request IDs must be integers or lists of integers, got True$"),
    ("string request IDs", lambda c: c.get_command_response("1,2"), r"^request IDs must be integers or lists of integers, got '1,2'$"),
    ("get block not a bool", lambda c: c.get_command_response([1], block=1), r"^block must be True or False, got 1$"),
    ("event for unknown ID", lambda c: c.get_command_response_event([987654]), r"^unknown request ID 987654$"),
    ("abort unknown ID", lambda c: c.abort_command_request([987654]), r"^unknown request ID 987654$"),
    ("forget unknown ID", lambda c: c.forget_command_responses([987654]), r"^unknown request ID 987654$"),
    ("unknown log mode", lambda c: c.set_log_mode("loud"), r"^log mode must be one of \['unified', 'redirect', 'separated', 'console'\], got 'loud'$"),
    ("unknown log level", lambda c: c.set_log_level("CHATTY"), r"^unknown log level 'CHATTY'$"),
]


@pytest.mark.parametrize("call, message", [case[1:] for case in BAD_CALLS], ids=[case[0] for case in BAD_CALLS])
def test_bad_call_is_refused_and_changes_nothing(client, call, message):
    before = client.get_command_request_list()
    with pytest.raises(CommandRequestError, match=message) as raised:
        call(client)
    assert "\n" not in str(raised.value)
    assert client.get_command_request_list() == before
    assert client.push_command_request("'still working'", block=True)[0]["ret"] == "still working"


def test_a_bad_id_among_good_ones_cancels_nothing(client):
    (running,) = client.push_command_request("__import__('time').sleep(0.5) or 'done'", target_server=1)
    with pytest.raises(CommandRequestError, match=r"^unknown request ID 987654$"):
        client.abort_command_request([running, 987654])
    assert client.get_command_response(running, block=True, timeout=60)[0]["ret"] == "done"
