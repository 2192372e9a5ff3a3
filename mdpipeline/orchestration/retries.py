"""Step retries for transient database faults: a restarted server, a terminated session, a dropped link.

A step that loses its PostgreSQL connection fails with `psycopg.OperationalError` (server shut down,
`pg_terminate_backend`, connection refused while the server restarts), or ADBC's `OperationalError`
when it was reading. Every step of the chain is
safe to run again: each chunk commits whole, a re-load writes only what differs, the relay sends only
unconfirmed rows. So such a failure asks Dagster to retry the step after a pause (`RetryRequested`,
which the in-process and multiprocess executors honour) instead of failing the run. Statement and
lock timeouts (`QueryCanceled`) and every other error fail the step at once: repeating them would
only repeat the wait. A retry re-runs the whole step; chunks committed before the fault are found
unchanged and left alone.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import adbc_driver_manager
import dagster as dg
import psycopg

MAX_RETRIES = 3
SECONDS_TO_WAIT = 5.0

F = TypeVar("F", bound=Callable[..., Any])


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) is a lost or refused database connection."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, psycopg.errors.QueryCanceled):
            return False
        # psycopg's, and ADBC's (bulk reads: storage.reader) for a refused or lost connection.
        if isinstance(current, psycopg.OperationalError | adbc_driver_manager.OperationalError):
            return True
        current = current.__cause__ or current.__context__
    return False


def _retry() -> dg.RetryRequested:
    return dg.RetryRequested(max_retries=MAX_RETRIES, seconds_to_wait=SECONDS_TO_WAIT)


@contextlib.contextmanager
def _transient_as_retry() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        if is_transient(exc):
            raise _retry() from exc
        raise


def retry_transient(fn: F) -> F:
    """Wrap an asset body: a transient database fault becomes a Dagster step retry (at most MAX_RETRIES)."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def generator(*args: Any, **kwargs: Any) -> Iterator[Any]:
            with _transient_as_retry():
                yield from fn(*args, **kwargs)
        return generator  # type: ignore[return-value]

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        with _transient_as_retry():
            return fn(*args, **kwargs)
    return call  # type: ignore[return-value]
