"""Servers' memory: figures in the status, and a limit that ends a request instead of the machine."""

from __future__ import annotations

import psutil
import pytest

from casa_magics import ClusterError, ClusterSession
from casa_magics.core.config import load_settings
from casa_magics.core.errors import SettingError
from casa_magics.cluster.memory_limit import casarc_memory_limit, effective_memory_limit
from casa_magics.core.units import format_bytes, parse_memory_size

from .conftest import WAIT, wait_until

MB = 1024**2


@pytest.mark.parametrize(
    ("text", "size"),
    [("4GB", 4 * 1024**3), ("500MB", 500 * MB), ("1.5G", int(1.5 * 1024**3)), ("2 GiB", 2 * 1024**3), ("123456", 123456), (1000, 1000)],
)
def test_sizes_are_read_in_powers_of_1024(text, size):
    assert parse_memory_size(text) == size


@pytest.mark.parametrize("text", ["four GB", "4XB", "-1GB", "0", ""])
def test_a_bad_memory_limit_setting_is_named_in_one_line(text):
    environ = {"CASA_MAGICS_MEMORY_LIMIT": text} if text else {"CASA_MAGICS_MEMORY_LIMIT": " "}
    with pytest.raises(SettingError) as raised:
        load_settings(environ)
    assert str(raised.value) == f"CASA_MAGICS_MEMORY_LIMIT must be a size like 4GB, 500MB or a number of bytes, got {environ['CASA_MAGICS_MEMORY_LIMIT']!r}"


def test_a_bad_memory_limit_argument_starts_nothing():
    with pytest.raises(ClusterError, match=r"^memory_limit: a memory size must be like 4GB, 500MB or a number of bytes, got 'lots'$"):
        ClusterSession.start(n=1, memory_limit="lots")


def test_format_bytes():
    assert [format_bytes(v) for v in (512, 1536, 1288490188, 3 * 1024**4)] == ["512 B", "1.5 KB", "1.2 GB", "3 TB"]


def test_casarc_memory_settings_are_read_as_casacore_reads_them(tmp_path, monkeypatch):
    first, second = tmp_path / "site.casarc", tmp_path / "user.casarc"
    first.write_text("system.resources.memory: 2048\n")
    second.write_text("# mine\nsystem.resources.memory: 512\nlogger.default: x\n")
    assert casarc_memory_limit([first, second]) == (512 * MB, f"system.resources.memory: 512 in {second}")
    second.write_text("system.resources.memfrac: 50\n")
    assert casarc_memory_limit([second])[0] == psutil.virtual_memory().total // 2
    assert casarc_memory_limit([tmp_path / "missing"]) == (None, None)
    monkeypatch.setenv("CASARCFILES", str(first))
    assert effective_memory_limit(None) == (2048 * MB, f"system.resources.memory: 2048 in {first}")
    assert effective_memory_limit(100 * MB) == (100 * MB, "CASA_MAGICS_MEMORY_LIMIT")


def test_the_status_shows_memory_figures(client):
    status = client.get_server_status()
    total = psutil.virtual_memory().total
    for state in status.values():
        assert 20 * MB < state["memory"] < 2048 * MB  # an engine with numpy, not yet CASA
        assert 0 < state["available_memory"] <= total


GROW = """
def grow():
    import time, numpy
    blocks = []
    for _ in range(300):  # at most 3 GB, should the limit fail
        blocks.append(numpy.ones(10 * 1024 * 1024 // 8))
        time.sleep(0.01)
    return 'grew to 3 GB'
grow()
"""


@pytest.mark.needs_mpi
def test_a_request_over_the_memory_limit_is_ended_and_the_server_lives_on(own_cluster):
    client = own_cluster(n=2, memory_limit=600 * MB)
    assert client.session.memory_limit == 600 * MB
    before = client.get_server_status()[2]
    assert before["memory_limit"] == 600 * MB and before["memory"] < 600 * MB
    client.push_command_request("kept = 'state'", block=True, target_server=2)
    (request,) = client.push_command_request(GROW, target_server=2)
    (ended,) = client.get_command_response(request, block=True, timeout=WAIT)
    assert ended["successful"] is False and ended["status"] == "response received"
    last_line = ended["traceback"].strip().splitlines()[-1]
    assert last_line.startswith("casa_magics.server.memory.MemoryLimitExceeded: server 2 used "), last_line
    assert last_line.endswith(f", over the memory limit of 600 MB; request {ended['id']} ended"), last_line
    used = float(last_line.split(" used ")[1].split()[0]) * (1024 if " GB," in last_line else 1)
    assert 600 < used < 1600, last_line  # MB: past the limit, by at most a few samples' growth
    # The server lives on, with its state, and its memory went back down.
    (after,) = client.push_command_request("kept, casa_server_id", block=True, target_server=2)
    assert after["ret"] == ("state", 2)
    wait_until(lambda: client.get_server_status()[2]["memory"] < 600 * MB, message="server 2's memory back under the limit")
    assert client.get_server_status()[1]["memory"] < 600 * MB
