"""The ``since=`` cursor of the candidates list: what a poll has seen, so the next gets only news.

A candidate changes after it is created in two ways: it finishes (running to complete, failed,
duplicate or lost), and ``finalize`` records the promotion ladder's rungs on a few finished ones
just before the job ends. So a cursor holds three things, none of them a clock (workers' clocks
differ, and a row can commit after a later one): the next candidate id not yet seen, the ids seen
while still running (they come back once they are not), and whether the job had ended. A cursor
from before the job ended, used after, gets every candidate once more, which is how the rungs
reach a poller. The text form is ``[r|e]<next>(.<running id>)*``; a bare ``0`` starts from the
beginning.
"""

from __future__ import annotations

from dataclasses import dataclass

# What the query parameter accepts (FastAPI answers anything else with a 422 naming ``since``).
PATTERN = r"^[re]?\d{1,15}(\.\d{1,15})*$"  # bounded by the max_length
MAX_SINCE = 8000  # characters
# Candidate ids are 32-bit integers in the database: a larger one in a cursor is not a
# candidate this server made, and PostgreSQL would refuse to compare with it (a 500).
MAX_ID = 2**31 - 1


@dataclass(frozen=True)
class Cursor:
    """A parsed ``since``: resume at id ``next``, recheck ``running``, ``ended`` as seen then."""

    next: int
    running: tuple[int, ...] = ()
    ended: bool = False

    @classmethod
    def parse(cls, text: str) -> Cursor:
        """The cursor ``text`` (already matched against :data:`PATTERN`) stands for."""
        ended = text.startswith("e")
        first, *rest = text.lstrip("re").split(".")
        return cls(next=int(first), running=tuple(int(i) for i in rest), ended=ended)

    @classmethod
    def check(cls, text: str | None) -> str | None:
        """``text`` unchanged when every id in it is a possible candidate id (a validator).

        Raises:
            ValueError: An id above :data:`MAX_ID` (FastAPI answers 422 naming ``since``).
        """
        if text is not None:
            cursor = cls.parse(text)
            if max((cursor.next, *cursor.running)) > MAX_ID:
                raise ValueError(f"candidate ids in a cursor are at most {MAX_ID}")
        return text

    def __str__(self) -> str:
        return ("e" if self.ended else "r") + ".".join(map(str, (self.next, *self.running)))
