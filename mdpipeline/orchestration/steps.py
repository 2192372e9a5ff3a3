"""Step bodies shared by the per-dataset asset factories: fetch into `raw`, parse and validate from `raw`."""


from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

import dagster as dg
import pandera.polars as pa
import polars as pl

from mdpipeline.orchestration.partitions import partition_dates
from mdpipeline.orchestration.resources import DatabaseResource, ProvidersResource
from mdpipeline.providers.base import Query
from mdpipeline.providers.reconcile import prefer_latest_payload, within_sessions
from mdpipeline.quality.findings import ERROR, count_by_kind, time_columns, to_quarantine
from mdpipeline.quality.quarantine import ValidationOutcome, split_valid
from mdpipeline.quality.thresholds import BLOCK, PUBLISH_VALID, on_quarantine
from mdpipeline.storage.quarantine_store import record_check, replace_quarantine
from mdpipeline.storage.raw_store import load_payloads, save_payloads


def raw_asset(provider: str, dataset: str, partitions: dg.PartitionsDefinition, description: str,
              **asset_args: object) -> dg.AssetsDefinition:
    """The ingest step of one provider and dataset: fetch, then store the payloads untouched in `raw`.

    It runs in the provider's concurrency pool, so rate-limited sources are protected across runs.
    """
    @dg.asset(key=dg.AssetKey(["raw", provider, dataset]), group_name="raw", kinds={"python", "postgres"},
              pool=f"provider_{provider}", description=description, partitions_def=partitions,
              backfill_policy=dg.BackfillPolicy.single_run(), **asset_args)  # type: ignore[arg-type]
    def raw(context: dg.AssetExecutionContext, db: DatabaseResource,
            providers: ProvidersResource) -> dg.MaterializeResult:
        start, end = partition_dates(context)
        return dg.MaterializeResult(metadata=fetch_raw(provider, dataset, start, end, context.run.run_id, db,
                                                       providers))

    return raw


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
    on_quarantine: str = PUBLISH_VALID  # config/quality.yaml: what a range with quarantined rows publishes
    findings: pl.DataFrame | None = None  # what `screen` found about the valid rows (errors were quarantined)

    @property
    def blocked(self) -> bool:
        """Rows were quarantined and the configuration says the range then publishes nothing."""
        return self.on_quarantine == BLOCK and self.outcome.quarantined.height > 0

    @property
    def schema_passed(self) -> bool:
        """The blocking `schema` check: the frame conforms, and no configured block applies."""
        return self.schema_ok and not self.blocked

    def schema_message(self) -> str:
        """Why the blocking check failed ("none" when it passed)."""
        if not self.schema_ok:
            return self.schema_error or "frame does not conform"
        if self.blocked:
            return (f"{self.outcome.quarantined.height} rows quarantined and on_quarantine is block"
                    " (config/quality.yaml): nothing of this range goes downstream")
        return "none"

    def schema_metadata(self) -> dict[str, object]:
        """Metadata of the blocking `schema` check."""
        return {"error": self.schema_message(), "on_quarantine": self.on_quarantine,
                "rows_quarantined": self.outcome.quarantined.height}

    def metadata(self) -> dict[str, object]:
        """Counts for the asset and its quarantine check."""
        meta: dict[str, object] = {"rows_in": self.rows_in, "rows_valid": self.outcome.valid.height,
                                   "rows_quarantined": self.outcome.quarantined.height,
                                   "exact_duplicates_dropped": self.outcome.exact_duplicates,
                                   "quarantined_by_check": self.outcome.reasons}
        if self.findings is not None:
            meta["findings_by_kind"] = count_by_kind(self.findings)
        return meta


