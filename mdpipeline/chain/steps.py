"""The chunk bodies of a dataset chain: ingest, validate, normalize, store, for one chunk each.

Each function does one step for one chunk (a session range x a symbol group) and hands its result
to the next step through the frame store (`storage.frames`): validated and normalized rows, and the
rows rejected on the way ("rejects"). Only the store step writes the chunk's outcome to the
database, in one transaction: its rows, its quarantine (the rejects of validation and
normalization) and the outbox rows announcing what changed. A chunk therefore commits whole or not
at all, and re-running a range converges to the same state whatever chunking the runs used.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime

import polars as pl
import psycopg

from mdpipeline.chain.datasets import Dataset, StoreScope
from mdpipeline.chunks import Chunk
from mdpipeline.contracts.frames import REJECT_COLUMNS
from mdpipeline.distribute.events import lineage_headers
from mdpipeline.distribute.outbox import enqueue
from mdpipeline.distribute.topics import DEAD_LETTER
from mdpipeline.normalize.bars import stamp
from mdpipeline.providers.base import Provider, Query, RawPayload
from mdpipeline.providers.reconcile import prefer_latest_payload
from mdpipeline.quality.validate import Validation, conforms, validate
from mdpipeline.sessions import with_session_date
from mdpipeline.storage.frames import ALL_SYMBOLS, FrameStore
from mdpipeline.storage.loader import LoadResult, in_key_order
from mdpipeline.storage.migrations import TIME_PARTITIONED
from mdpipeline.storage.partitions import ensure_partitions
from mdpipeline.storage.quarantine_store import as_rejects, replace_quarantine
from mdpipeline.storage.raw_store import load_payloads, save_payloads

ROWS, REJECTS = "rows", "rejects"
PLACE = "__place"  # the session a row belongs to, even when its own date did not parse
STAGES = ("validate", "normalize")


@dataclass(frozen=True)
class Chain:
    """One provider's chain of one dataset, in one run."""

    dataset: Dataset
    provider: str
    run_id: str
    frames: FrameStore
    calendar_name: str
    symbology: pl.DataFrame  # instrument_id, symbol, valid_from, valid_to

    def key(self, layer: str) -> tuple[str, str, str]:
        """Asset key path of a layer (raw, validated, normalized, md/ref, published)."""
        return (layer, self.provider, self.dataset.name)

    def read(self, layer: str, part: str, chunk: Chunk) -> pl.DataFrame:
        """The chunk's rows (or rejects) of an intermediate layer, as written by the step upstream."""
        schema = REJECT_COLUMNS if part == REJECTS else (
            self.dataset.validated_columns if layer == "validated" else self.dataset.canonical_columns)
        column = "session_date" if part == REJECTS else self.dataset.date_column
        return self.frames.scan(self.key(layer), part, start=chunk.start, end=chunk.end, symbols=chunk.symbols,
                                date_column=column, schema=dict(schema)).collect()

    def write(self, layer: str, part: str, chunk: Chunk, frame: pl.DataFrame) -> None:
        """Store a chunk's rows (or rejects) of an intermediate layer."""
        self.frames.write(self.key(layer), part, frame, start=chunk.start, end=chunk.end, symbols=chunk.symbols)


def named_symbols(chunk: Chunk) -> tuple[str, ...] | None:
    """The chunk's symbols, or None when it covers every symbol the provider has."""
    return None if ALL_SYMBOLS in chunk.symbols else chunk.symbols


# -- 1 ingest --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Ingested:
    """Payloads a chunk's fetch stored."""

    payloads: int
    new_payloads: int
    bytes: int
    sessions: int


def fetch(chain: Chain, source: Provider, chunk: Chunk) -> list[RawPayload]:
    """The provider's payloads answering the chunk (no database access)."""
    return source.extract(Query(chain.dataset.name, chunk.start, chunk.end, named_symbols(chunk) or ()))


def ingest(chain: Chain, payloads: list[RawPayload], conn: psycopg.Connection) -> Ingested:
    """Store a chunk's payloads untouched in `raw.payloads`."""
    stored, new = save_payloads(conn, payloads, chain.run_id)
    return Ingested(payloads=len(stored), new_payloads=new, bytes=sum(len(p.body) for p in stored),
                    sessions=len({p.session_date for p in stored}))


