"""The embedded cluster is private: loopback only, owner-only keys, signed messages."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import psutil
import pytest
import zmq
from jupyter_client.session import Session

pytestmark = pytest.mark.needs_mpi


def connection_files(session) -> list[Path]:
    security = Path(session.cluster.profile_dir) / "security"
    return sorted(security.glob(f"ipcontroller-{session.cluster.cluster_id}-*.json"))


def test_controller_listens_on_loopback_only(session):
    controller = psutil.Process(session.cluster.controller.process.pid)
    processes = [controller, *controller.children(recursive=True)]
    listening = [c for p in processes for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert listening, "the controller should be listening"
    assert {c.laddr.ip for c in listening} == {"127.0.0.1"}


def test_connection_files_are_readable_by_the_owner_only(session):
    files = connection_files(session)
    assert {f.name.rsplit("-", 1)[1] for f in files} == {"client.json", "engine.json"}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    profile_dir = Path(session.cluster.profile_dir)
    assert stat.S_IMODE(profile_dir.stat().st_mode) == 0o700


def ask_for_connection(info: dict, key: bytes) -> bool:
    """Send a signed connection request to the controller; True if it answers."""
    context = zmq.Context.instance()
    socket = context.socket(zmq.DEALER)
    socket.linger = 0
    try:
        socket.connect(f"{info['interface']}:{info['registration']}")
        Session(key=key, signature_scheme=info["signature_scheme"]).send(socket, "connection_request", content={})
        return bool(socket.poll(3000))
    finally:
        socket.close()


def test_messages_signed_with_another_key_are_refused(session):
    client_file = next(f for f in connection_files(session) if f.name.endswith("client.json"))
    info = json.loads(client_file.read_text())
    assert ask_for_connection(info, info["key"].encode()) is True
    assert ask_for_connection(info, b"not-the-key") is False
