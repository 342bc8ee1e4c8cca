"""casampi's ``MPIEnvironment``, attribute by attribute, in the client and on every server.

The expected values are casampi 0.6.0's for a world of one client and N
servers (rank 0 is the client; servers are ranks 1..N), with the types its
``MPIEnvironment`` gives them. Servers are real MPI engines; the stand-in
``casampi`` modules are what every server gets when it is prepared.
"""

from __future__ import annotations

import os
import socket

import pytest

from casa_magics import MPIEnvironment
from casa_magics.core.world import serial_view

pytestmark = pytest.mark.needs_mpi

SERVERS = [1, 2]
HOST = socket.gethostname()

#: Every public attribute casampi 0.6.0's MPIEnvironment has in a process where MPI is enabled.
CASAMPI_ATTRIBUTES = {
    "hostname": str, "hostname_wo_domain": str, "mpi_initialized": bool, "mpi_world_size": int,
    "mpi_processor_rank": int, "mpi_pid": int, "mpi_version_info": tuple, "mpi_vendor_info": tuple,
    "mpi_version_str": str, "mpi_vendor_str": str, "mpi_vendor_version_str": str, "mpi_thread_safe_level": int,
    "mpi_thread_safe_level_str": str, "is_mpi_thread_safe": bool, "mpi_buffer_size_in_mb": int,
    "mpi_buffer_allocated": bool, "is_mpi_enabled": bool, "mpi_client_rank": int, "is_mpi_client": bool,
    "mpi_execution_role": str, "mpi_info_msg": str, "log_to_console": bool, "processor_origin": str,
    "command_handling_log_level": str, "mpi_any_tag": int, "mpi_any_source": int,
    "mpi_start_service_sleep_time": (int, float), "mpi_stop_service_sleep_time": (int, float),
    "mpi_check_start_service_sleep_time": (int, float), "mpi_check_stop_service_sleep_time": (int, float),
    "mpi_monitor_status_service_heartbeat": (int, float), "mpi_ping_status_request_handler_service_sleep_time": (int, float),
    "mpi_ping_status_response_handler_service_sleep_time": (int, float),
    "mpi_command_request_handler_service_sleep_time": (int, float),
    "mpi_command_response_handler_service_sleep_time": (int, float),
    "mpi_command_request_queue_service_sleep_time": (int, float),
    "mpi_push_command_request_block_mode_sleep_time": (int, float),
    "mpi_monitor_status_service_timeout_enabled": bool, "mpi_monitor_status_service_timeout": (int, float),
    "mpi_ping_status_request_handler_service_timeout": (int, float),
}
CASAMPI_METHODS = (
    "is_mpi_disabled_or_client", "mpi_comm_world_factory", "mpi_server_rank_list",
    "finalize_mpi_environment", "abort_mpi_environment", "setup_logger",
)

#: Evaluated on a server: every attribute of casampi's MPIEnvironment there, as {name: (type name, value)}.
SERVER_REPORT = (
    "(lambda M: {name: (type(getattr(M, name)).__name__, getattr(M, name)) for name in names})"
    "(__import__('casampi.MPIEnvironment', fromlist=['MPIEnvironment']).MPIEnvironment)"
)


def _type_ok(value, expected) -> bool:
    return isinstance(value, expected) and not (expected is int and isinstance(value, bool))


def test_the_client_has_every_attribute_of_casampis_with_its_type(client):
    for name, expected in CASAMPI_ATTRIBUTES.items():
        assert _type_ok(getattr(MPIEnvironment, name), expected), name
    for name in CASAMPI_METHODS:
        assert callable(getattr(MPIEnvironment, name)), name


def test_the_client_is_rank_0_of_a_world_of_the_servers_and_itself(client):
    assert MPIEnvironment.mpi_processor_rank == 0 == MPIEnvironment.mpi_client_rank
    assert MPIEnvironment.mpi_world_size == len(SERVERS) + 1
    assert MPIEnvironment.mpi_server_rank_list() == SERVERS
    assert (MPIEnvironment.is_mpi_enabled, MPIEnvironment.is_mpi_client) == (True, True)
    assert MPIEnvironment.mpi_execution_role == "MPIClient"
    assert MPIEnvironment.is_mpi_disabled_or_client() is True
    assert MPIEnvironment.log_to_console is True
    assert MPIEnvironment.processor_origin == "@" + HOST.split(".")[0] + ":MPIClient"
    assert MPIEnvironment.hostname == HOST and MPIEnvironment.mpi_pid == os.getpid()


