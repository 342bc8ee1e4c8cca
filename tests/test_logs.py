"""Servers' CASA logs: where they are and reading their end."""

from __future__ import annotations

import pytest

from casa_magics import CommandRequestError
from casa_magics.cluster.casa_env import casa_available
from casa_magics.cluster.logs import casa_log_tail, read_tail, server_log_path


def test_read_tail_returns_the_last_lines(tmp_path):
    log = tmp_path / "casa.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert read_tail(log, 3) == "line 97\nline 98\nline 99\n"
    assert read_tail(tmp_path / "missing.log") == ""


@pytest.mark.needs_mpi
def test_each_server_has_its_own_log_in_the_run_directory(session):
    assert server_log_path(session, 2) == session.run_dir / "casa-server-2.log"
    with pytest.raises(CommandRequestError, match=r"^unknown server 7: servers are \[1, 2\]$"):
        server_log_path(session, 7)
    with pytest.raises(CommandRequestError, match=r"^lines must be a positive integer, got 0$"):
        casa_log_tail(1, lines=0, session=session)


@pytest.mark.needs_mpi
@pytest.mark.skipif(not casa_available(), reason="needs the casa extra (make install)")
def test_casa_log_tail_shows_what_a_server_logged(client, session):
    client.push_command_request(
        "import casatasks; casatasks.casalog.post('hello from server ' + str(casa_server_id))",
        block=True,
        target_server=[1, 2],
    )
    assert "hello from server 2" in casa_log_tail(2, lines=50, session=session)
    assert "hello from server 2" not in casa_log_tail(1, lines=50, session=session)


@pytest.mark.needs_mpi
@pytest.mark.skipif(not casa_available(), reason="needs the casa extra (make install)")
def test_import_casa_imports_on_every_server(client):
    responses = client.import_casa()
    assert [(r["server"], r["successful"]) for r in responses] == [(1, True), (2, True)]


def test_import_casa_says_how_to_install_the_extra_when_missing(client, monkeypatch):
    from casa_magics.cluster import casa_env

    monkeypatch.setattr(casa_env, "casa_available", lambda: False)  # as where the extra is not installed
    before = client.get_command_request_list()
    with pytest.raises(ImportError, match=r'^casatools is not installed: run "pip install casa_magics\[casa\]" \(or "make install"\)$'):
        client.import_casa()
    assert client.get_command_request_list() == before
