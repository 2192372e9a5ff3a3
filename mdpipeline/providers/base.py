"""The provider contract: a query, an extract step (raw payloads, untouched) and a transform step
(payloads -> one standard frame per dataset).

Extract talks to the outside world; transform is pure and runs on payloads read back from `raw`, so
re-processing never needs the provider again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Protocol, runtime_checkable

import polars as pl

from mdpipeline.contracts.frames import DATASETS, STANDARD_COLUMNS, empty_standard_frame

# The standard frames are part of the data contracts; re-exported here for the adapters.
__all__ = ["DATASETS", "STANDARD_COLUMNS", "Provider", "ProviderError", "Query", "RawPayload", "empty_standard_frame"]


class ProviderError(RuntimeError):
    """A provider could not deliver; the message says why and never contains secrets."""


@dataclass(frozen=True)
class Query:
    """What to fetch: one dataset, an inclusive range of session dates, some provider symbols."""

    dataset: str
    start: date
    end: date
    symbols: tuple[str, ...]


@dataclass(frozen=True)
class RawPayload:
    """What a provider sent for one request, kept byte for byte.

    A payload covers the sessions [session_date, session_end] (one day unless the provider answers a
    range in one response, e.g. a full daily history). `request_key` identifies the request within
    (provider, dataset, session_date), so a re-fetch of the same request with the same bytes is
    recognised and not stored twice. `params` never holds secrets. `symbols` (when the provider records
    them) lets a chunk of a range read only the payloads of its symbols. `payload_id` is set once the
    payload has been stored in `raw.payloads`.
    """

    provider: str
    dataset: str
    session_date: date
    request_key: str
    endpoint: str
    params: dict[str, Any]
    body: bytes
    content_type: str = "application/json"
    status: int = 200
    fetched_at: datetime | None = None
    payload_id: int | None = field(default=None, compare=False)
    session_end: date | None = None
    symbols: tuple[str, ...] = ()  # the symbols the request asked for (empty: not recorded)

    @property
    def last_session(self) -> date:
        """Last session the payload covers."""
        return self.session_end or self.session_date

    @property
    def sha256(self) -> str:
        """Content hash of the body."""
        return hashlib.sha256(self.body).hexdigest()


@runtime_checkable
class Provider(Protocol):
    """One market-data source."""

    name: str
    datasets: tuple[str, ...]

    def extract(self, query: Query) -> list[RawPayload]:
        """Fetch the raw payloads answering `query`, one or more per session date."""
        ...

    def transform(self, dataset: str, payloads: Sequence[RawPayload]) -> pl.DataFrame:
        """Turn stored payloads into the standard frame of `dataset` (`contracts.frames.STANDARD_COLUMNS`).

        Values that do not parse become nulls rather than errors, so validation can quarantine
        the row with a reason instead of the whole partition failing.
        """
        ...
