"""The one wait for engines to register, as every start uses it (no cluster needed)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from types import SimpleNamespace

from casa_magics.cluster.registration import LauncherWatch, Outcome, wait_for_engines


class FakeClient:
    """Engine IDs that appear over time, as ipyparallel's client sees registrations."""

    def __init__(self, ids, later=(), after=0.2):
        self._ids = list(ids)
        threading.Timer(after, self._ids.extend, args=(list(later),)).start()

    @property
    def ids(self):
        return list(self._ids)


def test_new_engines_are_counted_and_known_ones_are_not():
    registration = wait_for_engines(FakeClient([0, 1], later=[2, 3]), 2, timeout=5, known={0, 1})
    assert registration.ok and registration.engines == [2, 3]


def test_a_timeout_says_how_many_came():
    started = time.monotonic()
    registration = wait_for_engines(FakeClient([], later=[0]), 2, timeout=0.5)
    assert (registration.outcome, registration.engines) == (Outcome.TIMED_OUT, [0])
    assert 0.5 <= time.monotonic() - started < 2


def test_a_launcher_that_exits_ends_the_wait_with_its_status():
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    registration = wait_for_engines(FakeClient([]), 1, timeout=30, launcher=LauncherWatch(SimpleNamespace(process=process)))
    assert (registration.outcome, registration.exit_code) == (Outcome.LAUNCHER_EXITED, 3)


def test_an_engine_set_without_one_process_never_ends_the_wait():
    watch = LauncherWatch(SimpleNamespace())  # ipyparallel's local engines
    assert wait_for_engines(FakeClient([], later=[0]), 1, timeout=5, launcher=watch).ok
    assert not watch.ended.is_set()


def test_the_callers_check_can_stop_the_wait():
    calls = []
    registration = wait_for_engines(FakeClient([]), 1, timeout=30, check=lambda: calls.append(1) or len(calls) == 2, check_every=0.1)
    assert registration.outcome is Outcome.STOPPED and len(calls) == 2
