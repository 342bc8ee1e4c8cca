"""Faults on real MPI engines: killed and stopped servers, interrupts, odd results."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest

from casa_magics import CommandRequestError
from casa_magics.client import waiting
from casa_magics.cluster.control_channel import RemoteBoard, ask_reports

from .conftest import WAIT, kill_busy_server, started_marker, wait_until

pytestmark = pytest.mark.needs_mpi


def test_killed_server_answers_timeout_and_the_rest_carry_on(own_cluster, tmp_path):
    client = own_cluster(n=3, server_timeout=5, replace_lost=False)  # replacement: see test_replacement
    client.push_command_request("kept = 'state'", block=True, target_server=[1, 3])
    info = client.session.servers.info(2)
    running, queued, others_busy, held = kill_busy_server(client, info.pid, tmp_path / "running-started")
    killed_at = time.time()
    responses = client.get_command_response([running, queued], block=True, timeout=WAIT)
    noticed_after = time.time() - killed_at
    for response in responses:
        assert response["status"] == "timeout" and response["successful"] is False, response["traceback"]
        assert f"Timeout: server 2 (host {info.host}, pid {info.pid}) was lost" in response["traceback"]
    assert noticed_after < 10
    with pytest.raises(CommandRequestError, match=r"^server 2 cannot take requests: (its process is gone|its engine died \(Engine \d+ died while running task .*\))$"):
        client.push_command_request("1", target_server=2)
    status = client.get_server_status()
    assert status[2]["timeout"] is True and status[2]["lost"]
    # The other servers keep their state and keep working, untargeted requests included.
    assert [r["ret"] for r in client.push_command_request("kept", block=True, target_server=[1, 3])] == ["state", "state"]
    # Untargeted requests that waited in the client's queue ran on the remaining servers.
    ran = client.get_command_response([held, others_busy], block=True, timeout=WAIT)
    assert all(r["successful"] for r in ran)
    assert {r["server"] for r in ran[: len(held)]} <= {1, 3} and [r["ret"] for r in ran[: len(held)]] == [r["server"] for r in ran[: len(held)]]
    untargeted = [client.push_command_request("casa_server_id")[0] for _ in range(6)]
    assert {r["server"] for r in client.get_command_response(untargeted, block=True, timeout=WAIT)} <= {1, 3}


def test_stopped_server_times_out_then_its_real_answer_replaces_the_timeout(own_cluster):
    client = own_cluster(n=2, server_timeout=2)
    info = client.session.servers.info(2)
    (running,) = client.push_command_request("__import__('time').sleep(1) or 'real answer'", target_server=2)
    os.kill(info.pid, signal.SIGSTOP)
    try:
        (timed_out,) = client.get_command_response(running, block=True, timeout=WAIT)
        assert timed_out["status"] == "timeout" and timed_out["successful"] is False
        assert f"Timeout: server 2 (host {info.host}, pid {info.pid}) has not answered for" in timed_out["traceback"]
        assert client.get_server_status()[2]["timeout"] is True
        with pytest.raises(CommandRequestError, match=r"^server 2 cannot take requests: it has not answered for over 2 s$"):
            client.push_command_request("1", target_server=2)
        assert client.push_command_request("casa_server_id", block=True)[0]["server"] == 1
    finally:
        os.kill(info.pid, signal.SIGCONT)
    (replaced,) = wait_until(
        lambda: [r for r in client.get_command_response(running) if r["status"] == "response received"],
        message="server 2's real answer after SIGCONT",
    )
    assert (replaced["status"], replaced["successful"], replaced["ret"]) == ("response received", True, "real answer")
    assert client.get_server_status()[2]["timeout"] is False
    assert client.push_command_request("casa_server_id", block=True, target_server=2)[0]["ret"] == 2


# ------------------------------------------------------------- Ctrl-C
def main_thread_is_waiting() -> bool:
    """True while the main thread is blocked in casa_magics' wait for responses."""
    frame = sys._current_frames().get(threading.main_thread().ident)
    while frame is not None:
        if frame.f_code.co_name == "_wait_a_while" and frame.f_code.co_filename == waiting.__file__:
            return True
        frame = frame.f_back
    return False


def interrupt_main_when(ready, to_this_thread: bool = False) -> threading.Thread:
    """Send a real SIGINT, as Ctrl-C would, once ``ready()`` is true (within WAIT seconds).

    The signal goes to the process (the kernel gives it to the main thread),
    or, with ``to_this_thread``, to the helper thread itself: the kernel may
    do that too, and then the main thread is not woken by it.
    """

    def interrupt() -> None:
        wait_until(ready, message="the state to interrupt in")
        if to_this_thread:
            signal.pthread_kill(threading.get_ident(), signal.SIGINT)
        else:
            os.kill(os.getpid(), signal.SIGINT)

    helper = threading.Thread(target=interrupt, name="ctrl-c", daemon=True)
    helper.start()
    return helper


