"""Chunk plans: a session range x a symbol list cut into pieces of bounded size.

Every step of a dataset chain processes its range one chunk at a time, so memory depends on the
chunk size, never on the length of the range. A chunk is a run of consecutive sessions and a group
of symbols; its expected row count (sessions x symbols x rows per symbol and session) stays within
a row budget. Symbols are split into groups only when a single session of all of them is over the
budget; otherwise every chunk holds all symbols and the range is cut by sessions. The cuts are even:
as few chunks as the budget allows, each about the same size (a step's peak follows its largest
chunk).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

DEFAULT_CHUNK_ROWS = 1_000_000
CHUNK_ROWS_ENV = "MDP_CHUNK_ROWS"


@dataclass(frozen=True)
class Chunk:
    """Sessions [start, end] (both inclusive, both sessions) of the given symbols; `index` counts from 0.

    `group` numbers the symbol groups; group 0 also takes the rows that name no symbol at all, so
    they are validated (and quarantined) exactly once.
    """

    index: int
    start: date
    end: date
    sessions: int
    symbols: tuple[str, ...]
    group: int = 0

    def describe(self) -> str:
        """`2024-01-02..2024-01-31 x 100 symbols` for logs and progress lines."""
        days = self.start.isoformat() if self.start == self.end else f"{self.start}..{self.end}"
        return f"{days} x {len(self.symbols)} symbol{'s' if len(self.symbols) != 1 else ''}"


def chunk_rows_budget() -> int:
    """The row budget per chunk: `MDP_CHUNK_ROWS`, else 1,000,000."""
    value = os.environ.get(CHUNK_ROWS_ENV, "")
    if not value:
        return DEFAULT_CHUNK_ROWS
    try:
        budget = int(value.replace("_", ""))
    except ValueError:
        raise ValueError(f"{CHUNK_ROWS_ENV}={value!r} is not a whole number of rows") from None
    if budget <= 0:
        raise ValueError(f"{CHUNK_ROWS_ENV} must be positive, got {budget}")
    return budget


def plan_chunks(sessions: Sequence[date], symbols: Sequence[str], rows_per_symbol_session: float,
                budget: int | None = None) -> list[Chunk]:
    """Cut `sessions` (ascending) x `symbols` into chunks of at most `budget` expected rows.

    A single (session, symbol) over the budget still makes a chunk of its own. No sessions means no
    chunks; no symbols means one symbol group that is empty (the provider decides what it serves).
    """
    if not sessions:
        return []
    budget = budget or chunk_rows_budget()
    per_session = max(rows_per_symbol_session, 1e-9)
    names = tuple(symbols)
    group_size = len(names) or 1
    if group_size * per_session > budget:
        group_size = _balanced(len(names), max(1, math.floor(budget / per_session)))
    groups = [names[i:i + group_size] for i in range(0, len(names), group_size)] or [()]
    span = _balanced(len(sessions), max(1, math.floor(budget / (max(len(groups[0]), 1) * per_session))))
    chunks: list[Chunk] = []
    for first in range(0, len(sessions), span):
        days = sessions[first:first + span]
        for number, group in enumerate(groups):
            chunks.append(Chunk(index=len(chunks), start=days[0], end=days[-1], sessions=len(days), symbols=group,
                                group=number))
    return chunks


def symbol_groups(symbols: Sequence[str], sessions: int, rows_per_symbol_session: float,
                  budget: int | None = None) -> list[tuple[str, ...]]:
    """`symbols` in groups whose whole session range (`sessions` long) stays within the row budget.

    For steps that must see a symbol's whole range at once (e.g. bands learnt over the range).
    """
    budget = budget or chunk_rows_budget()
    names = tuple(symbols)
    size = _balanced(len(names), max(1, math.floor(budget / max(sessions * rows_per_symbol_session, 1e-9))))
    return [names[i:i + size] for i in range(0, len(names), size)] or [()]


def _balanced(total: int, most: int) -> int:
    """The piece size that cuts `total` items into as few pieces of at most `most` as possible, all of
    about the same size: 63 sessions at most 25 per chunk make three chunks of 21, not 25 + 25 + 13.

    The peak memory of a step follows its largest chunk, so evening them out lowers the peak at no
    cost in chunks (and keeps it from depending on how the range length divides by the budget).
    """
    if total <= most:
        return max(most, 1)
    pieces = math.ceil(total / most)
    return math.ceil(total / pieces)
