"""Where chunk progress goes: the run's log and metadata, and any listener in this process (the CLI's bar).

Steps report each finished chunk through `reporter(context)`; it logs a line to the Dagster event log
and hands the report to the listeners registered here. The CLI runs its range in process and
registers one that drives a rich progress bar.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import dagster as dg

from mdpipeline.chain.progress import ChunkReport, Reporter

_listeners: list[Callable[[ChunkReport], None]] = []


@contextmanager
def listening(listener: Callable[[ChunkReport], None]) -> Iterator[None]:
    """Call `listener` with every chunk report of steps run in this process, while the block runs."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


def reporter(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext) -> Reporter:
    """A reporter that logs each chunk to the run and tells the listeners."""
    def report(r: ChunkReport) -> None:
        context.log.info(r.line())
        for listener in list(_listeners):
            listener(r)
    return report
