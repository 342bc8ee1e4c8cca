"""Tables, streams and the progress bar, without a cluster."""

from __future__ import annotations

import copy
import io
import json
import pickle

import pytest
from IPython.testing.globalipapp import start_ipython
from IPython.utils.capture import capture_output

from casa_magics.notebook.display import (
    ProgressBar,
    RawHTML,
    ResponseList,
    ServerStatus,
    brief,
    echo_streams,
    html_table,
    responses_html,
    responses_text,
    status_text,
    text_table,
)


def response(id, server, ret=None, successful=True, traceback=None, status="response received", **extra):
    return {
        "id": id,
        "server": server,
        "command": "x",
        "status": status,
        "successful": successful,
        "ret": ret,
        "traceback": traceback,
        "command_start_time": 100.0,
        "command_stop_time": 100.25,
        "stdout": "",
        "stderr": "",
        **extra,
    }


FAILURE = 'Traceback (most recent call last):\n  File "<casa command>", line 1, in <module>\nZeroDivisionError: division by zero\n'


# ---------------------------------------------------------------- tables
def test_html_table_escapes_values_and_names_cells_by_column():
    table = html_table([{"server": 1, "running for": "<b>"}], caption="A & B")
    assert "<caption>A &amp; B</caption>" in table
    assert '<td class="casa-server">1</td>' in table
    assert '<td class="casa-running-for">&lt;b&gt;</td>' in table


def test_html_table_keeps_raw_html_cells_and_fills_missing_keys():
    table = html_table([{"a": RawHTML("<i>x</i>")}, {"b": 2}])
    assert "<th>a</th><th>b</th>" in table
    assert '<td class="casa-a"><i>x</i></td><td class="casa-b"></td>' in table


def test_text_table_aligns_numbers_right_and_text_left():
    assert text_table([{"id": 1, "ok": True, "name": "ab"}, {"id": 10, "ok": False, "name": "c"}]).splitlines() == [
        "id  ok     name",
        " 1  True   ab",
        "10  False  c",
    ]


def test_brief_keeps_one_line_and_cuts_long_values():
    assert brief("a\nb") == "'a\\nb'"
    assert brief(list(range(100)), 20) == "[0, 1, 2, 3, 4, 5..."
    assert len(brief("x" * 500)) == 60


# ---------------------------------------------------------------- responses
def test_response_table_shows_ret_briefly_and_folds_the_traceback():
    rows = [response(1, 2, ret=list(range(100))), response(2, 1, successful=False, traceback=FAILURE)]
    table = responses_html(rows)
    assert "<caption>2 responses, 1 failed</caption>" in table
    assert '<td class="casa-ret">[0, 1, 2, 3' in table and "99]" not in table
    assert '<td class="casa-time">0.25 s</td>' in table
    assert "<details><summary>ZeroDivisionError: division by zero</summary><pre>Traceback (most recent call last):" in table
    assert "&lt;casa command&gt;" in table


def test_response_text_shows_the_last_traceback_line_and_the_status():
    rows = [
        response(1, 1, ret=42),
        response(3, 2, successful=False, traceback="cancelled before it was sent", status="cancelled"),
    ]
    assert responses_text(rows).splitlines() == [
        "2 responses, 1 failed",
        "id  server  successful  ret  time    traceback",
        " 1       1  True        42   0.25 s",
        " 3       2  False            0.25 s  [cancelled] cancelled before it was sent",
    ]
    assert responses_text([]) == "0 responses"


def test_response_list_is_a_plain_list_in_everything_but_display():
    rows = [response(1, 1, ret=2)]
    shown = ResponseList(rows)
    assert shown == rows and isinstance(shown, list)
    assert shown[0] is rows[0]
    assert repr(shown) == repr(rows) and str(shown) == str(rows)
    assert pickle.loads(pickle.dumps(shown)) == rows
    assert json.loads(json.dumps(shown)) == json.loads(json.dumps(rows))
    assert copy.deepcopy(shown) == rows
    assert shown._repr_html_() == responses_html(rows)


