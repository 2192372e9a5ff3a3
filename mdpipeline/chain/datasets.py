"""The datasets a provider can serve, each described once: what every step of its chain needs to know.

A `Dataset` names its frames' columns, the keys that identify a row, the column that places a row on
a session, its validation schemas and screen, how it is normalized, stored and announced, and its
topic. The chain steps (`mdpipeline.chain.steps`) and the Dagster factory
(`mdpipeline.orchestration.chain`) read these descriptions and contain no per-dataset code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date

import pandera.polars as pa
import polars as pl
import psycopg

from mdpipeline.contracts.events import BARS_1D_EVENT_FIELDS, CORPORATE_ACTIONS_EVENT_FIELDS
from mdpipeline.contracts.frames import (
    CANONICAL_BARS_1D,
    CANONICAL_BARS_1M,
    CANONICAL_CORPORATE_ACTIONS,
    STANDARD_COLUMNS,
    STORED_ACTIONS,
    STORED_BARS_1D,
    STORED_BARS_1M,
)
from mdpipeline.distribute.outbox import outbox_rows, session_outbox_rows
from mdpipeline.distribute.topics import BARS_1D, BARS_1M, CORPORATE_ACTIONS, TopicSpec
from mdpipeline.normalize.bars import Normalized, normalize_bars_1d
from mdpipeline.normalize.corporate_actions import normalize_corporate_actions
from mdpipeline.normalize.minute_bars import normalize_bars_1m
from mdpipeline.quality.schemas import (
    NormalizedBars1d,
    NormalizedBars1m,
    NormalizedCorporateActions,
    StandardBars1d,
    StandardBars1m,
    StandardCorporateActions,
)
from mdpipeline.quality.session_window import session_window
from mdpipeline.storage.corporate_actions import replace_provider_actions
from mdpipeline.storage.loader import LoadResult, replace_range
from mdpipeline.stream.stream_bars import reconcile_stream_bars


@dataclass(frozen=True)
class StoreScope:
    """What one chunk's store replaces: a provider's sessions [start, end] of some symbols (None: all)."""

    provider: str
    start: date
    end: date
    symbols: tuple[str, ...] | None
    instruments: tuple[int, ...] | None
    run_id: str
    allow_deletes: bool = False


Normalizer = Callable[[pl.DataFrame, str, pl.DataFrame, str], Normalized]
Storer = Callable[[psycopg.Connection, pl.DataFrame, StoreScope], LoadResult]
Announcer = Callable[[pl.DataFrame, dict[str, str]], pl.DataFrame]
Screen = Callable[[pl.DataFrame, date, date, str], pl.DataFrame]


@dataclass(frozen=True)
class Dataset:
    """One dataset's chain: raw -> validated -> normalized -> stored -> published."""

    name: str
    title: str  # "daily bars", for descriptions
    date_column: str  # the column that places a validated/normalized row on a session
    key: tuple[str, ...]  # a row within one fetch: rows sharing it must be equal (else all are quarantined)
    latest_key: tuple[str, ...]  # a row across fetches: the freshest payload holding it wins
    rows_per_symbol_session: float  # for sizing chunks
    validated_columns: dict[str, pl.DataType]
    canonical_columns: dict[str, pl.DataType]
    stored_columns: dict[str, pl.DataType]
    standard_schema: type[pa.DataFrameModel]
    canonical_schema: type[pa.DataFrameModel]
    normalize: Normalizer
    store: Storer
    announce: Announcer  # outbox rows announcing (some of) a stored frame
    topic: TopicSpec
    table: str
    stored_layer: str = "md"  # asset key prefix of the stored layer: md/<provider>/<name> or ref/...
    stored_group: str = "md"
    screen: Screen | None = None  # extra validation after the schema (findings; errors are quarantined)
    event_unit: str = "bar"  # what one message carries, for docs and metadata
    announces_changes: bool = False  # True: only new or changed (instrument, session)s are announced

    def stored_key(self, provider: str) -> tuple[str, str, str]:
        """Asset key path of the stored layer."""
        return (self.stored_layer, provider, self.name)


def _store_bars(table: str) -> Storer:
    def store(conn: psycopg.Connection, frame: pl.DataFrame, scope: StoreScope) -> LoadResult:
        result = replace_range(conn, table, frame, provider=scope.provider, start=scope.start, end=scope.end,
                               symbols=scope.symbols, instruments=scope.instruments,
                               allow_deletes=scope.allow_deletes)
        if table == "md.bars_1m" and frame.height:  # the REST bars win over the provider's streamed ones
            reconcile_stream_bars(conn, scope.provider, start=scope.start, end=scope.end,
                                  instruments=scope.instruments, run_id=scope.run_id,
                                  ingested_at=frame["ingested_at"].max())  # type: ignore[arg-type]
        return result
    return store


