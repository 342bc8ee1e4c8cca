"""A lost server is replaced under its server ID, with fresh state, a bounded number of times."""

from __future__ import annotations

import os
import re
import signal
import sys
import time

import pytest

from casa_magics import CommandRequestError, ServerMap
from casa_magics.core.config import load_settings
from casa_magics.notebook.display import status_text
from casa_magics.core.errors import SettingError
from casa_magics.cluster.replacement import describe_exit

from .conftest import WAIT, kill_busy_server, wait_until


def identity(rank: int, pid: int) -> dict:
    return {"mpi": True, "rank": rank, "size": 2, "host": "node1", "pid": pid}


def test_a_replacement_takes_the_server_id_and_ends_the_single_world():
    servers = ServerMap({0: identity(0, 100), 1: identity(1, 101)})
    assert servers.one_world
    info = servers.replace(2, 5, {**identity(0, 200), "size": 1})
    assert (info.server, info.engine, info.rank, info.pid, info.replaced) == (2, 5, 0, 200, True)
    assert servers.engine_of(2) == 5 and servers.server_of(5) == 2 and servers.server_ids == [1, 2]
    assert not servers.one_world


def test_a_refused_replacement_is_told_to_the_dispatcher_not_written_into_its_text():
    from types import SimpleNamespace

    from casa_magics.cluster.replacement import MAX_TRIES, Replacer, start_replacement

    told = []
    replacer = Replacer.__new__(Replacer)
    replacer._tries = {2: [time.monotonic()] * MAX_TRIES}  # tried often enough, just now
    lost = "its process is gone"
    server = SimpleNamespace(info=SimpleNamespace(server=2), lost=lost)
    dispatcher = SimpleNamespace(
        session=SimpleNamespace(replacer=replacer), replacement_failed=lambda server_id, why: told.append((server_id, why))
    )
    assert start_replacement(dispatcher, server) is False
    assert told == [(2, f"{MAX_TRIES} replacements were started within 60 s, so it stays lost")]
    assert server.lost == lost  # the dispatcher words its reason


def test_exits_are_described():
    assert describe_exit(-9) == "killed by signal 9 (SIGKILL)"
    assert describe_exit(-9, oom_killed=True) == "killed by signal 9 (SIGKILL), probably by the kernel's out-of-memory killer"
    assert describe_exit(3) == "exited with status 3"
    assert describe_exit(None) == "how it ended is not known"


def test_the_replace_setting():
    assert load_settings({}).replace_lost is True
    assert load_settings({"CASA_MAGICS_REPLACE_LOST": "0"}).replace_lost is False
    with pytest.raises(SettingError, match=r"^CASA_MAGICS_REPLACE_LOST must be 0 or 1, got 'sometimes'$"):
        load_settings({"CASA_MAGICS_REPLACE_LOST": "sometimes"})


def replaced(client, server: int):
    state = client.get_server_status()[server]
    return state if state["replaced"] and not state["lost"] else None


@pytest.mark.needs_mpi
def test_a_killed_server_is_replaced_with_fresh_state(own_cluster, tmp_path):
    client = own_cluster(n=3, server_timeout=5)
    session = client.session
    assert session.servers_share_one_world()
    client.push_command_request("kept = 'state'", block=True, target_server=[1, 2, 3])
    old = session.servers.info(2)
    running, queued, others_busy, held = kill_busy_server(client, old.pid, tmp_path / "running-started")
    killed_at = time.monotonic()
    # Its requests end as for any lost server: never silently re-run.
    for response in client.get_command_response([running, queued], block=True, timeout=WAIT):
        assert response["status"] == "timeout" and response["successful"] is False
        assert f"Timeout: server 2 (host {old.host}, pid {old.pid}) was lost" in response["traceback"]
    state = wait_until(lambda: replaced(client, 2), message="server 2 replaced")
    took = time.monotonic() - killed_at
    assert took < 30, took
    note = state["replaced"]
    assert re.fullmatch(
        rf"server 2 was replaced at \d\d:\d\d:\d\d \(the old one, pid {old.pid}, was lost at \d\d:\d\d:\d\d: "
        r"killed by signal 9 \(SIGKILL\)(, probably by the kernel's out-of-memory killer)?\); its state is fresh",
        note,
    ), note
    new = session.servers.info(2)
    assert new.replaced and new.pid != old.pid and state["pid"] == new.pid
    assert not session.servers_share_one_world()
    assert f"ok; {note}" in status_text(client.get_server_status())
    # The requests that ended with the lost server still name it, not its replacement.
    assert {r["pid"] for r in client.get_command_response([running, queued])} == {old.pid}
    # The replacement answers a targeted push, with fresh state; its first response says so.
    first, second = (
        client.push_command_request(command, block=True, target_server=2)[0]
        for command in ("casa_server_id, 'kept' in dir()", "'again'")
    )
    assert first["ret"] == (2, False) and first["stderr"].startswith(f"casa_magics: {note}\n")
    assert second["ret"] == "again" and "replaced" not in second["stderr"]
    # The other servers kept their state; untargeted work went to live servers.
    assert [r["ret"] for r in client.push_command_request("kept", block=True, target_server=[1, 3])] == ["state", "state"]
    ran = client.get_command_response(held + others_busy, block=True, timeout=WAIT)
    assert all(r["successful"] for r in ran)
    assert [r["ret"] for r in ran[: len(held)]] == [r["server"] for r in ran[: len(held)]]


DIE_WHEN_REPLACING = """
import os, sys
if os.environ.get("CASA_MAGICS_REPLACES"):
    sys.exit(3)
os.execv(sys.executable, [sys.executable, "-m", "ipyparallel.engine", *sys.argv[1:]])
"""


@pytest.mark.needs_mpi
def test_a_server_that_dies_at_every_start_stays_lost_after_three_tries(own_cluster, tmp_path):
    wrapper = tmp_path / "die_when_replacing.py"
    wrapper.write_text(DIE_WHEN_REPLACING)
    client = own_cluster(n=2, server_timeout=5, engine_command=[sys.executable, str(wrapper)])
    os.kill(client.session.servers.info(2).pid, signal.SIGKILL)
    lost = wait_until(
        lambda: (client.get_server_status()[2]["lost"] or "") if "not replaced" in (client.get_server_status()[2]["lost"] or "") else None,
        message="server 2 given up on",
    )
    assert re.fullmatch(
        r"its (process is gone|engine died \(.*\)|engine unregistered from the controller); not replaced: the replacement "
        r"exited during start-up \(mpiexec( exit status 3)?, output: .*\); 3 replacements were started within 60 s, so it stays lost",
        lost,
    ), lost
    with pytest.raises(CommandRequestError) as refused:
        client.push_command_request("1", target_server=2)
    assert str(refused.value) == f"server 2 cannot take requests: {lost}"
    assert client.push_command_request("casa_server_id", block=True)[0]["ret"] == 1