def running_on_both(tmp_path):
    """A command that runs 3 s on servers 1 and 2, and a check that both have started it."""
    markers = [tmp_path / f"started-{server}" for server in (1, 2)]
    marker = f"open({str(tmp_path)!r} + '/started-' + str(casa_server_id), 'w').close()"
    return f"{marker} or __import__('time').sleep(3) or 'finished'", lambda: all(m.exists() for m in markers)


@pytest.mark.parametrize("to_this_thread", [False, True], ids=["to-process", "to-another-thread"])
def test_ctrl_c_stops_a_blocking_get_and_loses_nothing(client, tmp_path, to_this_thread):
    command, both_started = running_on_both(tmp_path)
    ids = client.push_command_request(command, target_server=[1, 2])
    helper = interrupt_main_when(lambda: both_started() and main_thread_is_waiting(), to_this_thread)
    with pytest.raises(KeyboardInterrupt):
        client.get_command_response(ids, block=True, timeout=WAIT)
    helper.join(WAIT)
    states = client.get_command_request_list()
    assert [states[i]["status"] for i in ids] == ["request sent", "request sent"]  # stopped before the answers
    responses = client.get_command_response(ids, block=True, timeout=WAIT)
    assert [r["ret"] for r in responses] == ["finished", "finished"], responses[0]["traceback"]


def test_ctrl_c_during_a_blocking_push_loses_nothing(client):
    before = max(client.get_command_request_list(), default=0)
    helper = interrupt_main_when(main_thread_is_waiting)
    with pytest.raises(KeyboardInterrupt):
        client.push_command_request("__import__('time').sleep(1.5) or 'pushed'", block=True, target_server=1)
    helper.join(WAIT)
    (request_id,) = [i for i in client.get_command_request_list() if i > before]
    assert client.get_command_response(request_id, block=True, timeout=WAIT)[0]["ret"] == "pushed"


def test_ctrl_c_while_the_request_is_being_sent_is_held_until_it_is_sent(client):
    before = max(client.get_command_request_list(), default=0)
    with pytest.raises(KeyboardInterrupt):
        with waiting.deferred_interrupts():  # what push_command_request does around sending
            os.kill(os.getpid(), signal.SIGINT)
            ids = client.push_command_request("'sent whole'", target_server=1)
    assert [i for i in client.get_command_request_list() if i > before] == ids
    assert client.get_command_response(ids, block=True, timeout=WAIT)[0]["ret"] == "sent whole"


# ------------------------------------------------------------- odd results
@pytest.mark.parametrize(
    "command, kind",
    [("__import__('threading').Lock()", "lock"), ("open('/dev/null')", "TextIOWrapper")],
)
def test_value_that_cannot_be_sent_back_fails_cleanly(client, command, kind):
    (response,) = client.push_command_request(command, block=True, target_server=1)
    assert response["successful"] is False and response["ret"] is None
    assert "cannot be sent back to the client" in response["traceback"]
    assert kind in response["traceback"]
    assert client.push_command_request("'still working'", block=True, target_server=1)[0]["ret"] == "still working"


def test_large_return_value_arrives_whole(client):
    (response,) = client.push_command_request(
        "__import__('numpy').ones(25_000_000)", block=True, target_server=2
    )  # 200 MB of float64
    assert response["successful"], response["traceback"]
    assert response["ret"].nbytes == 200_000_000 and response["ret"].sum() == 25_000_000
    client.forget_command_responses(response["id"])


def test_very_large_stdout_is_cut_in_the_response_but_works(client):
    from casa_magics.server.runner import STREAM_LIMIT

    (response,) = client.push_command_request(
        "for i in range(200_000): print('x' * 99)", block=True, target_server=2
    )  # 20 MB printed
    assert response["successful"]
    assert len(response["stdout"]) < STREAM_LIMIT + 100
    assert response["stdout"].endswith(f"[... {20_000_000 - STREAM_LIMIT} more characters not kept]\n")


