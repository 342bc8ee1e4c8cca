"""Pure logic of the dispatcher's parts: server records, the watchdog's verdicts, gangs, cancelling (no cluster)."""

from __future__ import annotations

import collections
from types import SimpleNamespace


from casa_magics.client.cancelling import cancel_requests, masters_for_workers
from casa_magics.client.commands import compile_command
from casa_magics.client.gang_supervision import Gang, GangEnd, GangSupervisor
from casa_magics.client.request_book import RequestBook
from casa_magics.client.requests import CANCELLED, SENT, TIMEOUT, Request
from casa_magics.client.server_record import Loss, Replacement, ServerRecord
from casa_magics.client.watchdog import Sweep, judge_silence, look_at
from casa_magics.cluster.server_map import ServerInfo
from casa_magics.server.gang_member import MASTER, WORKER, GangTicket

from .support.request_book_helpers import COMMAND, book_with, outcome


def server(number: int = 1) -> ServerRecord:
    return ServerRecord(ServerInfo(number, number - 1, number - 1, "elsewhere.invalid", 1000 + number), view=None)


# ----------------------------------------------------------------- server record
def test_a_lost_servers_reason_says_where_its_replacement_stands():
    loss = Loss("its process is gone")
    assert loss.text == "its process is gone"
    loss.replacement = Replacement.STARTING
    assert loss.text == "its process is gone; a replacement is starting"
    loss.refuse("the replacement did not register")
    assert loss.replacement is Replacement.REFUSED
    assert loss.text == "its process is gone; not replaced: the replacement did not register"


def test_a_replacement_tells_its_note_once():
    fresh = ServerRecord(server().info, None, replaced="server 1 was replaced")
    assert fresh.note_untold and not server().note_untold


def test_usable_and_free():
    record = server()
    assert record.usable and record.free
    record.waiting.append(object())
    assert record.usable and not record.free
    record.loss = Loss("gone")
    assert not record.usable and not record.replacing


# ----------------------------------------------------------------- the watchdog
def test_a_stopped_server_times_out_only_with_work_and_after_the_timeout():
    assert judge_silence(True, None, False, True, True, now=10.0, timeout=5.0).since == 10.0
    assert not judge_silence(True, 10.0, False, True, True, now=14.0, timeout=5.0).times_out
    assert judge_silence(True, 10.0, False, True, True, now=15.0, timeout=5.0).times_out
    assert not judge_silence(True, 10.0, False, False, False, now=99.0, timeout=5.0).times_out
    assert not judge_silence(True, 10.0, True, True, True, now=99.0, timeout=5.0).times_out  # once


def test_a_timed_out_server_is_back_when_it_runs_and_has_nothing_in_flight():
    assert judge_silence(False, 10.0, True, False, False, now=20.0, timeout=5.0).back
    assert not judge_silence(False, 10.0, True, True, True, now=20.0, timeout=5.0).back
    running = judge_silence(False, 10.0, False, True, True, now=20.0, timeout=5.0)
    assert running.since is None and not running.back and not running.times_out


# ------------------------------------------------------------------------ gangs
def a_gang(book: RequestBook, servers: dict, cancelled: list | None = None) -> GangSupervisor:
    """A gang on ``servers``; the (server, request) pairs its supervisor cancels go to ``cancelled``."""
    cancelled = [] if cancelled is None else cancelled

    def board(server_record):
        return SimpleNamespace(cancel_and_interrupt=lambda request_id, _pid: cancelled.append(
            (server_record.info.server, request_id)))

    supervisor = GangSupervisor(servers, book, SimpleNamespace(board=board))
    supervisor.form(COMMAND, compile_command("serve()"), None, None, sorted(servers), None)
    return supervisor


def test_a_gang_is_formed_master_first():
    book = RequestBook()
    supervisor = a_gang(book, {1: server(1), 2: server(2)})
    (gang,) = supervisor.gangs.values()
    assert [(r.server, r.gang.role, r.gang.size) for r in gang.requests] == [(1, MASTER, 2), (2, WORKER, 2)]
    assert list(book.requests) == [1, 2]


