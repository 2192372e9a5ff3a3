"""Step 2, validate: one frame of standard rows -> rows that pass, and quarantined rows with reasons.

`validate` is the whole rule set for one chunk (schema rules, duplicate keys, and an optional screen
such as the session window) and is pure: no I/O, no Dagster. `ValidationSummary` adds chunk results
up into what the validated asset and its checks report for the range.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date

import pandera.polars as pa
import polars as pl

from mdpipeline.quality.findings import (
    ERROR,
    INFO,
    WARN,
    concat_findings,
    count_by_kind,
    empty_findings,
    time_columns,
    to_quarantine,
)
from mdpipeline.quality.quarantine import ValidationOutcome, split_valid
from mdpipeline.quality.thresholds import BLOCK, PUBLISH_VALID

Screen = Callable[[pl.DataFrame], pl.DataFrame]
SAMPLE_ROWS = 15  # findings and quarantined rows kept as a sample for the UI


@dataclass(frozen=True)
class Validation:
    """One chunk's outcome: valid rows, quarantined rows (check_name, reason, row_data) and the screen's findings."""

    outcome: ValidationOutcome
    rows_in: int
    findings: pl.DataFrame


def validate(frame: pl.DataFrame, schema: type[pa.DataFrameModel], key: Sequence[str],
             screen: Screen | None = None) -> Validation:
    """Validate `frame` against `schema`, de-duplicate on `key`, then screen the rows that passed.

    Rows with an `error` finding of the screen are quarantined too, with the finding's kind as check
    name; the other findings are returned for the soft checks.
    """
    outcome = split_valid(frame, schema, list(key))
    findings = screen(outcome.valid) if screen is not None else empty_findings()
    if not findings.filter(pl.col("severity") == ERROR).is_empty():
        outcome = _hold_back(outcome, findings)
    return Validation(outcome=outcome, rows_in=frame.height, findings=findings)


def conforms(frame: pl.DataFrame, schema: type[pa.DataFrameModel]) -> tuple[bool, str | None]:
    """Whole-frame validation for blocking checks: (passed, error message)."""
    try:
        schema.validate(frame, lazy=True)
    except Exception as err:
        return False, str(err)[:2000]
    return True, None


def _hold_back(outcome: ValidationOutcome, findings: pl.DataFrame, key: str = "symbol") -> ValidationOutcome:
    """Move the valid rows with an `error` finding into the quarantine (check name = the finding's kind)."""
    errors = findings.filter(pl.col("severity") == ERROR)
    valid = outcome.valid
    held = to_quarantine(valid, errors, key=key)
    on = time_columns(valid)
    bad = errors.select(pl.col("instrument").alias("__instrument"), *on).unique()
    kept = valid.with_columns(pl.col(key).cast(pl.String).alias("__instrument")).join(
        bad, on=["__instrument", *on], how="anti", nulls_equal=True, maintain_order="left").drop("__instrument")
    quarantined = pl.concat([outcome.quarantined, held], how="diagonal_relaxed").select(outcome.quarantined.columns)
    return ValidationOutcome(valid=kept, quarantined=quarantined, exact_duplicates=outcome.exact_duplicates)


@dataclass
class ValidationSummary:
    """A range's validation, added up chunk by chunk (counts exact, findings and rejects as samples)."""

    on_quarantine: str = PUBLISH_VALID  # config/quality.yaml: what a range with quarantined rows publishes
    rows_in: int = 0
    rows_valid: int = 0
    rows_quarantined: int = 0
    exact_duplicates: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    findings_by_kind: Counter[str] = field(default_factory=Counter)
    flags_by_kind: Counter[str] = field(default_factory=Counter)
    sessions_flagged: set[date] = field(default_factory=set)
    schema_error: str | None = None
    quarantine_sample: pl.DataFrame | None = None
    findings_sample: pl.DataFrame = field(default_factory=empty_findings)

    def add(self, chunk: Validation, schema_error: str | None = None) -> None:
        """Count one chunk in."""
        outcome, found = chunk.outcome, chunk.findings
        self.rows_in += chunk.rows_in
        self.rows_valid += outcome.valid.height
        self.rows_quarantined += outcome.quarantined.height
        self.exact_duplicates += outcome.exact_duplicates
        self.reasons.update(outcome.reasons)
        if found.height:
            self.findings_by_kind.update(count_by_kind(found, (ERROR, WARN, INFO)))
            self.flags_by_kind.update(count_by_kind(found, (ERROR, WARN)))
            self.sessions_flagged.update(d for d in found["session_date"].unique().to_list() if d is not None)
            if self.findings_sample.height < SAMPLE_ROWS:
                self.findings_sample = concat_findings([self.findings_sample, found]).head(SAMPLE_ROWS)
        if outcome.quarantined.height:
            sample = outcome.quarantined.head(SAMPLE_ROWS)
            self.quarantine_sample = sample if self.quarantine_sample is None else pl.concat(
                [self.quarantine_sample, sample], how="diagonal_relaxed").head(SAMPLE_ROWS)
        if schema_error and self.schema_error is None:
            self.schema_error = schema_error

    @property
    def blocked(self) -> bool:
        """Rows were quarantined and the configuration says the range then publishes nothing."""
        return self.on_quarantine == BLOCK and self.rows_quarantined > 0

    @property
    def schema_passed(self) -> bool:
        """The blocking `schema` check: every chunk conforms, and no configured block applies."""
        return self.schema_error is None and not self.blocked

    def schema_message(self) -> str:
        """Why the blocking check failed ("none" when it passed)."""
        if self.schema_error is not None:
            return self.schema_error
        if self.blocked:
            return (f"{self.rows_quarantined} rows quarantined and on_quarantine is block"
                    " (config/quality.yaml): nothing of this range goes downstream")
        return "none"

    def schema_metadata(self) -> dict[str, object]:
        """Metadata of the blocking `schema` check."""
        return {"error": self.schema_message(), "on_quarantine": self.on_quarantine,
                "rows_quarantined": self.rows_quarantined}

    def metadata(self) -> dict[str, object]:
        """Counts for the asset and its quarantine check."""
        meta: dict[str, object] = {"rows_in": self.rows_in, "rows_valid": self.rows_valid,
                                   "rows_quarantined": self.rows_quarantined,
                                   "exact_duplicates_dropped": self.exact_duplicates,
                                   "quarantined_by_check": dict(sorted(self.reasons.items()))}
        if self.findings_by_kind:
            meta["findings_by_kind"] = dict(sorted(self.findings_by_kind.items()))
        return meta