def test_response_list_pretty_prints_as_a_table_in_ipython():
    from IPython.lib.pretty import pretty

    assert pretty(ResponseList([response(1, 1, ret="ok")])) == responses_text([response(1, 1, ret="ok")])


# ---------------------------------------------------------------- status
def status_row(busy, command=None, running_for=None, lost=None, timeout=False):
    return {
        "rank": 0, "processor": "node", "pid": 11, "engine": 3, "busy": busy, "command": command,
        "command_start_time": None, "running_for": running_for, "queued": 1 if busy else 0,
        "timeout": timeout, "lost": lost,
    }  # fmt: skip


def test_status_table_has_one_row_per_server_with_state():
    status = ServerStatus(
        {
            2: status_row(False, lost="its process is gone", timeout=True),
            1: status_row(True, "import time\ntime.sleep(9)", 1.234),
        }
    )
    assert status == {1: status[1], 2: status[2]} and isinstance(status, dict)
    assert status_text(status).splitlines() == [
        "CASA server status",
        "server  engine  host  pid  busy  command                    running for  queued  state",
        "     1       3  node   11  yes   import time time.sleep(9)  1.2 s             1  ok",
        "     2       3  node   11  no                                                 0  lost: its process is gone",
    ]
    assert '<td class="casa-busy">yes</td>' in status._repr_html_()


def test_status_table_says_whether_casa_is_ready_when_known():
    status = ServerStatus({1: {**status_row(False), "casa": "importing"}, 2: {**status_row(False), "casa": "ready"}})
    lines = status_text(status).splitlines()
    assert lines[1].split()[-2:] == ["state", "CASA"]
    assert [line.split()[-1] for line in lines[2:]] == ["importing", "ready"]


# ---------------------------------------------------------------- streams
def test_echo_streams_prefixes_every_line_with_the_server_id():
    out, err = io.StringIO(), io.StringIO()
    rows = [response(1, 2, stdout="a\nb\n", stderr="oops"), response(2, 1, stdout="c")]
    echo_streams(rows, stdout=out, stderr=err)
    assert out.getvalue() == "[server 2] a\n[server 2] b\n[server 1] c\n"
    assert err.getvalue() == "[server 2] oops\n"


# ---------------------------------------------------------------- progress
def test_terminal_progress_rewrites_one_line_and_erases_it():
    stream = io.StringIO()
    bar = ProgressBar(4, rich=False, stream=stream)
    bar.update(1)
    bar.update(4)
    bar.close(4)
    written = stream.getvalue()
    assert written.startswith("\r1/4 requests done [#####...............] ")
    assert "\r4/4 requests done [####################] " in written
    assert written.endswith("\r" + " " * len(bar.text(4)) + "\r")
    assert "\n" not in written


def test_terminal_progress_never_shown_writes_nothing():
    stream = io.StringIO()
    ProgressBar(2, rich=False, stream=stream).close(2)
    assert stream.getvalue() == ""


def test_jupyter_progress_is_one_display_updated_in_place_and_left_complete():
    start_ipython()  # display() publishes through a shell
    bar = ProgressBar(2, rich=True)
    with capture_output() as captured:
        bar.update(0)
        bar.update(1)
        bar.close(2)
        bar.update(2)  # after close: nothing more
    htmls = [output.data["text/html"] for output in captured.outputs]
    assert len(htmls) == 3
    assert htmls[0].startswith('<div class="casa-magics-progress"><progress value="0" max="2"')
    assert '<progress value="2" max="2"' in htmls[-1] and "2/2 requests done, " in htmls[-1]
    assert captured.outputs[-1].data["text/plain"].startswith("2/2 requests done [####################]")


@pytest.mark.parametrize("total", [1, 3])
def test_progress_text_counts_done_over_total(total):
    assert ProgressBar(total, rich=False).text(total).startswith(f"{total}/{total} requests done [")


def test_status_caption_names_the_log_directory():
    status = ServerStatus({1: {**status_row(False), "log": "/run/dir/casa-server-1.log"}})
    assert status_text(status).splitlines()[0] == "CASA server status (logs in /run/dir)"