def test_a_gang_whose_member_was_lost_ends_its_other_members_at_once():
    book, servers = RequestBook(), {1: server(1), 2: server(2)}
    supervisor = a_gang(book, servers)
    (gang,) = supervisor.gangs.values()
    master, worker = gang.requests
    servers[2].waiting.append(worker)
    master.record_failure(TIMEOUT, "Timeout: server 1 was lost")
    supervisor.check(now=100.0)
    assert (gang.end, gang.lost_server, gang.ended_at) == (GangEnd.MEMBER_LOST, 1, 100.0)
    assert gang.why == "server 1 of the gang was lost"
    assert worker.status == TIMEOUT and "gang of request 1 ended: server 1 of the gang was lost" in worker.traceback
    assert worker not in servers[2].waiting  # never sent now
    supervisor.check(now=101.0)
    assert not supervisor.gangs and not book.settled  # every member answered: the gang is forgotten


def test_after_its_master_finished_a_gangs_worker_gets_a_grace_time():
    book, servers, cancelled = RequestBook(), {1: server(1), 2: server(2)}, []
    supervisor = a_gang(book, servers, cancelled)
    (gang,) = supervisor.gangs.values()
    master, worker = gang.requests
    worker.status = SENT
    servers[2].in_flight.append(SimpleNamespace(requests=[worker]))
    master.record_outcome(outcome())
    supervisor.check(now=100.0)
    assert gang.end is GangEnd.MASTER_FINISHED and gang.why == "its master (request 1 on server 1) finished"
    assert worker.status == SENT  # running, within the grace time
    supervisor.check(now=106.0)
    assert worker.status == TIMEOUT and gang.interrupted_at == {worker.id: 106.0}
    assert cancelled == [(2, worker.id)]


def test_cancelling_a_worker_cancels_its_master():
    master = Request(1, COMMAND, None, 1)
    worker = Request(2, COMMAND, None, 2)
    master.gang, worker.gang = GangTicket(7, MASTER, 2), GangTicket(7, WORKER, 2)
    chosen, outcome_ = masters_for_workers([worker, master], {7: Gang([master, worker])})
    assert chosen == [master]
    assert outcome_ == {2: "ends when its gang's master (request 1) lets it go"}


def test_cancelling_unsent_requests_takes_them_from_their_queues():
    book, (held, waiting) = book_with(2, target=None)
    waiting.target = waiting.server = 1
    servers, holding = {1: server(1)}, collections.deque([held])
    servers[1].waiting.append(waiting)
    done = cancel_requests([held, waiting], {}, servers, holding, SimpleNamespace(board=lambda _s: None), book)
    assert done == {held.id: "cancelled before it was sent", waiting.id: "cancelled before it was sent"}
    assert not holding and not servers[1].waiting and held.status == waiting.status == CANCELLED


def test_a_server_that_does_not_confirm_a_cancel_is_named_and_the_others_are_cancelled():
    book, (first, second) = book_with(2)
    first.status = second.status = SENT
    first.server, second.server = 1, 2
    silent = "server 1 (host node1) did not confirm within 5 s that request 1 is cancelled"

    class Board:
        def __init__(self, server_id):
            self.server_id = server_id

        def cancel_and_interrupt(self, request_id, pid):
            if self.server_id == 1:
                raise TimeoutError(silent)
            return True

    boards = SimpleNamespace(board=lambda s: Board(s.info.server))
    done = cancel_requests([first, second], {}, {1: server(1), 2: server(2)}, collections.deque(), boards, book)
    assert done == {first.id: f"not confirmed: {silent}", second.id: "interrupted while running"}
    assert book.cancel_asked == {first.id, second.id}


def test_a_sweep_asks_the_session_afresh_once_when_a_server_looks_lost():
    asked = []

    def lost_reason(fresh=False):
        asked.append(fresh)
        return "the Slurm job ended" if fresh else None

    session = SimpleNamespace(client=SimpleNamespace(ids=[]), lost_reason=lost_reason)
    sweep = Sweep(session)
    assert sweep.look(server(1).info) == ("the Slurm job ended", False)  # its engine unregistered; Slurm says why
    assert sweep.look(server(2).info) == ("the Slurm job ended", False)
    assert asked == [False, True]


def test_an_unregistered_engine_is_lost():
    assert look_at(server(1).info, registered=set()) == ("its engine unregistered from the controller", False)
