"""Chunk plans: a session range x a symbol list cut into pieces of bounded size.

Every step of a dataset chain processes its range one chunk at a time, so memory depends on the
chunk size, never on the length of the range. A chunk is a run of consecutive sessions and a group
of symbols; its expected row count (sessions x symbols x rows per symbol and session) stays within
a row budget. Symbols are split into groups only when a single session of all of them is over the
budget; otherwise every chunk holds all symbols and the range is cut by sessions. The cuts are even:
as few chunks as the budget allows, each about the same size (a step's peak follows its largest
chunk). With a `period` (the storage's time slices, e.g. TimescaleDB's weekly chunks of minute bars)
the cuts fall between periods where the budget allows, so a period's rows arrive in one chunk (a
first load builds such a slice apart, which is about twice as fast as writing into an existing one).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Sequence
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
                budget: int | None = None, period: Callable[[date], int] | None = None) -> list[Chunk]:
    """Cut `sessions` (ascending) x `symbols` into chunks of at most `budget` expected rows.

    A single (session, symbol) over the budget still makes a chunk of its own. No sessions means no
    chunks; no symbols means one symbol group that is empty (the provider decides what it serves).
    `period` numbers the storage slice of a session: chunks then hold whole periods (a period longer
    than the budget allows is cut within itself, never together with its neighbours), with no
    chunk longer than the even cut without periods would make.
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
    runs = ([list(sessions[i:i + span]) for i in range(0, len(sessions), span)] if period is None
            else _period_runs(sessions, span, period))
    chunks: list[Chunk] = []
    for days in runs:
        for number, group in enumerate(groups):
            chunks.append(Chunk(index=len(chunks), start=days[0], end=days[-1], sessions=len(days), symbols=group,
                                group=number))
    return chunks


def _period_runs(sessions: Sequence[date], span: int, period: Callable[[date], int]) -> list[list[date]]:
    """Consecutive runs of at most `span` sessions made of whole periods; as few runs as that allows,
    the longest as short as it can be (a longer period is cut evenly within itself)."""
    pieces: list[list[date]] = []
    for _, days in itertools.groupby(sessions, key=period):
        whole = list(days)
        size = _balanced(len(whole), span)
        pieces += [whole[i:i + size] for i in range(0, len(whole), size)]
    fewest = len(_pack(pieces, span))
    total = sum(len(p) for p in pieces)
    cap = next(c for c in range(max(math.ceil(total / fewest), *map(len, pieces)), span + 1)
               if len(_pack(pieces, c)) <= fewest)
    return _pack(pieces, cap)


def _pack(pieces: list[list[date]], cap: int) -> list[list[date]]:
    """Pieces joined in order into runs of at most `cap` sessions (a piece is never split)."""
    runs: list[list[date]] = []
    for piece in pieces:
        if runs and len(runs[-1]) + len(piece) <= cap:
            runs[-1] += piece
        else:
            runs.append(list(piece))
    return runs


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
