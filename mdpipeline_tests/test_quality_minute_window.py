"""One-minute bars and the session window, through real Dagster runs of the file provider.

2024-06-19 (Juneteenth) is a weekday the exchange is closed. A pre-market bar (08:00 New York) is
real data: it is kept, stored and flagged. A bar dated on the holiday belongs to no session: it is
quarantined with the reason, never dropped silently.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml

from mdpipeline.orchestration.assembly import build_definitions
from mdpipeline.orchestration.runner import materialize_range
from mdpipeline.providers.base import RawPayload
from mdpipeline.read import bars
from mdpipeline.storage.database import connect
from mdpipeline.storage.raw_store import save_payloads
from mdpipeline_tests.pipeline_helpers import settings_for

UNIVERSE = Path(__file__).resolve().parent.parent / "config" / "universe.yaml"
START, END = date(2024, 6, 18), date(2024, 6, 20)  # sessions 06-18 and 06-20; 06-19 is closed
REGULAR = ["2024-06-18T09:30:00-04:00", "2024-06-18T09:31:00-04:00", "2024-06-20T09:30:00-04:00"]
PRE_MARKET = "2024-06-18T08:00:00-04:00"
HOLIDAY = "2024-06-19T10:00:00-04:00"


@pytest.fixture
def file_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str, kafka_bootstrap: str):
    """Definitions with only the file provider, reading vendor files the test writes."""
    monkeypatch.setenv("MDP_FRAMES_DIR", str(tmp_path / "frames"))
    doc = yaml.safe_load(UNIVERSE.read_text())
    doc["providers"] = {"synthetic": {"enabled": False}, "file": {"enabled": True, "symbols": ["AAPL"]}}
    universe = tmp_path / "universe.yaml"
    universe.write_text(yaml.safe_dump(doc))
    files = tmp_path / "files"
    (files / "bars_1m").mkdir(parents=True)
    return build_definitions(settings_for(database_url, kafka_bootstrap, universe=universe, files_dir=files)), files


def _minutes(stamps: list[str]) -> pl.DataFrame:
    return pl.DataFrame([{"symbol": "AAPL", "ts": ts, "open": 210.0 + i, "high": 211.0 + i, "low": 209.0 + i,
                          "close": 210.5 + i, "volume": 1000 + i} for i, ts in enumerate(stamps)])


def _run(defs: dg.Definitions) -> dg.ExecuteInProcessResult:
    return materialize_range(defs, START, END, select='key:"*/bars_1m" or key:"ref/instruments"',
                             instance=dg.DagsterInstance.ephemeral())


def test_extended_hours_are_flagged_and_closed_days_quarantined(file_only, database_url: str) -> None:
    defs, files = file_only
    _minutes([*REGULAR, PRE_MARKET]).write_csv(files / "bars_1m" / "aapl.csv")
    # A vendor answer covering the range that also holds a bar of the closed day. (The file provider
    # itself skips rows of closed days when it reads a dump; a range payload like this one, as
    # network providers store them, reaches validation.)
    with connect(database_url) as conn:
        save_payloads(conn, [RawPayload(
            provider="file", dataset="bars_1m", session_date=START, session_end=END,
            request_key="bars_1m:range.csv:2024-06-18", endpoint="bars_1m/range.csv",
            params={"file": "bars_1m/range.csv"}, body=_minutes([HOLIDAY]).write_csv().encode(),
            content_type="text/csv")], run_id="vendor-range")

    first = _run(defs)
    assert first.success  # publish_valid: the good bars go on
    stored = bars("AAPL", START, END, interval="1m", database_url=database_url)
    # Kept: the three regular minutes and the pre-market bar (12:00 UTC); not the holiday bar.
    assert sorted(stored["ts"].to_list()) == sorted([
        datetime(2024, 6, 18, 12, 0, tzinfo=UTC), datetime(2024, 6, 18, 13, 30, tzinfo=UTC),
        datetime(2024, 6, 18, 13, 31, tzinfo=UTC), datetime(2024, 6, 20, 13, 30, tzinfo=UTC)])

    checks = {(e.asset_key.to_user_string(), e.check_name): e for e in first.get_asset_check_evaluations()}
    window = checks[("validated/file/bars_1m", "session_window")]
    assert not window.passed
    assert window.severity == dg.AssetCheckSeverity.WARN
    assert window.metadata["extended_hours"].value == 1
    assert window.metadata["quarantined"].value == 1
    assert window.metadata["flags_by_kind"].value == {"extended_hours": 1, "non_session": 1}
    table = str(window.metadata["findings"].value)
    assert "| AAPL | 2024-06-18 | 12:00 | extended_hours | bar at 12:00 is outside the regular session" \
           " 13:30 .. 20:00 UTC |" in table
    assert "| AAPL | 2024-06-19 | 14:00 | non_session | 2024-06-19 is not a XNYS session |" in table
    quarantine = checks[("validated/file/bars_1m", "quarantine")]
    assert not quarantine.passed
    assert quarantine.metadata["quarantined_by_check"].value == {"non_session": 1}
    assert checks[("validated/file/bars_1m", "schema")].passed

    second = _run(defs)  # a re-run replaces the range's quarantine: the bar is reported exactly once
    assert second.success
    with connect(database_url) as conn:
        rows = conn.execute("select symbol, session_date, stage, check_name, reason, row_data, run_id"
                            " from quality.quarantine where dataset = 'bars_1m'").fetchall()
        recorded = conn.execute("select passed, metadata from quality.check_results where asset_key ="
                                " 'validated/file/bars_1m' and check_name = 'session_window'"
                                " order by checked_at").fetchall()
    assert len(rows) == 1
    symbol, session, stage, check, reason, row_data, run_id = rows[0]
    assert (symbol, session, stage, check) == ("AAPL", date(2024, 6, 19), "validate", "non_session")
    assert reason == "2024-06-19 is not a XNYS session"
    assert run_id == second.run_id
    assert row_data["ts"] == "2024-06-19T14:00:00+00:00"  # the original row, kept as JSON
    assert row_data["close"] == 210.5
    assert [r[0] for r in recorded] == [False, False]
    assert recorded[-1][1]["extended_hours"] == 1
    assert json.dumps(recorded[-1][1])  # stored as jsonb


def test_regular_bars_pass_the_window(file_only, database_url: str) -> None:
    defs, files = file_only
    _minutes(REGULAR).write_csv(files / "bars_1m" / "aapl.csv")
    result = _run(defs)
    assert result.success
    checks = {(e.asset_key.to_user_string(), e.check_name): e for e in result.get_asset_check_evaluations()}
    window = checks[("validated/file/bars_1m", "session_window")]
    assert window.passed
    assert window.metadata["flagged"].value == 0
    assert bars("AAPL", START, END, interval="1m", database_url=database_url).height == 3
