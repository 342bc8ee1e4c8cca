"""Pure logic: the dispatcher's queue policy, as a function of servers and queues (no cluster)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from casa_magics.client.queue_policy import (
    BATCH_WINDOW,
    ESTIMATE_WEIGHT,
    MAX_BATCH,
    MAX_IN_FLIGHT,
    assign_holding,
    batch_for_server,
    next_estimate,
    untargeted_batch_size,
)


@dataclass
class Load:
    """A server as the policy sees it."""

    name: str
    usable: bool = True
    free: bool = True


# ------------------------------------------------------------ one server's queue
def test_a_server_with_room_takes_what_waits_for_it():
    assert batch_for_server(waiting=3, usable=True, in_flight=0) == 3
    assert batch_for_server(waiting=3, usable=True, in_flight=MAX_IN_FLIGHT - 1) == 3


def test_a_full_server_holds_its_requests_to_send_together_later():
    assert batch_for_server(waiting=3, usable=True, in_flight=MAX_IN_FLIGHT) == 0


def test_nothing_goes_to_an_unusable_server_or_when_nothing_waits():
    assert batch_for_server(waiting=3, usable=False, in_flight=0) == 0
    assert batch_for_server(waiting=0, usable=True, in_flight=0) == 0


def test_one_message_carries_at_most_max_batch():
    assert batch_for_server(waiting=MAX_BATCH + 10, usable=True, in_flight=0) == MAX_BATCH


# --------------------------------------------------------- untargeted batch size
@pytest.mark.parametrize("estimate", [None, BATCH_WINDOW, 1.0])
def test_slow_or_unknown_commands_go_one_at_a_time(estimate):
    assert untargeted_batch_size(estimate, holding=100, usable=2) == 1


def test_quick_commands_go_in_batches_that_fill_the_window():
    estimate = BATCH_WINDOW / 10
    assert untargeted_batch_size(estimate, holding=1000, usable=2) == 10


def test_a_batch_is_no_more_than_a_fair_share_of_what_is_held():
    assert untargeted_batch_size(1e-9, holding=7, usable=2) == 4
    assert untargeted_batch_size(1e-9, holding=1, usable=2) == 1


def test_a_batch_is_at_most_max_batch():
    assert untargeted_batch_size(0.0, holding=10 * MAX_BATCH, usable=1) == MAX_BATCH


# -------------------------------------------------------------- the holding queue
def test_held_requests_go_to_the_first_free_server_one_at_a_time_while_unknown():
    servers = [Load("1", free=False), Load("2"), Load("3")]
    plan = assign_holding(servers, holding=5, estimate=None)
    assert [(s.name, n) for s, n in plan] == [("2", 1), ("3", 1)]


def test_nothing_held_or_nothing_free_sends_nothing():
    assert assign_holding([Load("1")], holding=0, estimate=None) == []
    assert assign_holding([Load("1", free=False), Load("2", usable=False, free=False)], 3, None) == []


def test_quick_commands_share_what_is_held_fairly_among_the_usable_servers():
    servers = [Load("1"), Load("2"), Load("3", usable=False, free=False)]
    plan = assign_holding(servers, holding=9, estimate=1e-9)
    # fair share of 9 among 2 usable is 5; the second server gets a fair share of the 4 left
    assert [(s.name, n) for s, n in plan] == [("1", 5), ("2", 2)]


def test_the_plan_never_takes_more_than_is_held():
    plan = assign_holding([Load(str(i)) for i in range(4)], holding=2, estimate=None)
    assert sum(n for _, n in plan) == 2
    assert [s.name for s, _ in plan] == ["0", "1"]


def test_every_server_lost_still_counts_one_usable():
    plan = assign_holding([Load("1", usable=False, free=False)], holding=3, estimate=1e-9)
    assert plan == []


def test_the_policy_changes_nothing():
    servers = [Load("1"), Load("2")]
    assign_holding(servers, holding=3, estimate=None)
    assert servers == [Load("1"), Load("2")]


# --------------------------------------------------------------- duration estimate
def test_the_first_command_sets_the_estimate_and_later_ones_move_it():
    first = next_estimate(None, 10.0, 10.5)
    assert first == 0.5
    assert next_estimate(first, 0.0, 1.5) == pytest.approx(0.5 + ESTIMATE_WEIGHT * 1.0)


def test_a_negative_duration_counts_as_zero():
    assert next_estimate(None, 2.0, 1.0) == 0.0