def _store_actions(conn: psycopg.Connection, frame: pl.DataFrame, scope: StoreScope) -> LoadResult:
    return replace_provider_actions(conn, frame.select([c for c in STORED_ACTIONS if c in frame.columns]),
                                    provider=scope.provider, start=scope.start, end=scope.end, run_id=scope.run_id,
                                    symbols=scope.symbols, allow_deletes=scope.allow_deletes)


def _every_bar(frame: pl.DataFrame, headers: dict[str, str]) -> pl.DataFrame:
    """Daily bars: every stored bar is announced again on each run (consumers dedupe by event id)."""
    return outbox_rows(frame, BARS_1D.name, BARS_1D_EVENT_FIELDS, headers)


def _sessions(frame: pl.DataFrame, headers: dict[str, str]) -> pl.DataFrame:
    """Minute bars: one message per instrument session (the store keeps those that are new or changed)."""
    return session_outbox_rows(frame, BARS_1M.name, headers)


def _every_action(frame: pl.DataFrame, headers: dict[str, str]) -> pl.DataFrame:
    """Corporate actions: every action of the range is announced on each run."""
    return outbox_rows(frame.with_columns(pl.col("ex_date").alias("session_date")), CORPORATE_ACTIONS.name,
                       CORPORATE_ACTIONS_EVENT_FIELDS, headers)


def _minute_window(frame: pl.DataFrame, start: date, end: date, calendar_name: str) -> pl.DataFrame:
    return session_window(frame, start, end, calendar_name=calendar_name)


def _normalize_1d(frame: pl.DataFrame, provider: str, symbology: pl.DataFrame, calendar_name: str) -> Normalized:
    return normalize_bars_1d(frame, provider, symbology)


def _normalize_actions(frame: pl.DataFrame, provider: str, symbology: pl.DataFrame,
                       calendar_name: str) -> Normalized:
    return normalize_corporate_actions(frame, provider, symbology)


BARS_1D_DATASET = Dataset(
    name="bars_1d", title="daily bars", date_column="session_date", key=("symbol", "session_date"),
    latest_key=("symbol", "session_date"), rows_per_symbol_session=1.0,
    validated_columns=STANDARD_COLUMNS["bars_1d"], canonical_columns=CANONICAL_BARS_1D,
    stored_columns=STORED_BARS_1D, standard_schema=StandardBars1d, canonical_schema=NormalizedBars1d,
    normalize=_normalize_1d, store=_store_bars("md.bars_1d"), announce=_every_bar, topic=BARS_1D,
    table="md.bars_1d",
)
BARS_1M_DATASET = Dataset(
    name="bars_1m", title="one-minute bars", date_column="session_date", key=("symbol", "ts"),
    latest_key=("symbol", "ts"), rows_per_symbol_session=390.0,
    validated_columns={**STANDARD_COLUMNS["bars_1m"], "session_date": pl.Date()},
    canonical_columns=CANONICAL_BARS_1M, stored_columns=STORED_BARS_1M, standard_schema=StandardBars1m,
    canonical_schema=NormalizedBars1m, normalize=normalize_bars_1m, store=_store_bars("md.bars_1m"),
    announce=_sessions, topic=BARS_1M, table="md.bars_1m", screen=_minute_window,
    event_unit="instrument session", announces_changes=True,
)
CORPORATE_ACTIONS_DATASET = Dataset(
    # Two rows differing only in amount are two dividends (regular + special), not a conflict.
    name="corporate_actions", title="corporate actions", date_column="ex_date",
    key=("symbol", "ex_date", "action", "ratio", "amount"), latest_key=("symbol", "ex_date", "action"),
    rows_per_symbol_session=0.05, validated_columns=STANDARD_COLUMNS["corporate_actions"],
    canonical_columns=CANONICAL_CORPORATE_ACTIONS, stored_columns=STORED_ACTIONS,
    standard_schema=StandardCorporateActions, canonical_schema=NormalizedCorporateActions,
    normalize=_normalize_actions, store=_store_actions, announce=_every_action, topic=CORPORATE_ACTIONS,
    table="ref.corporate_actions", stored_layer="ref", stored_group="reference", event_unit="action",
)
DATASETS: dict[str, Dataset] = {d.name: d for d in (BARS_1D_DATASET, BARS_1M_DATASET, CORPORATE_ACTIONS_DATASET)}


def dataset(name: str) -> Dataset:
    """The description of dataset `name`."""
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})") from None


def datasets_in_order(names: Sequence[str]) -> list[Dataset]:
    """The descriptions of `names`, in the canonical order (daily bars, minute bars, corporate actions)."""
    return [d for n, d in DATASETS.items() if n in names]