def test_the_client_reports_the_servers_mpi_library(client):
    (server,) = client.push_command_request(
        "(lambda MPI: (MPI.get_vendor()[0], MPI.Get_version(), MPI.Query_thread()))(__import__('mpi4py.MPI', fromlist=['MPI']))",
        True, 1,
    )
    vendor, version, level = server["ret"]
    assert MPIEnvironment.mpi_vendor_str.startswith(vendor + " v")
    assert MPIEnvironment.mpi_version_info == tuple(version)
    assert MPIEnvironment.mpi_version_str == ".".join(map(str, version))
    assert MPIEnvironment.mpi_thread_safe_level == level
    assert MPIEnvironment.mpi_initialized is True


def test_every_server_has_every_attribute_with_casampis_type_and_its_own_rank(client):
    responses = client.push_command_request(SERVER_REPORT, True, SERVERS, {"names": list(CASAMPI_ATTRIBUTES)})
    for response in responses:
        assert response["successful"], response["traceback"]
        report = response["ret"]
        for name, expected in CASAMPI_ATTRIBUTES.items():
            kind = expected if isinstance(expected, tuple) else (expected,)
            assert report[name][0] in {k.__name__ for k in kind}, (name, report[name])
        values = {name: value for name, (_kind, value) in report.items()}
        assert values["mpi_processor_rank"] == response["server"]
        assert values["mpi_world_size"] == len(SERVERS) + 1
        assert (values["is_mpi_enabled"], values["is_mpi_client"]) == (True, False)
        assert values["mpi_execution_role"] == "" and values["log_to_console"] is False
        assert values["processor_origin"] == "@" + values["hostname_wo_domain"]
        assert values["mpi_pid"] == response["pid"] and values["hostname"] == response["host"]
        assert values["mpi_vendor_str"] == MPIEnvironment.mpi_vendor_str


def test_servers_import_every_casampi_module_and_refuse_to_be_clients(client):
    imports = (
        "import casampi, casampi.private.start_mpi\n"
        "from casampi.MPIEnvironment import MPIEnvironment\n"
        "from casampi.MPICommandClient import MPICommandClient\n"
        "from casampi import MPIInterface\n"
        "ranks = (MPIEnvironment.mpi_server_rank_list(), MPIEnvironment.is_mpi_disabled_or_client())"
    )
    for response in client.push_command_request(imports, True, SERVERS):
        assert response["successful"], response["traceback"]
    assert [r["ret"] for r in client.push_command_request("ranks", True, SERVERS)] == [(SERVERS, False)] * 2
    for command, what in (("MPICommandClient()", "MPICommandClient"), ("MPIInterface.MPIInterface.getCluster()", "MPIInterface.getCluster()")):
        (refused,) = client.push_command_request(command, True, 2)
        assert refused["traceback"].strip().splitlines()[-1] == (
            f"RuntimeError: {what} can only be used in the client: this process is casa_magics server 2, "
            "where CASA tasks run serially"
        )


def test_a_server_gives_its_mpi_world_and_refuses_to_end_the_cluster(client):
    # Duplicating a communicator is collective, as in casampi: every server takes part.
    worlds = client.push_command_request(
        "(lambda c: (c.Get_rank(), c.Get_size()))(MPIEnvironment.mpi_comm_world_factory())", True, SERVERS
    )
    assert [w["ret"] for w in worlds] == [(0, 2), (1, 2)]  # the servers' own MPI world: server k is rank k - 1
    (refused,) = client.push_command_request("MPIEnvironment.abort_mpi_environment()", True, 2)
    assert refused["traceback"].strip().splitlines()[-1] == (
        "RuntimeError: abort_mpi_environment() is for the client: a casa_magics server cannot end its cluster"
    )


def test_the_client_has_no_mpi_world_of_its_own(client):
    with pytest.raises(RuntimeError, match=r"^mpi_comm_world_factory\(\) needs an MPI process: this is the casa_magics client"):
        MPIEnvironment.mpi_comm_world_factory()


def test_a_serial_view_is_casas_without_mpi_and_only_in_its_block(client):
    with serial_view():
        assert (MPIEnvironment.is_mpi_enabled, MPIEnvironment.mpi_world_size, MPIEnvironment.processor_origin) == (False, 1, "")
        assert MPIEnvironment.is_mpi_disabled_or_client() is True
    assert MPIEnvironment.is_mpi_enabled is True


def test_an_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match=r"^type object 'MPIEnvironment' has no attribute 'mpi_bogus'$"):
        MPIEnvironment.mpi_bogus
