"""Step bodies shared by the per-dataset asset factories: fetch into `raw`, parse and validate from `raw`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

import dagster as dg
import pandera.polars as pa
import polars as pl

from mdpipeline.orchestration.resources import DatabaseResource, ProvidersResource
from mdpipeline.providers.base import Query
from mdpipeline.providers.reconcile import prefer_latest_payload, within_sessions
from mdpipeline.quality.quarantine import ValidationOutcome, split_valid
from mdpipeline.storage.quarantine_store import record_check, replace_quarantine
from mdpipeline.storage.raw_store import load_payloads, save_payloads


def fetch_raw(provider: str, dataset: str, start: date, end: date, run_id: str, db: DatabaseResource,
              providers: ProvidersResource) -> dict[str, object]:
    """Extract from the provider and store the payloads untouched; returns counts for metadata,
    with the HTTP counters and circuit-breaker state of network providers."""
    source = providers.provider(provider)
    payloads = source.extract(Query(dataset, start, end, providers.symbols_for(provider)))
    with db.connection() as conn:
        stored, new = save_payloads(conn, payloads, run_id)
    stats = source.fetch_stats() if hasattr(source, "fetch_stats") else {}
    return {"payloads": len(stored), "new_payloads": new, "bytes": sum(len(p.body) for p in stored),
            "sessions": len({p.session_date for p in stored}), **{f"http_{k}": v for k, v in stats.items()}}


@dataclass(frozen=True)
class Validated:
    """What the validate step produced for one dataset and range."""

    outcome: ValidationOutcome
    rows_in: int
    schema_ok: bool
    schema_error: str | None

    def metadata(self) -> dict[str, object]:
        """Counts for the asset and its quarantine check."""
        return {"rows_in": self.rows_in, "rows_valid": self.outcome.valid.height,
                "rows_quarantined": self.outcome.quarantined.height,
                "exact_duplicates_dropped": self.outcome.exact_duplicates,
                "quarantined_by_check": self.outcome.reasons}


def validate_from_raw(provider: str, dataset: str, schema: type[pa.DataFrameModel], key: list[str],
                      date_column: str, start: date, end: date, run_id: str, asset_key: dg.AssetKey,
                      db: DatabaseResource, providers: ProvidersResource,
                      prepare: Callable[[pl.DataFrame], pl.DataFrame] | None = None,
                      latest_key: list[str] | None = None) -> Validated:
    """Parse the stored payloads of [start, end], validate, and quarantine what fails (replacing the range).

    `prepare` runs on the parsed frame first (e.g. to derive the session date of minute bars).
    `latest_key` identifies a row across payloads (a later fetch replaces it); `key` identifies it
    within one fetch (rows sharing it must be equal). Both default to `key`.
    """
    source = providers.provider(provider)
    with db.connection() as conn:
        payloads = load_payloads(conn, provider, dataset, start, end)
        parsed = source.transform(dataset, payloads)
        parsed = prepare(parsed) if prepare else parsed
        frame = within_sessions(prefer_latest_payload(parsed, payloads, latest_key or key), start, end, date_column)
        outcome = split_valid(frame, schema, key)
        quarantined = outcome.quarantined
        if date_column != "session_date" and date_column in quarantined.columns:
            quarantined = quarantined.rename({date_column: "session_date"})
        replace_quarantine(conn, quarantined, dataset=dataset, provider=provider, stage="validate",
                           start=start, end=end, run_id=run_id)
        ok, error = conforms(outcome.valid, schema)
        result = Validated(outcome=outcome, rows_in=frame.height, schema_ok=ok, schema_error=error)
        record_check(conn, asset_key=asset_key.to_user_string(), check_name="quarantine", start=start, end=end,
                     passed=outcome.quarantined.height == 0, severity="WARN", metadata=result.metadata(),
                     run_id=run_id)
    return result


def validation_check_results(result: Validated) -> list[dg.AssetCheckResult]:
    """The blocking schema check and the quarantine check (warns when rows were held back)."""
    return [
        dg.AssetCheckResult(check_name="schema", passed=result.schema_ok,
                            metadata={"error": result.schema_error or "none"}),
        dg.AssetCheckResult(
            check_name="quarantine", passed=result.outcome.quarantined.height == 0,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={**result.metadata(),
                      "sample": dg.MetadataValue.md(markdown(result.outcome.quarantined.head(10)))},
        ),
    ]


def validation_check_specs(key: dg.AssetKey, schema_name: str) -> list[dg.AssetCheckSpec]:
    """Specs of the two validation checks of `key`."""
    return [
        dg.AssetCheckSpec("schema", asset=key, blocking=True,
                          description=f"Output conforms to {schema_name} (blocking)."),
        dg.AssetCheckSpec("quarantine", asset=key, description="Rows quarantined by validation (warns when any)."),
    ]


def conforms(frame: pl.DataFrame, schema: type[pa.DataFrameModel]) -> tuple[bool, str | None]:
    """Whole-frame validation for blocking checks: (passed, error message)."""
    try:
        schema.validate(frame, lazy=True)
    except Exception as err:
        return False, str(err)[:2000]
    return True, None


def markdown(frame: pl.DataFrame,
             columns: tuple[str, ...] = ("symbol", "session_date", "ex_date", "check_name", "reason")) -> str:
    """A small markdown table of `columns` (those present) for the Dagster UI."""
    if not frame.height:
        return "no rows"
    cols = [c for c in columns if c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.select(cols).iter_rows()]
    return "\n".join(lines)