# -- 2 validate ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Validated:
    """A chunk's validation and whether its valid rows conform to the standard schema as a whole."""

    validation: Validation
    schema_error: str | None


def parse_chunk(chain: Chain, source: Provider, chunk: Chunk, conn: psycopg.Connection) -> pl.DataFrame:
    """The chunk's rows parsed from its stored payloads, each from the freshest payload holding it,
    with its place (`__place`)."""
    ds = chain.dataset
    payloads = load_payloads(conn, chain.provider, ds.name, chunk.start, chunk.end, symbols=named_symbols(chunk))
    parsed = with_session_date(source.transform(ds.name, payloads), chain.calendar_name)
    return prefer_latest_payload(_in_chunk(parsed, payloads, chunk, ds.date_column), payloads, list(ds.latest_key))


def validate_chunk(chain: Chain, chunk: Chunk, frame: pl.DataFrame, conn: psycopg.Connection,
                   record_rejects: bool = False) -> Validated:
    """Validate a chunk's parsed rows and write valid rows and rejects to the frame store.

    Every row placed in the chunk (by its date, or by its payload's session when the date does not
    parse) is either valid or rejected with a reason. `record_rejects` also stores the rejects in
    `quality.quarantine` right away (for a range whose policy blocks everything downstream).
    """
    ds = chain.dataset
    screen = None
    if ds.screen is not None:
        def screen(rows: pl.DataFrame) -> pl.DataFrame:
            return ds.screen(rows.drop(PLACE), chunk.start, chunk.end, chain.calendar_name)  # type: ignore[misc]
    result = validate(frame, ds.standard_schema, ds.key, screen)
    valid = result.outcome.valid.drop(PLACE)
    rejects = as_rejects(result.outcome.quarantined.with_columns(pl.col(PLACE).alias("session_date")), "validate")
    chain.write("validated", ROWS, chunk, valid.select(list(ds.validated_columns)))
    chain.write("validated", REJECTS, chunk, rejects)
    if record_rejects:
        replace_quarantine(conn, rejects, dataset=ds.name, provider=chain.provider, stage="validate",
                           start=chunk.start, end=chunk.end, run_id=chain.run_id, symbols=named_symbols(chunk),
                           without_symbol=chunk.group == 0)
    _, error = conforms(valid, ds.standard_schema)
    return Validated(validation=result, schema_error=error)


def _in_chunk(frame: pl.DataFrame, payloads: list, chunk: Chunk, date_column: str) -> pl.DataFrame:
    """The parsed rows that belong to the chunk, with their place (`__place`, a session date).

    A row's place is its own date, or its payload's first session when the date did not parse (so
    the row is still validated, and quarantined, in exactly one chunk). Rows without a symbol belong
    to the first symbol group.
    """
    sessions = pl.DataFrame({"raw_payload_id": [p.payload_id for p in payloads],
                             "__payload_session": [p.session_date for p in payloads]},
                            schema={"raw_payload_id": pl.Int64, "__payload_session": pl.Date}).unique("raw_payload_id")
    placed = frame.join(sessions, on="raw_payload_id", how="left", maintain_order="left").with_columns(
        pl.coalesce(pl.col(date_column), pl.col("__payload_session")).alias(PLACE)).drop("__payload_session")
    inside = pl.col(PLACE).is_between(chunk.start, chunk.end)
    symbols = named_symbols(chunk)
    if symbols is not None:
        nameless = pl.col("symbol").is_null() | (pl.col("symbol").str.strip_chars() == "")
        inside = inside & (pl.col("symbol").is_in(list(symbols)) | (nameless & pl.lit(chunk.group == 0)))
    return placed.filter(inside)


# -- 3 normalize -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class NormalizedChunk:
    """Rows a chunk's normalization produced and could not map, and the canonical-schema verdict."""

    rows: int
    unmapped: int
    schema_error: str | None


