"""The one wait (casa_magics.client.waiting): timeout, progress bar, and Ctrl-C wherever it lands. No cluster."""

from __future__ import annotations

import io
import os
import re
import signal
import threading
import time

import pytest

from casa_magics.client.waiting import INTERRUPT_CHECK, PROGRESS_AFTER_SEVERAL, deferred_interrupts, wait_interactive

from .conftest import WAIT


def set_later(event: threading.Event, seconds: float) -> None:
    timer = threading.Timer(seconds, event.set)
    timer.daemon = True
    timer.start()


def test_a_set_event_returns_true_and_shows_nothing():
    event = threading.Event()
    event.set()
    stream = io.StringIO()
    assert wait_interactive(event, total=2, done=lambda: 2, progress=True, stream=stream) is True
    assert stream.getvalue() == ""


def test_timeout_returns_false_after_it():
    started = time.monotonic()
    assert wait_interactive(threading.Event(), timeout=0.3) is False
    assert time.monotonic() - started >= 0.3
    assert wait_interactive(threading.Event(), timeout=0) is False


@pytest.mark.parametrize("timeout", [-1, float("nan")])
def test_a_bad_timeout_is_refused(timeout):
    with pytest.raises(ValueError, match=r"^timeout must be None or a number of seconds >= 0, got "):
        wait_interactive(threading.Event(), timeout=timeout)


def test_progress_appears_on_a_long_wait_and_is_erased():
    event = threading.Event()
    set_later(event, PROGRESS_AFTER_SEVERAL + 0.3)  # a Timer never fires early: the bar must show
    stream = io.StringIO()
    assert wait_interactive(event, total=2, done=lambda: 1 if event.is_set() else 0, progress=True, stream=stream)
    shown = stream.getvalue()
    assert re.search(r"\r0/2 requests done \[\.{20}\] \d\.\d s", shown), shown
    assert shown.endswith("\r")  # blanked out at the end


def test_ctrl_c_before_the_wait_raises_at_once_without_blocking():
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupts():
            os.kill(os.getpid(), signal.SIGINT)  # e.g. while the request was being sent
            wait_interactive(threading.Event(), timeout=WAIT)
    assert time.monotonic() - started < WAIT / 2


def test_ctrl_c_inside_a_deferred_block_is_raised_at_its_end():
    reached_the_end = False
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupts():
            os.kill(os.getpid(), signal.SIGINT)
            sum(range(100_000))  # bytecodes run: the handler has run, and not raised here
            reached_the_end = True
    assert reached_the_end
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_that_reaches_another_thread_still_stops_the_wait():
    event = threading.Event()
    helper = threading.Timer(0.2, lambda: signal.pthread_kill(threading.get_ident(), signal.SIGINT))
    helper.start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        wait_interactive(event, timeout=WAIT)
    helper.join(WAIT)
    assert not event.is_set()
    assert time.monotonic() - started < WAIT / 2  # within about INTERRUPT_CHECK, not at the timeout
    assert INTERRUPT_CHECK <= 0.5


def test_a_users_own_sigint_handler_stays_in_charge():
    seen = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        with deferred_interrupts():
            assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
            os.kill(os.getpid(), signal.SIGINT)
            sum(range(100_000))
        assert seen == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)


def test_off_the_main_thread_nothing_changes():
    outcome = []
    worker = threading.Thread(target=lambda: outcome.append(wait_interactive(threading.Event(), timeout=0.05)))
    worker.start()
    worker.join(WAIT)
    assert outcome == [False]
