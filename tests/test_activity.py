"""Pure logic of the live view: naming requests, the activity log, drawing a snapshot (no cluster)."""

from __future__ import annotations

import re
import time

import pytest

from casa_magics.client.activity import (
    CANCELLED_OUTCOME, DONE, FAILED, RUNNING, TIMED_OUT, ActivityLog, ServerView, Snapshot, Span, Totals,
    describe_command,
)
from casa_magics.client.commands import compile_command
from casa_magics.client.gang import WORKER_COMMAND
from casa_magics.client.requests import CANCELLED, TIMEOUT
from casa_magics.notebook.live_render import (
    FAILURE_COLOUR, PALETTE, TaskColours, fitted_window, render_html, render_text,
)

from .support.request_book_helpers import book_with, outcome

SUB_MS = "/work/ngc5921.mms/SUBMSS/ngc5921.mms.0003.ms"


# ------------------------------------------------------------------ naming
@pytest.mark.parametrize(
    "command, parameters, task, label",
    [
        ("flagdata()", {"vis": SUB_MS, "mode": "quack"}, "flagdata", "flagdata · sub-MS 0003"),
        ("casatasks.applycal();", {"vis": SUB_MS}, "applycal", "applycal · sub-MS 0003"),
        # partition names the sub-MS it writes, not the MS it reads
        ("partition()", {"vis": "/w/ngc5921.ms", "outputvis": "/w/x.mms/SUBMSS/x.mms.0001.ms"}, "partition",
         "partition · sub-MS 0001"),
        ("setjy()", {"vis": "/w/ngc5921.ms/"}, "setjy", "setjy · ngc5921.ms"),
        ("wvrgcal()", None, "wvrgcal", "wvrgcal()"),
        ("import time; time.sleep(5)", None, "time.sleep", "import time; time.sleep(5)"),
        ("toolsi = synthesisimager()", None, "synthesisimager", "toolsi = synthesisimager()"),
        ("x = 1\ny = 2", None, "python", "x = 1 y = 2"),
        (WORKER_COMMAND, None, "gang worker", "gang worker (CASA C++ MPI)"),
    ],
)
def test_requests_are_named_by_task_and_sub_ms(command, parameters, task, label):
    compiled = compile_command(command)
    assert describe_command(compiled.source, compiled.callee, parameters) == (task, label)


def test_a_long_command_is_cut_to_one_short_line():
    _, label = describe_command("print('" + "x" * 200 + "')", None, None)
    assert len(label) <= 48 and label.endswith("…") and "\n" not in label


# ------------------------------------------------------------------ the log
def test_answered_requests_become_spans_with_their_server_times_and_are_counted():
    book, (a, b, c) = book_with(3)
    a.server = b.server = 1
    t = time.time()  # spans older than the log keeps are dropped as it records
    finished, _ = book.record_outcomes([a, b], [outcome(command_start_time=t - 3, command_stop_time=t - 0.5),
                                                outcome(successful=False, traceback="boom", command_start_time=t - 1)])
    book.notify(finished)
    book.notify(book.fail([c], CANCELLED, "cancelled by the client before it was sent"))
    spans = {s.request: s for s in book.activity.spans(since=0.0)}
    assert (spans[a.id].start, spans[a.id].stop, spans[a.id].outcome) == (t - 3, t - 0.5, DONE)
    assert spans[b.id].outcome == FAILED
    assert c.id not in spans  # never ran: no bar, but counted
    assert book.activity.totals(running=2, queued=3) == Totals(done=1, failed=1, cancelled=1, running=2, queued=3)


def test_a_request_ended_by_the_client_gets_a_bar_from_when_it_was_seen_running():
    book, (a,) = book_with(1)
    book.activity.saw_running(a.id, 1, 100.0)
    book.fail([a], TIMEOUT, "Timeout: server 1 was lost")
    book.activity.ended([a], now=130.0)
    (span,) = book.activity.spans(since=0.0)
    assert (span.server, span.start, span.stop, span.outcome) == (1, 100.0, 130.0, TIMED_OUT)


def test_a_timed_out_request_answered_later_is_counted_once_with_its_answer():
    book, (a,) = book_with(1)
    a.server = 1
    book.notify(book.fail([a], TIMEOUT, "not answering"))
    assert book.activity.totals().failed == 1
    finished, _ = book.record_outcomes([a], [outcome(command_start_time=time.time(), command_stop_time=time.time())])
    book.notify(finished)
    assert book.activity.totals() == Totals(done=1)
    assert [s.outcome for s in book.activity.spans(since=0.0)] == [DONE]


def test_old_spans_leave_the_log_but_not_the_totals():
    log = ActivityLog(keep_seconds=60.0, keep_spans=2)
    book, requests = book_with(3)
    for index, request in enumerate(requests):
        request.server = 1
        book.record_outcomes([request], [outcome(command_start_time=float(index), command_stop_time=index + 0.5)])
    log.ended(requests, now=10.0)
    assert [s.request for s in log.spans(since=0.0)] == [requests[1].id, requests[2].id]  # at most 2 kept
    log.ended([], now=1000.0)
    assert log.spans(since=0.0) == []  # older than keep_seconds
    assert log.totals().done == 3
    assert [s.request for s in ActivityLog().spans(since=0.0)] == []


