"""Per-partition quality metrics as one JSON-safe dict, and small markdown tables for the Dagster UI.

The same dict is attached to asset-check results (Dagster metadata) and stored in
`quality.check_results.metadata` (jsonb), so the UI and SQL reports read the same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import Any

import polars as pl

from mdpipeline.quality.completeness import Completeness
from mdpipeline.quality.divergence import Divergence
from mdpipeline.quality.findings import ERROR, INFO, WARN, count_by_kind


def partition_metrics(
    *, start: date, end: date, rows: int, findings: pl.DataFrame, completeness: Completeness | None = None,
    quarantined: Mapping[str, int] | None = None, divergence: Divergence | None = None,
) -> dict[str, Any]:
    """Completeness %, rows quarantined (by check), flags by kind, divergence stats of one partition range."""
    out: dict[str, Any] = {"partition_start": start.isoformat(), "partition_end": end.isoformat(), "rows": rows}
    if completeness is not None:
        out |= completeness.as_dict()
    if quarantined is not None:
        out["rows_quarantined"] = int(sum(quarantined.values()))
        out["quarantined_by_check"] = {str(k): int(v) for k, v in sorted(quarantined.items())}
    out["flags_by_kind"] = count_by_kind(findings, (ERROR, WARN))
    out["info_by_kind"] = count_by_kind(findings, (INFO,))
    if divergence is not None:
        out["divergence"] = divergence.as_dict()
    return out


def findings_markdown(findings: pl.DataFrame, limit: int = 15) -> str:
    """The first `limit` findings as a markdown table (instrument, session, time, kind, detail)."""
    if findings.is_empty():
        return "no findings"
    shown = findings.head(limit).select(
        "instrument", pl.col("session_date").cast(pl.String),
        pl.col("ts").dt.strftime("%H:%M").fill_null(""), "kind", "detail")
    lines = ["| instrument | session | time (UTC) | kind | detail |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(str(v).replace("|", "/") for v in row) + " |" for row in shown.iter_rows()]
    if findings.height > limit:
        lines.append(f"\n{findings.height - limit} more not shown")
    return "\n".join(lines)


def rows_markdown(frame: pl.DataFrame,
                  columns: tuple[str, ...] = ("symbol", "session_date", "ex_date", "check_name", "reason")) -> str:
    """A small markdown table of `columns` (those present), e.g. quarantined rows, for the UI."""
    if not frame.height:
        return "no rows"
    cols = [c for c in columns if c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v).replace("|", "/") for v in row) + " |" for row in frame.select(cols).iter_rows()]
    return "\n".join(lines)


def counts_markdown(counts: Mapping[str, int], label: str = "kind", width: int = 20) -> str:
    """A count table with a bar per row, so proportions read at a glance in the UI."""
    if not counts:
        return "none"
    top = max(counts.values()) or 1
    lines = [f"| {label} | count | |", "|---|---:|---|"]
    lines += [f"| {k} | {v} | {'█' * max(1, round(width * v / top)) if v else ''} |" for k, v in counts.items()]
    return "\n".join(lines)


def json_safe(value: Any) -> Any:
    """Metrics with dates and numpy/polars scalars turned into JSON types (for jsonb)."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    return float(value) if hasattr(value, "__float__") else str(value)
