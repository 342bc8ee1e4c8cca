"""The live view on real MPI engines: it follows requests, marks failures, stops with the cluster, sends nothing.

The widget is a real ipywidgets widget (outside a kernel its messages go
nowhere, but its value is what a front end would get); its drawing thread
is the one a notebook runs. The browser test (test_live_view_browser.py)
checks the same in JupyterLab.
"""

from __future__ import annotations

import re

import pytest
from IPython import get_ipython
from IPython.core.error import UsageError
from IPython.testing.globalipapp import start_ipython

import casa_magics
from casa_magics import CommandRequestError
from casa_magics.notebook.live_view import LiveView, live_view

from .conftest import started_marker, wait_until

pytestmark = pytest.mark.needs_mpi


def server_state(html: str, server: int) -> str | None:
    found = re.search(rf'<tr data-server="{server}" data-state="([^"]+)"', html)
    return found.group(1) if found else None


def bar(html: str, request: int) -> str | None:
    """The outcome of request ``request``'s bar in the task stream, or None if it has none."""
    found = re.search(rf'data-request="{request}" data-server="\d+" data-outcome="(\w+)"', html)
    return found.group(1) if found else None


@pytest.fixture
def view(client):
    views: list[LiveView] = []

    def make(**options) -> LiveView:
        views.append(live_view(client, **options))
        return views[-1]

    yield make
    for made in views:
        made.close()


def test_the_widget_shows_a_server_busy_then_idle_and_the_request_gains_a_bar(client, view, tmp_path):
    shown = view(widget=True, interval=0.1)
    assert shown.live and shown._html is not None
    marker = tmp_path / "started"
    (request,) = client.push_command_request(f"{started_marker(marker)}; import time; time.sleep(1.5)", target_server=1)
    wait_until(lambda: server_state(shown._html.value, 1) == "busy", message="server 1 shown busy")
    assert bar(shown._html.value, request) == "running"
    assert "import time" in shown._html.value  # the running command, in its row
    wait_until(lambda: server_state(shown._html.value, 1) == "idle" and bar(shown._html.value, request) == "done",
               message="server 1 shown idle, with the request's bar done")
    assert server_state(shown._html.value, 2) == "idle"
    assert shown.draws > 2


def test_a_failed_request_is_marked_and_counted(client, view):
    shown = view(widget=True, interval=0.1)
    failed_before = shown.snapshot.totals.failed
    (request,) = client.push_command_request("1 / 0", target_server=2)
    client.get_command_response(request, block=True, timeout=60)
    wait_until(lambda: bar(shown._html.value, request) == "failed", message="the failed request's bar")
    assert shown.snapshot.totals.failed == failed_before + 1
    assert re.search(r'data-total="failed">failed <b>[1-9]', shown._html.value)


def test_drawing_sends_nothing_to_the_servers(client, view):
    history = client.session.client.history
    before = len(history)
    shown = view(widget=True, interval=0.1)
    draws = shown.draws
    wait_until(lambda: shown.draws >= draws + 5, message="five more draws")
    assert len(history) == before  # no message to any engine


def test_closed_it_stops_and_keeps_the_last_state(client, view):
    shown = view(widget=True, interval=0.1)
    shown.close()
    assert not shown.live
    assert "closed" in shown.html and server_state(shown.html, 1) in ("idle", "busy")
    shown.close()  # twice is harmless


def test_without_a_widget_it_shows_the_state_once_as_html_and_text(client, view):
    shown = view(widget=False)
    assert not shown.live
    bundle = shown._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html"}
    assert "a snapshot (live updates need Jupyter widgets)" in bundle["text/html"]
    assert bundle["text/plain"].startswith("CASA servers (") and "done " in bundle["text/plain"]
    assert server_state(bundle["text/html"], 2) is not None


def test_it_stops_by_itself_when_the_cluster_stops(own_cluster):
    own = own_cluster(n=2)
    shown = live_view(own, widget=True, interval=0.1)
    assert shown.live
    own.stop_services()
    wait_until(lambda: not shown.live, message="the view's thread ended")
    assert shown.snapshot.stopped and "stopped: the last state" in shown.html


@pytest.mark.parametrize(
    "options, message",
    [
        ({"window": 0}, r"^window must be a number of seconds from 10 to 3600, got 0$"),
        ({"window": "long"}, r"^window must be a number of seconds from 10 to 3600, got 'long'$"),
        ({"interval": 0.01}, r"^interval must be a number of seconds from 0.1 to 60, got 0.01$"),
        ({"interval": float("nan")}, r"^interval must be a number of seconds from 0.1 to 60, got nan$"),
    ],
)
def test_bad_options_are_refused_in_one_line(client, options, message):
    with pytest.raises(CommandRequestError, match=message):
        live_view(client, **options)


def test_the_public_name_is_the_function():
    assert casa_magics.live_view is live_view and "live_view" in casa_magics.__all__


# ---------------------------------------------------------------- the magic
@pytest.fixture(scope="module")
def ip(client):
    start_ipython()
    shell = get_ipython()
    shell.run_line_magic("load_ext", "casa_magics")
    yield shell


def test_the_magic_in_a_terminal_shows_the_state_once(ip):
    shown = ip.run_line_magic("casa_status", "--live --window 60")
    assert isinstance(shown, LiveView) and not shown.live and shown.window == 60
    assert "CASA servers (" in repr(shown)


@pytest.mark.parametrize(
    "line, message",
    [
        ("--live --bogus", r"^unrecognized arguments: --bogus$"),
        ("--window 60", r"^--window applies only to %casa_status --live$"),
        ("--live --window 5", r"^window must be a number of seconds from 10 to 3600, got 5.0$"),
        ("--live --window soon", r"^argument --window: must be a positive number of seconds, got 'soon'$"),
    ],
)
def test_the_magic_refuses_bad_options_in_one_line(ip, line, message):
    with pytest.raises(UsageError, match=message):
        ip.run_line_magic("casa_status", line)
