"""Chunk loops with progress: each step reports every chunk it finished (rows, rate, elapsed)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

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

    @property
    def unit(self) -> str:
        """What the step counts: payloads when it ingests, rows otherwise."""
        return "payloads" if self.step == "ingest" else "rows"

    def line(self) -> str:
        """`validated/synthetic/bars_1m: chunk 3/12 (2024-01-02..2024-01-31 x 100 symbols) 819,000 rows, ...`."""
        unit = self.unit
        return (f"{self.asset}: chunk {self.done}/{self.chunks} ({self.chunk.describe()}) {self.rows:,} {unit};"
                f" {self.total_rows:,} {unit} in {self.elapsed:.1f}s ({self.rows_per_second:,.0f} {unit}/s)")


Reporter = Callable[[ChunkReport], None]
T = TypeVar("T")


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
    return run_pipelined(step, asset, chunks, lambda chunk: chunk, lambda chunk, _: body(chunk), report,
                         ahead=False)


def run_pipelined(step: str, asset: str, chunks: Sequence[Chunk], prepare: Callable[[Chunk], T],
                  commit: Callable[[Chunk, T], int], report: Reporter | None = None, *,
                  ahead: bool = True) -> StepTotals:
    """Run `prepare` then `commit` on each chunk in order, preparing chunk k+1 in a background thread
    while chunk k commits (`ahead`), so the two cores overlap: e.g. reading and encoding the next
    chunk while the database ingests this one. `commit` returns the chunk's rows.

    At most two chunks are in memory. `prepare` must not use the connection `commit` uses. An error
    in either stops the loop; the chunks committed before it stay committed.
    """
    started = time.perf_counter()
    total = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"mdp-{step}") as pool:
        pending: Future[T] | None = pool.submit(prepare, chunks[0]) if ahead and chunks else None
        for done, chunk in enumerate(chunks, start=1):
            if pending is not None:
                prepared = pending.result()
                pending = pool.submit(prepare, chunks[done]) if done < len(chunks) else None
            else:
                prepared = prepare(chunk)
            rows = commit(chunk, prepared)
            total += rows
            if report is not None:
                report(ChunkReport(step=step, asset=asset, chunk=chunk, done=done, chunks=len(chunks), rows=rows,
                                   total_rows=total, elapsed=time.perf_counter() - started))
    return StepTotals(chunks=len(chunks), rows=total, seconds=time.perf_counter() - started)
