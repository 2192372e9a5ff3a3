"""Chunk loops with progress: each step reports every chunk it finished (rows, rate, elapsed)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mdpipeline.chunks import Chunk


@dataclass(frozen=True)
class ChunkReport:
    """One finished chunk of a step, with the step's running totals."""

    step: str  # ingest | validate | normalize | store | publish | ...
    asset: str  # e.g. validated/synthetic/bars_1m
    chunk: Chunk
    done: int
    chunks: int
    rows: int  # rows of this chunk
    total_rows: int  # rows of the step so far
    elapsed: float  # seconds since the step started

    @property
    def rows_per_second(self) -> float:
        """The step's rate so far."""
        return self.total_rows / self.elapsed if self.elapsed > 0 else 0.0

    def line(self) -> str:
        """`validated/synthetic/bars_1m: chunk 3/12 (2024-01-02..2024-01-31 x 100 symbols) 819,000 rows, ...`."""
        return (f"{self.asset}: chunk {self.done}/{self.chunks} ({self.chunk.describe()}) {self.rows:,} rows;"
                f" {self.total_rows:,} rows in {self.elapsed:.1f}s ({self.rows_per_second:,.0f} rows/s)")


Reporter = Callable[[ChunkReport], None]


@dataclass(frozen=True)
class StepTotals:
    """What a step's chunk loop did: chunks, rows and seconds."""

    chunks: int
    rows: int
    seconds: float

    @property
    def rows_per_second(self) -> float:
        """Rows per second over the whole step."""
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def metadata(self, unit: str = "rows") -> dict[str, float | int]:
        """Counts for asset metadata (`unit` names what the step counted: rows, payloads, ...)."""
        return {"chunks": self.chunks, unit: self.rows, "seconds": round(self.seconds, 3),
                f"{unit}_per_second": round(self.rows_per_second, 1)}


def run_chunks(step: str, asset: str, chunks: Sequence[Chunk], body: Callable[[Chunk], int],
               report: Reporter | None = None) -> StepTotals:
    """Run `body` on each chunk in order (it returns the chunk's rows), reporting after each one."""
    started = time.perf_counter()
    total = 0
    for done, chunk in enumerate(chunks, start=1):
        rows = body(chunk)
        total += rows
        if report is not None:
            report(ChunkReport(step=step, asset=asset, chunk=chunk, done=done, chunks=len(chunks), rows=rows,
                               total_rows=total, elapsed=time.perf_counter() - started))
    return StepTotals(chunks=len(chunks), rows=total, seconds=time.perf_counter() - started)