def validate_from_raw(provider: str, dataset: str, schema: type[pa.DataFrameModel], key: list[str],
                      date_column: str, start: date, end: date, run_id: str, asset_key: dg.AssetKey,
                      db: DatabaseResource, providers: ProvidersResource,
                      prepare: Callable[[pl.DataFrame], pl.DataFrame] | None = None,
                      latest_key: list[str] | None = None,
                      screen: Callable[[pl.DataFrame], pl.DataFrame] | None = None) -> Validated:
    """Parse the stored payloads of [start, end], validate, and quarantine what fails (replacing the range).

    `prepare` runs on the parsed frame first (e.g. to derive the session date of minute bars).
    `latest_key` identifies a row across payloads (a later fetch replaces it); `key` identifies it
    within one fetch (rows sharing it must be equal). Both default to `key`.
    `screen` runs a detector over the rows that passed and returns a findings frame
    (`mdpipeline.quality.findings`): rows with an `error` finding are quarantined too (with the
    finding's kind as check name), the other findings are kept in `Validated.findings` for the checks.
    The range's policy on quarantined rows (`on_quarantine`) comes from config/quality.yaml.
    """
    policy = on_quarantine(provider, dataset)  # read first: a bad config fails before anything is written
    source = providers.provider(provider)
    with db.connection() as conn:
        payloads = load_payloads(conn, provider, dataset, start, end)
        parsed = source.transform(dataset, payloads)
        parsed = prepare(parsed) if prepare else parsed
        frame = within_sessions(prefer_latest_payload(parsed, payloads, latest_key or key), start, end, date_column)
        outcome = split_valid(frame, schema, key)
        findings = screen(outcome.valid) if screen is not None else None
        if findings is not None:
            outcome = _hold_back(outcome, findings)
        quarantined = outcome.quarantined
        if date_column != "session_date" and date_column in quarantined.columns:
            quarantined = quarantined.rename({date_column: "session_date"})
        replace_quarantine(conn, quarantined, dataset=dataset, provider=provider, stage="validate",
                           start=start, end=end, run_id=run_id)
        ok, error = conforms(outcome.valid, schema)
        result = Validated(outcome=outcome, rows_in=frame.height, schema_ok=ok, schema_error=error,
                           on_quarantine=policy, findings=findings)
        record_check(conn, asset_key=asset_key.to_user_string(), check_name="quarantine", start=start, end=end,
                     passed=outcome.quarantined.height == 0, severity="WARN", metadata=result.metadata(),
                     run_id=run_id)
        record_check(conn, asset_key=asset_key.to_user_string(), check_name="schema", start=start, end=end,
                     passed=result.schema_passed, severity="ERROR",
                     metadata=result.schema_metadata(), run_id=run_id)
    return result


def _hold_back(outcome: ValidationOutcome, findings: pl.DataFrame, key: str = "symbol") -> ValidationOutcome:
    """Move the valid rows with an `error` finding into the quarantine (check name = the finding's kind)."""
    errors = findings.filter(pl.col("severity") == ERROR)
    if errors.is_empty():
        return outcome
    valid = outcome.valid
    held = to_quarantine(valid, errors, key=key)
    on = time_columns(valid)
    bad = errors.select(pl.col("instrument").alias("__instrument"), *on).unique()
    kept = valid.with_columns(pl.col(key).cast(pl.String).alias("__instrument")).join(
        bad, on=["__instrument", *on], how="anti", nulls_equal=True, maintain_order="left").drop("__instrument")
    quarantined = pl.concat([outcome.quarantined, held], how="diagonal_relaxed").select(outcome.quarantined.columns)
    return ValidationOutcome(valid=kept, quarantined=quarantined, exact_duplicates=outcome.exact_duplicates)


def validation_check_results(result: Validated) -> list[dg.AssetCheckResult]:
    """The blocking schema check and the quarantine check (warns when rows were held back).

    The schema check also fails (severity ERROR, so downstream steps do not run) when rows were
    quarantined and the range's `on_quarantine` is `block`.
    """
    return [
        dg.AssetCheckResult(check_name="schema", passed=result.schema_passed,
                            metadata=result.schema_metadata()),
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