# ------------------------------------------------------------- stop
@pytest.mark.timeout(60)
def test_stop_services_reports_requests_cut_short_and_leaves_no_process(own_cluster):
    import psutil

    client = own_cluster(n=2)
    session = client.session
    running = client.push_command_request("import time; time.sleep(60)", target_server=[1, 2])
    held = client.push_command_request("'never runs'")
    processes = [psutil.Process(info.pid) for info in session.servers]
    processes.append(psutil.Process(session.cluster.controller.process.pid))
    processes += [psutil.Process(es.process.pid) for es in session.cluster.engines.values()]
    cut = client.stop_services()
    assert sorted(cut) == sorted(running + held)
    _, alive = psutil.wait_procs(processes, timeout=15)
    assert alive == []


# ------------------------------------------------------------- cancelling
def test_cancel_a_request_still_in_the_holding_queue(client):
    busy = client.push_command_request("import time; time.sleep(1)", target_server=[1, 2])
    (held,) = client.push_command_request("'never'")
    assert client.abort_command_request(held) == {held: "cancelled before it was sent"}
    (response,) = client.get_command_response(held)
    assert (response["status"], response["successful"]) == ("cancelled", False)
    assert response["traceback"] == "cancelled by the client before it was sent"
    client.get_command_response(busy, block=True, timeout=WAIT)


def test_cancel_a_running_request_interrupts_only_it(client, tmp_path):
    client.push_command_request("survivor = 'kept'", block=True, target_server=1)
    marker = tmp_path / "running-started"
    (running,) = client.push_command_request(f"{started_marker(marker)}; import time; time.sleep(30)", target_server=1)
    (after,) = client.push_command_request("survivor", target_server=1)
    wait_until(marker.exists, message="the long request running on server 1")
    assert client.abort_command_request([running]) == {running: "interrupted while running"}
    cancelled, following = client.get_command_response([running, after], block=True, timeout=WAIT)
    assert cancelled["status"] == "cancelled" and cancelled["successful"] is False
    assert f"KeyboardInterrupt: request {running} was cancelled by the client" in cancelled["traceback"]
    assert (following["status"], following["ret"]) == ("response received", "kept")


def test_cancel_a_sent_request_before_it_starts(client):
    (first,) = client.push_command_request("__import__('time').sleep(1) or 'first'", target_server=2)
    (second,) = client.push_command_request("'second'", target_server=2)
    (third,) = client.push_command_request("'third'", target_server=2)
    assert client.get_command_request_list()[second]["status"] == "request sent"
    assert client.abort_command_request(second) == {second: "will be skipped by its server"}
    responses = client.get_command_response([first, second, third], block=True, timeout=WAIT)
    assert [(r["status"], r["ret"]) for r in responses] == [
        ("response received", "first"),
        ("cancelled", None),
        ("response received", "third"),
    ]
    assert responses[1]["traceback"] == "cancelled by the client before it started"
    assert client.abort_command_request(first) == {first: "already finished (response received)"}


# ------------------------------------------------------- the control channel
def test_a_server_is_cancelled_and_reports_itself_through_its_engines_control_channel(client, tmp_path):
    """What a client on another host does (tests/test_multinode.py), here with a server on this host."""
    session = client.session
    engine = session.servers.info(2).engine
    marker = tmp_path / "control-started"
    (running,) = client.push_command_request(f"{started_marker(marker)}; import time; time.sleep(30)", target_server=2)
    (queued,) = client.push_command_request("'never run'", target_server=2)
    wait_until(marker.exists, message="the long request running on server 2")
    report = ask_reports(session.client, {2: engine})[2]
    assert report["running"] == running and report["memory"] > 20 * 2**20, report
    board = RemoteBoard(session.client, engine, "server 2")
    assert board.cancel_and_interrupt(queued) is False  # not started: skipped when its turn comes
    assert board.cancel_and_interrupt(running) is True
    # (Here the board was used behind the dispatcher's back, so it did not word the statuses.)
    cancelled, skipped = client.get_command_response([running, queued], block=True, timeout=WAIT)
    assert cancelled["successful"] is False, cancelled
    assert f"KeyboardInterrupt: request {running} was cancelled by the client" in cancelled["traceback"]
    assert (skipped["successful"], skipped["traceback"]) == (False, "cancelled by the client before it started")
    assert ask_reports(session.client, {2: engine})[2]["running"] == 0


def test_a_server_that_does_not_answer_its_control_channel_is_named():
    class Silent:
        def _send_control_request(self, **_kwargs):
            import concurrent.futures

            return concurrent.futures.Future()  # never answered

    assert ask_reports(Silent(), {4: 7}, timeout=0.1) == {4: "no answer within 0.1 s"}
    with pytest.raises(TimeoutError, match=r"^server 4 did not confirm within 5 s that request 9 is cancelled$"):
        RemoteBoard(Silent(), 7, "server 4").cancel_and_interrupt(9)
