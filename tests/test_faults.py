"""Faults on real MPI engines: killed and stopped servers, interrupts, odd results."""

from __future__ import annotations

import os
import signal
import time

import pytest

from casa_magics import CommandRequestError

from .conftest import WAIT

pytestmark = pytest.mark.needs_mpi


def test_killed_server_answers_timeout_and_the_rest_carry_on(own_cluster):
    client = own_cluster(n=3, server_timeout=5)
    client.push_command_request("kept = 'state'", block=True, target_server=[1, 3])
    info = client.session.servers.info(2)
    running = client.push_command_request("import time; time.sleep(30)", target_server=2)
    queued = client.push_command_request("'behind'", target_server=2)
    time.sleep(0.5)
    os.kill(info.pid, signal.SIGKILL)
    killed_at = time.time()
    responses = client.get_command_response([running, queued], block=True, timeout=WAIT)
    noticed_after = time.time() - killed_at
    for response in responses:
        assert response["status"] == "timeout" and response["successful"] is False, response["traceback"]
        assert f"Timeout: server 2 (host {info.host}, pid {info.pid}) was lost" in response["traceback"]
    assert noticed_after < 10
    with pytest.raises(CommandRequestError, match=r"^server 2 cannot take requests: its process is gone$"):
        client.push_command_request("1", target_server=2)
    status = client.get_server_status()
    assert status[2]["timeout"] is True and status[2]["lost"] == "its process is gone"
    # The other servers keep their state and keep working, untargeted requests included.
    assert [r["ret"] for r in client.push_command_request("kept", block=True, target_server=[1, 3])] == ["state", "state"]
    untargeted = [client.push_command_request("casa_server_id")[0] for _ in range(6)]
    assert {r["server"] for r in client.get_command_response(untargeted, block=True, timeout=WAIT)} <= {1, 3}