# ------------------------------------------------------------------ drawing
def snapshot(now: float = 1000.0, stopped: bool = False) -> Snapshot:
    running = Span(9, 1, "time.sleep", "import time; time.sleep(5)", "import time; time.sleep(5)", now - 3, None, RUNNING)
    spans = (
        Span(5, 1, "flagdata", "flagdata · sub-MS 0000", "flagdata()", now - 100, now - 60, DONE),
        Span(6, 2, "flagdata", "flagdata · sub-MS 0001", "flagdata()", now - 100, now - 50, FAILED),
        Span(7, 2, "setjy", "setjy · sub-MS 0001", "setjy()", now - 40, now - 35, CANCELLED_OUTCOME),
        Span(8, 2, "setjy", "setjy · sub-MS 0001", "setjy()", now - 900, now - 800, DONE),  # before the window
        running,
    )
    servers = (
        ServerView(1, "node1", 101, "busy", 2, running, None, 3 * 1024**3, 4 * 1024**3, "ready"),
        ServerView(2, "node1", 102, "lost", 0, None, "its process is gone", None, None, "importing"),
    )
    return Snapshot(now, servers, spans, Totals(1, 1, 1, 1, 2), 180.0, "embedded cluster of 2 MPI servers", stopped)


def test_the_html_has_a_row_per_server_a_bar_per_request_in_the_window_and_the_totals():
    page = render_html(snapshot())
    assert re.findall(r'<tr data-server="(\d)" data-state="([^"]+)"', page) == [("1", "busy"), ("2", "lost")]
    bars = re.findall(r'data-request="(\d+)" data-server="(\d)" data-outcome="(\w+)"', page)
    assert bars == [("5", "1", DONE), ("6", "2", FAILED), ("7", "2", CANCELLED_OUTCOME), ("9", "1", RUNNING)]
    assert "busy, 2 queued" in page and "its process is gone" in page and "3 GB of 4 GB" in page
    assert 'data-total="failed">failed <b>1</b>' in page and 'data-total="queued">queued <b>2</b>' in page
    assert f'stroke="{FAILURE_COLOUR}"' in page  # the failed bar is marked


def test_a_bar_tooltip_names_the_request_its_command_times_and_outcome():
    page = render_html(snapshot())
    titles = re.findall(r"<title>(.*?)</title>", page, re.S)
    failed = next(t for t in titles if t.startswith("request 6:"))
    assert "flagdata · sub-MS 0001" in failed and "server 2" in failed and "(50.0 s)" in failed
    assert "failed" in failed and "flagdata()" in failed
    running = next(t for t in titles if t.startswith("request 9:"))
    assert "→ now (3.0 s)" in running and "running" in running


def test_a_task_keeps_its_colour_from_one_draw_to_the_next():
    colours = TaskColours()
    render_html(snapshot(), colours)
    first = colours("flagdata")
    render_html(snapshot(now=1010.0), colours)
    assert colours("flagdata") == first == PALETTE[0]
    assert colours("setjy") != first


def test_the_text_has_the_servers_the_totals_and_the_last_ended_requests():
    text = render_text(snapshot(stopped=True))
    assert "stopped: the last state" in text
    assert "done 1, failed 1, cancelled 1, running 1, queued 2" in text
    assert "import time; time.sleep(5) (#9)" in text
    assert "#6 server 2 flagdata · sub-MS 0001: failed, 50.0 s" in text


def test_a_last_state_can_narrow_the_stream_to_its_bars():
    shown = snapshot()
    assert fitted_window(shown) == 180.0  # a bar from 900 s ago: the whole window
    recent = Snapshot(shown.now, shown.servers, shown.spans[-1:], shown.totals, 180.0)
    assert fitted_window(recent) == 10.0  # 3 s of activity: the least
    ticks = re.findall(r">(−[^<]+|now)</text>", render_html(recent, fit=True))
    assert ticks[0] == "now" and "−10 s" in ticks and "−1 min" not in ticks


# ------------------------------------------------------------------ a server's state
def record(number: int = 1):
    from casa_magics.client.server_record import ServerRecord
    from casa_magics.cluster.server_map import ServerInfo

    return ServerRecord(ServerInfo(number, number - 1, number - 1, "node7", 1000 + number), view=None)


def test_a_server_is_idle_busy_with_its_queue_not_answering_lost_or_replacing():
    from casa_magics.client.activity import server_view
    from casa_magics.client.server_record import Loss, Message, Replacement

    server = record()
    assert (server_view(server, 50.0).state, server_view(server, 50.0).running) == ("idle", None)
    _, requests = book_with(4)
    server.in_flight.append(Message(requests[:2]))
    server.waiting.append(requests[2])
    server.head_since = 40.0
    busy = server_view(server, 50.0)
    assert (busy.state, busy.queued, busy.running.request, busy.running.start) == ("busy", 2, requests[0].id, 40.0)
    assert busy.host == "node7" and busy.running.outcome == RUNNING
    server.timed_out = True
    assert server_view(server, 50.0).state == "not answering"
    server.loss = Loss("its process is gone", Replacement.STARTING)
    replacing = server_view(server, 50.0)
    assert (replacing.state, replacing.running) == ("replacing", None)
    assert replacing.lost == "its process is gone; a replacement is starting"
    server.loss.refuse("no replacements for connected clusters")
    assert server_view(server, 50.0).state == "lost"


def test_a_snapshot_notes_what_runs_so_that_a_bar_survives_a_lost_server():
    from casa_magics.client.server_record import Message

    log, server = ActivityLog(), record(2)
    _, (request,) = book_with(1, target=2)
    server.in_flight.append(Message([request]))
    server.head_since = time.time() - 5
    shown = log.snapshot({2: server}, holding=3, now=time.time(), window=60.0)
    assert shown.totals == Totals(running=1, queued=3)
    assert [s.outcome for s in shown.spans] == [RUNNING]
    request.record_failure(TIMEOUT, "Timeout: server 2 was lost")
    log.ended([request], now=time.time())
    (span,) = log.spans(since=0.0)
    assert (span.server, span.start, span.outcome) == (2, server.head_since, TIMED_OUT)
