"""Server IDs follow MPI ranks, whatever order engines register in."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from casa_magics import CommandRequestError, ServerMap


def identity(rank, pid, mpi=True):
    return {"mpi": mpi, "rank": rank if mpi else None, "size": 3, "host": "node", "pid": pid}


def test_map_uses_rank_not_engine_id():
    servers = ServerMap({0: identity(2, 100), 1: identity(0, 101), 2: identity(1, 102)})
    assert servers.server_ids == [1, 2, 3]
    assert [servers.engine_of(s) for s in (1, 2, 3)] == [1, 2, 0]
    assert servers.server_of(0) == 3


def test_map_falls_back_to_engine_ids_with_a_warning():
    with pytest.warns(RuntimeWarning, match="engines are not MPI processes: server IDs follow engine IDs"):
        servers = ServerMap({3: identity(None, 1, mpi=False), 5: identity(None, 2, mpi=False)})
    assert servers.server_ids == [4, 6]
    assert servers.engine_of(6) == 5


@pytest.mark.parametrize(
    "target, message",
    [
        (3, r"^unknown server 3: servers are \[1, 2\]$"),
        ([1, 9], r"^unknown server 9: servers are \[1, 2\]$"),
        ([], r"^target_server must not be an empty list, got \[\]$"),
        ("1", r"^target_server must be None, a server ID or a list of server IDs, got '1'$"),
        (1.0, r"^target_server must be None, a server ID or a list of server IDs, got 1.0$"),
        (True, r"^target_server must be None, a server ID or a list of server IDs, got True$"),
        (0, r"^unknown server 0: servers are \[1, 2\]$"),
        (-1, r"^unknown server -1: servers are \[1, 2\]$"),
    ],
)
def test_bad_targets_are_refused(target, message):
    servers = ServerMap({0: identity(0, 1), 1: identity(1, 2)})
    with pytest.raises(CommandRequestError, match=message):
        servers.parse_targets(target)


def test_map_is_shown_as_a_table():
    servers = ServerMap({0: identity(1, 100), 1: identity(0, 101)})
    text = repr(servers)
    assert text.splitlines()[1].split() == ["1", "1", "0", "node", "(101)"]
    assert "<table" in servers._repr_html_() and "101" in servers._repr_html_()


@pytest.mark.needs_mpi
def test_engines_registering_in_reverse_rank_order_map_right(own_cluster):
    wrapper = Path(__file__).parent / "support" / "reversed_rank_engine.py"
    client = own_cluster(n=3, engine_command=[sys.executable, str(wrapper)])
    servers = client.session.servers
    engines = [servers.engine_of(s) for s in servers.server_ids]
    assert engines == [2, 1, 0], repr(servers)
    ranks = client.push_command_request(
        "__import__('mpi4py.MPI').MPI.COMM_WORLD.Get_rank()", block=True, target_server=[1, 2, 3]
    )
    assert [(r["server"], r["ret"], r["engine"]) for r in ranks] == [(1, 0, 2), (2, 1, 1), (3, 2, 0)]
    pids = client.session.client[:].apply_sync(__import__("os").getpid)
    assert [r["pid"] for r in ranks] == [pids[2], pids[1], pids[0]]
