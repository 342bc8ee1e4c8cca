"""Values for tests/test_answers.py that pickle on one side and fail on the other.

The client and the servers both import this module (the tests put this
folder on both sides' ``sys.path``), so its classes pickle by reference.
"""

from __future__ import annotations

from typing import Any


class Job:
    """A parameter object that commands change in place, as casatasks' jobs are."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.log: list[Any] = []
        self.broken = False

    def __setstate__(self, state: dict[str, Any]) -> None:
        if state.get("broken"):
            raise ValueError(f"job {state['name']!r} was marked broken and cannot be restored")
        self.__dict__.update(state)


def note(job: Job, **_others: Any) -> int:
    """Called bare (``note()`` with ``parameters={'job': ...}``): log this server's ID in ``job``."""
    from casa_magics.server.runner import user_namespace

    job.log.append(user_namespace()["casa_server_id"])
    return len(job.log)
