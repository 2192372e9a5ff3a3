"""The findings frame: flags on rows, quarantine rows for hard findings, metrics and UI tables."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import polars as pl

from mdpipeline.quality.completeness import Completeness
from mdpipeline.quality.findings import (
    ERROR,
    INFO,
    WARN,
    attach_flags,
    concat_findings,
    count_by_kind,
    empty_findings,
    make_findings,
    to_quarantine,
)
from mdpipeline.quality.metrics import counts_markdown, findings_markdown, json_safe, partition_metrics

D1, D2 = date(2024, 6, 3), date(2024, 6, 4)


def finding(instrument: str, day: date, kind: str, severity: str, ts: datetime | None = None) -> pl.DataFrame:
    row = pl.DataFrame({"symbol": [instrument], "session_date": [day], "ts": [ts]},
                       schema={"symbol": pl.String, "session_date": pl.Date, "ts": pl.Datetime("us", "UTC")})
    return make_findings(row, key="symbol", kind=kind, severity=severity, detail=pl.lit(f"{kind} here"),
                         value=pl.lit(1.0))


def test_flags_land_on_the_rows_they_are_about() -> None:
    bars = pl.DataFrame({"symbol": ["AAA", "AAA", "BBB"], "session_date": [D1, D2, D1], "close": [1.0, 2.0, 3.0]})
    findings = concat_findings([finding("AAA", D2, "stale", WARN), finding("AAA", D2, "volume_spike", WARN),
                                finding("BBB", D1, "no_trades", INFO), finding("CCC", D1, "missing", WARN)])
    flagged = attach_flags(bars, findings)
    assert flagged.columns == [*bars.columns, "flags"]
    assert flagged["flags"].to_list() == [[], ["stale", "volume_spike"], []]  # info is not a flag


def test_intraday_flags_match_on_the_timestamp() -> None:
    t1, t2 = datetime(2024, 6, 3, 13, 30, tzinfo=UTC), datetime(2024, 6, 3, 13, 31, tzinfo=UTC)
    bars = pl.DataFrame({"symbol": ["AAA", "AAA"], "session_date": [D1, D1], "ts": [t1, t2]})
    flagged = attach_flags(bars, finding("AAA", D1, "extended_hours", WARN, ts=t2))
    assert flagged["flags"].to_list() == [[], ["extended_hours"]]


def test_hard_findings_become_quarantine_rows_with_the_original_row() -> None:
    bars = pl.DataFrame({"symbol": ["AAA", "AAA"], "session_date": [D1, D2], "close": [1.5, 2.5],
                         "raw_payload_id": [7, 8]})
    findings = concat_findings([finding("AAA", D2, "non_session", ERROR), finding("AAA", D2, "outside_window", ERROR),
                                finding("AAA", D1, "stale", WARN)])
    rows = to_quarantine(bars, findings)
    assert rows.select("symbol", "session_date", "raw_payload_id", "check_name", "reason").rows() == [
        ("AAA", D2, 8, "non_session,outside_window", "non_session here; outside_window here")]
    assert json.loads(rows["row_data"][0]) == {"symbol": "AAA", "session_date": "2024-06-04", "close": 2.5,
                                               "raw_payload_id": 8}


def test_metrics_are_json_safe_and_count_by_severity() -> None:
    findings = concat_findings([finding("AAA", D1, "missing", WARN), finding("BBB", D1, "missing", WARN),
                                finding("AAA", D2, "no_trades", INFO)])
    assert count_by_kind(findings) == {"missing": 2, "no_trades": 1}
    complete = Completeness(expected=4, present=2, no_trades=1, findings=findings)
    metrics = partition_metrics(start=D1, end=D2, rows=2, findings=findings, completeness=complete,
                                quarantined={"ohlc_consistency": 1})
    assert metrics == {
        "partition_start": "2024-06-03", "partition_end": "2024-06-04", "rows": 2,
        "expected": 4, "present": 2, "missing": 2, "no_trades": 1, "completeness_pct": 50.0,
        "rows_quarantined": 1, "quarantined_by_check": {"ohlc_consistency": 1},
        "flags_by_kind": {"missing": 2}, "info_by_kind": {"no_trades": 1},
    }
    assert json.loads(json.dumps(json_safe({"d": D1, "n": pl.Series([3]).sum(), "t": (1, 2)}))) == {
        "d": "2024-06-03", "n": 3, "t": [1, 2]}


def test_markdown_tables_for_the_ui() -> None:
    assert findings_markdown(empty_findings()) == "no findings"
    many = concat_findings([finding(f"S{i:02d}", D1, "missing", WARN) for i in range(3)])
    text = findings_markdown(many, limit=2)
    assert text.splitlines()[:4] == [
        "| instrument | session | time (UTC) | kind | detail |", "|---|---|---|---|---|",
        "| S00 | 2024-06-03 |  | missing | missing here |", "| S01 | 2024-06-03 |  | missing | missing here |"]
    assert text.endswith("1 more not shown")
    assert counts_markdown({"missing": 4, "stale": 2}, width=4).splitlines() == [
        "| kind | count | |", "|---|---:|---|", "| missing | 4 | ████ |", "| stale | 2 | ██ |"]
    assert counts_markdown({}) == "none"
