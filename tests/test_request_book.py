"""Pure logic: the client's request book (no cluster)."""

from __future__ import annotations

import pytest

from casa_magics.client.request_book import flatten_request_ids
from casa_magics.client.requests import CANCELLED, HOLDING, RECEIVED, TIMEOUT
from casa_magics.core.errors import CommandRequestError

from .support.request_book_helpers import book_with, outcome


# ------------------------------------------------------------------ request book
def test_ids_go_on_from_the_first_and_unknown_ids_are_refused():
    book, requests = book_with(3)
    assert [r.id for r in requests] == [5, 6, 7]
    assert book.known([7, 5]) == [requests[2], requests[0]]
    with pytest.raises(CommandRequestError, match="unknown request ID 4"):
        book.known([5, 4])


def test_an_event_is_set_once_every_request_it_waits_for_is_finished():
    book, (a, b) = book_with(2)
    event = book.event_for([a.id, b.id])
    book.notify(book.fail([a], TIMEOUT, "gone"))
    assert not event.is_set()
    book.notify(book.fail([a, b], TIMEOUT, "gone"))
    assert event.is_set()
    assert book.event_for([a.id]).is_set()  # finished already


def test_a_forgotten_event_is_not_tracked():
    book, (a,) = book_with(1)
    event = book.event_for([a.id])
    book.forget_event(event)
    book.notify(book.fail([a], TIMEOUT, "gone"))
    assert not event.is_set()


def test_only_finished_requests_can_be_forgotten():
    book, (a, b) = book_with(2)
    book.fail([a], CANCELLED, "cut short")
    book.lost_with[a.id] = object()
    with pytest.raises(CommandRequestError, match=r"\[6\] are not finished"):
        book.forget([a.id, b.id])
    assert book.forget() == [a.id]
    assert list(book.requests) == [b.id] and not book.lost_with


def test_outcomes_are_recorded_unless_the_client_ended_the_request_for_good():
    book, (a, b, c) = book_with(3)
    book.settled.add(b.id)
    c.record_failure(CANCELLED, "cancelled before it was sent")
    finished, ran = book.record_outcomes([a, b, c], [outcome(), outcome(), outcome()])
    assert finished == [a.id, b.id, c.id]
    assert len(ran) == 1 and a.status == RECEIVED and a.successful
    assert b.status == HOLDING and b.id not in book.settled  # a late answer is not recorded
    assert c.status == CANCELLED


def test_a_failed_answer_to_a_cancel_asked_for_is_cancelled():
    book, (a, b) = book_with(2)
    book.cancel_asked.update({a.id, b.id})
    failed = outcome(successful=False, traceback="KeyboardInterrupt")
    book.record_outcomes([a, b], [failed, outcome()])
    assert (a.status, b.status) == (CANCELLED, RECEIVED)
    assert not book.cancel_asked


def test_a_malformed_outcome_fails_its_own_request_only():
    book, (a, b) = book_with(2)
    malformed = {key: value for key, value in outcome().items() if key != "successful"}
    finished, ran = book.record_outcomes([a, b], [malformed, outcome()])
    assert finished == [a.id, b.id] and len(ran) == 2  # both ran: both count for the duration estimate
    assert a.status == RECEIVED and not a.successful and "the server's answer could not be read" in a.traceback
    assert b.successful


def test_an_unreadable_answer_fails_every_request_not_ended_already():
    book, (a, b) = book_with(2)
    book.settled.add(b.id)
    assert book.record_unreadable([a, b], "boom") == [a.id]
    assert a.traceback == "boom" and not a.successful


def test_request_ids_are_flattened():
    assert flatten_request_ids([1, [2, (3,)], []]) == [1, 2, 3]
    with pytest.raises(CommandRequestError):
        flatten_request_ids([1, True])
