"""The file provider: vendor dumps (CSV or Parquet) under a directory, one folder per dataset.

Layout (see docs and DESIGN.md): `bars_1d/` with `symbol, date, open, high, low, close, volume`
(optional `vwap, trades`), `bars_1m/` with `symbol, ts` (ISO 8601 with offset) and the same prices,
`corporate_actions/` with `symbol, ex_date, action, ratio, amount, currency`.

Extract keeps the vendor's rows untouched (as CSV text, original column names), one payload per
source file and session date, so a later re-processing replays exactly what the file said. Transform
parses those CSV bodies with every value read as text first, then casts leniently: a value that does
not parse becomes null and validation quarantines the row.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl

from mdpipeline.providers.base import (
    DATASETS,
    STANDARD_COLUMNS,
    ProviderError,
    Query,
    RawPayload,
    empty_standard_frame,
)
from mdpipeline.providers.kit.options import check_options
from mdpipeline.providers.limits import LimitsStore
from mdpipeline.providers.spec import ProviderSpec
from mdpipeline.sessions import exchange_timezone, session_dates
from mdpipeline.settings import Settings
from mdpipeline.universe import ProviderSetup

log = logging.getLogger(__name__)

REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "bars_1d": ("symbol", "date", "open", "high", "low", "close", "volume"),
    "bars_1m": ("symbol", "ts", "open", "high", "low", "close", "volume"),
    "corporate_actions": ("symbol", "ex_date", "action", "ratio", "amount", "currency"),
}
# The column that places a row on a session date.
DATE_COLUMN = {"bars_1d": "date", "bars_1m": "ts", "corporate_actions": "ex_date"}
# Vendor column names that differ from the standard frame's.
_RENAMES = {"bars_1d": {"date": "session_date"}}
_SESSION = "__mdp_session_date"
SUFFIXES = (".csv", ".parquet")


def parse_utc_timestamp(expr: pl.Expr) -> pl.Expr:
    """ISO 8601 text with an offset (`Z`, `+00:00`, `-0400`) -> UTC; text without offset -> null."""
    return expr.str.strip_chars().str.to_datetime("%+", time_unit="us", time_zone="UTC", strict=False)


def _parse(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """Lenient text -> `dtype` cast (nulls where a value does not parse)."""
    text = expr.cast(pl.String).str.strip_chars()
    if dtype == pl.Float64:
        return text.cast(pl.Float64, strict=False)
    if dtype == pl.Int64:
        as_float = text.cast(pl.Float64, strict=False)
        integral = pl.when(as_float.is_finite() & (as_float == as_float.round(0))).then(
            as_float.cast(pl.Int64, strict=False)
        )
        return pl.coalesce(text.cast(pl.Int64, strict=False), integral)
    if dtype == pl.Date:
        return text.str.to_date("%Y-%m-%d", strict=False)
    if isinstance(dtype, pl.Datetime):
        return parse_utc_timestamp(text)
    return pl.when(text != "").then(text)


def cast_to_standard(frame: pl.DataFrame, dataset: str, payload_id: int | None) -> pl.DataFrame:
    """A frame of vendor values (any types, usually text) -> the standard frame of `dataset`.

    Columns are matched by standard name (`date` is accepted for `session_date` in bars_1d), missing
    optional columns become nulls, extra columns are dropped, and `raw_payload_id` is `payload_id`.
    """
    frame = frame.rename({k: v for k, v in _RENAMES.get(dataset, {}).items()
                          if k in frame.columns and v not in frame.columns})
    exprs: list[pl.Expr] = []
    for name, dtype in STANDARD_COLUMNS[dataset].items():
        if name == "raw_payload_id":
            expr = pl.lit(payload_id, dtype=pl.Int64)
        elif name in frame.columns:
            expr = _parse(pl.col(name), dtype)
        else:
            expr = pl.lit(None, dtype=dtype)
        exprs.append(expr.cast(dtype).alias(name))
    return frame.select(exprs)


class FileProvider:
    """Vendor dumps under `files_dir` (the `MDP_FILES_DIR` setting)."""

    name = "file"
    datasets: tuple[str, ...] = DATASETS
    options: frozenset[str] = frozenset()  # the universe options understood: none

    def __init__(self, setup: ProviderSetup, files_dir: Path, calendar_name: str = "XNYS") -> None:
        check_options(self.name, setup.options, self.options)
        self.setup = setup
        self.files_dir = Path(files_dir)
        self.calendar_name = calendar_name

    @classmethod
    def from_settings(cls, setup: ProviderSetup, settings: Settings, calendar_name: str, *,
                      limits_store: LimitsStore | None = None) -> FileProvider:
        """The provider reading `settings.files_dir` (MDP_FILES_DIR); it sends no request (no limits)."""
        return cls(setup, settings.files_dir, calendar_name=calendar_name)

    def extract(self, query: Query) -> list[RawPayload]:
        """One payload per source file and session date in the range that has matching rows.

        A missing dataset folder yields no payloads; a missing `files_dir` is an error. Rows whose
        date does not parse or is not a session date cannot be placed in a partition: they are
        skipped with a warning naming the file (validation never sees them).
        """
        _check_dataset(query.dataset)
        if not self.files_dir.is_dir():
            raise ProviderError(
                f"file provider: files directory {self.files_dir} does not exist (set MDP_FILES_DIR)"
            )
        folder = self.files_dir / query.dataset
        if not folder.is_dir():
            return []
        sessions = set(session_dates(query.start, query.end, self.calendar_name))
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
        payloads = [pl_ for path in files for pl_ in self._extract_file(path, query, sessions)]
        return sorted(payloads, key=lambda p: (p.session_date, p.request_key))

    def _extract_file(self, path: Path, query: Query, sessions: set[date]) -> list[RawPayload]:
        rel = path.relative_to(self.files_dir).as_posix()
        try:
            is_csv = path.suffix.lower() == ".csv"
            lf = pl.scan_csv(path, infer_schema=False) if is_csv else pl.scan_parquet(path)
            schema = lf.collect_schema()
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise ProviderError(f"file provider: cannot read {rel}: {exc}") from exc
        missing = [c for c in REQUIRED_COLUMNS[query.dataset] if c not in schema]
        if missing:
            raise ProviderError(f"file provider: {rel} is missing required columns: {', '.join(missing)}")
        date_col = DATE_COLUMN[query.dataset]
        lf = lf.with_columns(self._session_expr(date_col, schema[date_col]).alias(_SESSION))
        if isinstance(schema[date_col], pl.Datetime) and schema[date_col].time_zone is None:
            # Parquet timestamps without a zone are taken as UTC; written with an explicit offset.
            lf = lf.with_columns(pl.col(date_col).dt.replace_time_zone("UTC"))
        symbols = query.symbols or self.setup.symbols
        if symbols:
            lf = lf.filter(pl.col("symbol").cast(pl.String).is_in(list(symbols)))
        lf = lf.filter(pl.col(_SESSION).is_between(query.start, query.end) | pl.col(_SESSION).is_null())
        try:
            rows = lf.collect()
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise ProviderError(f"file provider: cannot read {rel}: {exc}") from exc
        placed = rows.filter(pl.col(_SESSION).is_in(list(sessions)))
        if placed.height < rows.height:
            bad = rows.filter(~pl.col(_SESSION).is_in(list(sessions)) | pl.col(_SESSION).is_null())
            log.warning("file provider: %s: skipped %d rows whose %s is unparseable or not a session "
                        "date (e.g. %s)", rel, bad.height, date_col, bad[date_col].cast(pl.String)[0])
        if placed.is_empty():
            return []
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        fetched_at = datetime.now(UTC)
        payloads = []
        for (day,), part in placed.partition_by(_SESSION, as_dict=True, maintain_order=True).items():
            payloads.append(RawPayload(
                provider=self.name,
                dataset=query.dataset,
                session_date=day,
                request_key=f"{query.dataset}:{path.name}:{day.isoformat()}",
                endpoint=rel,
                params={"file": rel, "file_sha256": sha, "date": day.isoformat()},
                body=part.drop(_SESSION).write_csv().encode(),
                content_type="text/csv",
                fetched_at=fetched_at,
            ))
        return payloads

    def _session_expr(self, column: str, dtype: pl.DataType) -> pl.Expr:
        """The session date of a row: its date, or for a timestamp its date in the exchange's zone."""
        col = pl.col(column)
        if isinstance(dtype, pl.Datetime):
            ts = col.dt.replace_time_zone("UTC") if dtype.time_zone is None else col
        elif dtype == pl.Date:
            return col
        elif column == "ts":
            ts = parse_utc_timestamp(col.cast(pl.String))
        else:
            return col.cast(pl.String).str.strip_chars().str.to_date("%Y-%m-%d", strict=False)
        return ts.dt.convert_time_zone(exchange_timezone(self.calendar_name)).dt.date()

    def transform(self, dataset: str, payloads: Sequence[RawPayload]) -> pl.DataFrame:
        """Parse the CSV bodies (all values as text) and cast them into the standard frame."""
        _check_dataset(dataset)
        frames = [empty_standard_frame(dataset)]
        for payload in payloads:
            if not payload.body.strip():
                continue
            try:
                raw = pl.read_csv(io.BytesIO(payload.body), infer_schema=False)
            except pl.exceptions.PolarsError as exc:
                raise ProviderError(
                    f"file provider: payload {payload.request_key} is not readable CSV: {exc}"
                ) from exc
            frames.append(cast_to_standard(raw, dataset, payload.payload_id))
        return pl.concat(frames, how="vertical")


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ProviderError(f"unknown dataset {dataset!r} (known: {', '.join(DATASETS)})")


SPEC = ProviderSpec(FileProvider, network=False)  # reads MDP_FILES_DIR (Settings.files_dir)