def normalize_chunk(chain: Chain, chunk: Chunk) -> NormalizedChunk:
    """Validated rows -> canonical rows (instrument ids, UTC, session dates); unmapped rows become rejects."""
    ds = chain.dataset
    result = ds.normalize(chain.read("validated", ROWS, chunk), chain.provider, chain.symbology, chain.calendar_name)
    rejects = pl.concat([chain.read("validated", REJECTS, chunk), as_rejects(result.unmapped, "normalize")])
    bars = result.bars.select(list(ds.canonical_columns))
    chain.write("normalized", ROWS, chunk, bars)
    chain.write("normalized", REJECTS, chunk, rejects)
    _, error = conforms(bars, ds.canonical_schema)
    return NormalizedChunk(rows=bars.height, unmapped=result.unmapped.height, schema_error=error)


# -- 5 store ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StoreInput:
    """A chunk made ready to commit: its stamped rows, its rejects, the scope it replaces, message headers."""

    frame: pl.DataFrame
    rejects: pl.DataFrame
    scope: StoreScope
    headers: dict[str, str]


@dataclass(frozen=True)
class Stored:
    """What a chunk's store committed."""

    loaded: LoadResult
    quarantined: int
    queued: int
    dead_lettered: int


def prepare_store(chain: Chain, chunk: Chunk, range_start: date, range_end: date,
                  allow_deletes: bool = False) -> StoreInput:
    """Read the chunk's canonical rows and rejects (no database access).

    `range_start`/`range_end` (the run's session range) go into the messages' lineage headers.
    """
    ds = chain.dataset
    frame = stamp(chain.read("normalized", ROWS, chunk), chain.run_id, datetime.now(UTC))
    frame = frame.select([c for c in ds.stored_columns if c in frame.columns])
    frame = in_key_order(ds.table, frame)  # here, while the previous chunk commits: the load finds it in order
    symbols = named_symbols(chunk)
    scope = StoreScope(provider=chain.provider, start=chunk.start, end=chunk.end, symbols=symbols,
                       instruments=_instruments(chain.symbology, symbols, chunk), run_id=chain.run_id,
                       allow_deletes=allow_deletes)
    return StoreInput(frame=frame, rejects=chain.read("normalized", REJECTS, chunk), scope=scope,
                      headers=lineage_headers(chain.run_id, range_start, range_end, chain.provider))


def store_chunk(chain: Chain, chunk: Chunk, conn: psycopg.Connection, ready: StoreInput) -> Stored:
    """Commit the chunk's canonical rows, its quarantine and its outbox rows in one transaction.

    The messages are built in a background thread while the database loads the rows.
    """
    ds = chain.dataset
    if ds.table in TIME_PARTITIONED:
        ensure_partitions(conn, ds.table, chunk.start, chunk.end)  # short transactions of their own
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mdp-announce") as pool, conn.transaction():
        announcing = pool.submit(ds.announce, ready.frame, ready.headers)
        loaded = ds.store(conn, ready.frame, ready.scope)
        quarantined = replace_quarantine(conn, ready.rejects, dataset=ds.name, provider=chain.provider,
                                         stage=STAGES, start=chunk.start, end=chunk.end, run_id=chain.run_id,
                                         symbols=ready.scope.symbols, without_symbol=chunk.group == 0)
        announced = announcing.result()
        if ds.announces_changes and not loaded.first_load:
            changed = loaded.changed.select(pl.col("instrument_id").cast(pl.String).alias("key"), "session_date")
            announced = announced.join(changed, on=["key", "session_date"], how="semi")
        queued = enqueue(conn, announced)
    dead = int((announced["topic"] == DEAD_LETTER.name).sum()) if announced.height else 0
    return Stored(loaded=loaded, quarantined=quarantined, queued=queued, dead_lettered=dead)


def _instruments(symbology: pl.DataFrame, symbols: tuple[str, ...] | None, chunk: Chunk) -> tuple[int, ...] | None:
    """Instruments that held `symbols` at some time in the chunk (narrows the loader's index search)."""
    if symbols is None:
        return None
    held = symbology.filter(pl.col("symbol").is_in(list(symbols)) & (pl.col("valid_from") <= chunk.end)
                            & (pl.col("valid_to") >= chunk.start))
    return tuple(sorted(set(held["instrument_id"].to_list())))
