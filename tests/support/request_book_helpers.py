"""Helpers of the dispatcher's unit tests: a compiled command, a server's outcome, a book of requests."""

from __future__ import annotations

from casa_magics.client.commands import compile_command
from casa_magics.client.request_book import RequestBook
from casa_magics.client.requests import Request

COMMAND = compile_command("1+1")


def outcome(value="2", **more) -> dict:
    """A successful outcome as a server sends it (``more`` overrides or adds keys)."""
    return {
        "successful": True, "ret": value, "traceback": None, "command_start_time": 1.0, "command_stop_time": 2.0,
        "stdout": "", "stderr": "", **more,
    }


def book_with(n: int, target: int | None = 1) -> tuple[RequestBook, list[Request]]:
    """A request book holding ``n`` new requests for ``target``."""
    book = RequestBook(first_id=5)
    return book, [book.new(COMMAND, None, target, None, None) for _ in range(n)]
