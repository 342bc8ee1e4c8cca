"""Soak: 20,000 mixed requests on three servers, nothing lost, FIFO kept, memory released."""

from __future__ import annotations

import gc
import itertools

import psutil
import pytest

from casa_magics.client.requests import Request

from .conftest import WAIT

pytestmark = pytest.mark.needs_mpi

ROUNDS = 2
PER_ROUND = 10_000


def push_mixed_round(client, counters):
    """Push PER_ROUND requests of every target form; return (ids, expected per-server logs)."""
    ids, expected = [], {1: [], 2: [], 3: []}
    forms = itertools.cycle(["none", "int", "list", "none", "fail"])
    for i in range(PER_ROUND):
        form = next(forms)
        if form == "none":
            ids += client.push_command_request("casa_server_id")
        elif form == "fail":
            ids += client.push_command_request("1 / 0", target_server=(i % 3) + 1)
        elif form == "int":
            server = (i % 3) + 1
            counters[server] += 1
            expected[server].append(counters[server])
            ids += client.push_command_request(f"seen.append({counters[server]})", target_server=server)
        else:
            pair = [(i % 3) + 1, ((i + 1) % 3) + 1]
            for server in pair:
                counters[server] += 1
                expected[server].append(counters[server])
            # One request per server, each appending its own server's counter.
            ids += client.push_command_request(
                "seen.append(mine[casa_server_id])",
                target_server=pair,
                parameters={"mine": {s: counters[s] for s in pair}},
            )
    return ids, expected


@pytest.mark.timeout(600)
def test_soak_twenty_thousand_mixed_requests(own_cluster):
    client = own_cluster(n=3)
    gc.collect()
    others = sum(isinstance(o, Request) for o in gc.get_objects())  # other clients' requests in this process
    client.push_command_request("seen = []", block=True, target_server=[1, 2, 3])
    counters = {1: 0, 2: 0, 3: 0}
    process = psutil.Process()
    resident = []
    for _ in range(ROUNDS):
        ids, expected = push_mixed_round(client, counters)
        assert len(set(ids)) == len(ids)
        responses = client.get_command_response(ids, block=True, timeout=WAIT * 5)
        assert [r["id"] for r in responses] == ids  # every response, exactly once, in the order asked
        odd = [r for r in responses if r["status"] != "response received"]
        assert not odd, odd[:3]
        failures = [r for r in responses if not r["successful"]]
        assert failures and all("ZeroDivisionError" in r["traceback"] for r in failures)
        assert all(r["command"] == "1 / 0" for r in failures)
        logs = client.push_command_request("seen", block=True, target_server=[1, 2, 3])
        for server, log in zip((1, 2, 3), logs):
            assert log["ret"] == expected[server], f"server {server} ran out of order"
        client.push_command_request("seen.clear()", block=True, target_server=[1, 2, 3])
        for server in (1, 2, 3):
            expected[server].clear()
        client.forget_command_responses()
        gc.collect()
        resident.append(process.memory_info().rss)
    assert client.get_command_request_list() == {}
    left = sum(isinstance(o, Request) for o in gc.get_objects())
    assert left == others, f"{left - others} requests of this client are still alive"
    assert resident[-1] - resident[0] < 50_000_000, f"client memory grew by {(resident[-1] - resident[0]) / 1e6:.0f} MB"
