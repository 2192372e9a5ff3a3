"""`mdpipeline quality`: the report of a range, read from the database after real pipeline runs.

The synthetic provider injects a broken OHLC bar (AAPL 2024-06-05) and a negative close (MSFT
2024-06-06); they break that session's first minute bar too. The CLI runs as a user runs it: a
subprocess with only MDP_DATABASE_URL set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import dagster as dg
import pytest

from mdpipeline.orchestration.assembly import build_definitions
from mdpipeline.orchestration.runner import materialize_range
from mdpipeline_tests.pipeline_helpers import settings_for, universe_with

CLI = str(Path(sys.executable).parent / "mdpipeline")
START, END = date(2024, 6, 3), date(2024, 6, 14)  # 10 sessions
SESSIONS, SYMBOLS, MINUTES = 10, 6, 390
ANOMALIES = [
    {"kind": "broken_ohlc", "symbol": "AAPL", "date": "2024-06-05"},
    {"kind": "negative_price", "symbol": "MSFT", "date": "2024-06-06"},
]


def _cli(cwd: Path, database_url: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MDP_", "DAGSTER_HOME"))}
    env["COLUMNS"] = "200"  # rich wraps tables at the terminal width (80 in a pipe)
    if database_url:
        env["MDP_DATABASE_URL"] = database_url
    return subprocess.run([CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def ran(database_url: str, kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The synthetic provider's range materialized once (every step, anomalies injected); the run id."""
    monkeypatch.setenv("MDP_FRAMES_DIR", str(tmp_path / "frames"))
    universe = universe_with(tmp_path, anomalies=ANOMALIES)
    defs = build_definitions(settings_for(database_url, kafka_bootstrap, universe=universe))
    result = materialize_range(defs, START, END, providers=["synthetic"], instance=dg.DagsterInstance.ephemeral())
    assert result.success
    return result.run_id


def test_report_counts_stored_quarantined_and_checked_rows(ran: str, database_url: str, tmp_path: Path) -> None:
    out = _cli(tmp_path, database_url, "quality", "--start", "2024-06-03", "--end", "2024-06-14",
               "--format", "json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert (report["start"], report["end"], report["provider"]) == ("2024-06-03", "2024-06-14", None)
    found = {(d["provider"], d["dataset"]): d for d in report["datasets"]}
    assert set(found) == {("synthetic", "bars_1d"), ("synthetic", "bars_1m"), ("synthetic", "corporate_actions")}

    daily = found[("synthetic", "bars_1d")]
    assert daily["rows_stored"] == SYMBOLS * SESSIONS - 2
    assert daily["rows_quarantined"] == 2
    assert daily["quarantined_by_check"] == {"ohlc_consistency": 1, "value_range,ohlc_consistency": 1}
    # The two held-back bars are missing from what was published.
    assert daily["completeness"] == {"expected": 60, "present": 58, "missing": 2, "no_trades": 0,
                                     "completeness_pct": pytest.approx(100 * 58 / 60, abs=1e-4)}
    assert daily["flags_by_kind"] == {"missing": 2}
    assert daily["divergence"]["pairs_compared"] == 0  # synthetic is compared with nobody
    checks = {(c["asset"], c["check"]): c for c in daily["checks"]}
    assert set(checks) == {
        ("validated/synthetic/bars_1d", "quarantine"), ("validated/synthetic/bars_1d", "schema"),
        *(("md/synthetic/bars_1d", name) for name in (
            "completeness", "staleness", "return_outliers", "price_gaps", "volume_spikes", "quality_metrics")),
        ("md/synthetic/bars_1d", "divergence"),
    }
    assert all(c["results"] == 1 for c in checks.values())
    quarantine = checks[("validated/synthetic/bars_1d", "quarantine")]
    assert (quarantine["passed"], quarantine["failed"], quarantine["severity"]) == (0, 1, "WARN")
    assert quarantine["metrics"]["rows_quarantined"] == 2
    assert quarantine["partitions"] == [["2024-06-03", "2024-06-14"]]
    schema = checks[("validated/synthetic/bars_1d", "schema")]
    assert (schema["passed"], schema["severity"], schema["metrics"]["on_quarantine"]) == (1, "ERROR", "publish_valid")
    assert checks[("md/synthetic/bars_1d", "completeness")]["failed"] == 1
    assert checks[("md/synthetic/bars_1d", "staleness")]["failed"] == 0

    minute = found[("synthetic", "bars_1m")]
    assert minute["rows_stored"] == SYMBOLS * SESSIONS * MINUTES - 2
    assert minute["quarantined_by_check"] == {"ohlc_consistency": 1, "value_range,ohlc_consistency": 1}
    window = {c["check"]: c for c in minute["checks"]}["session_window"]
    assert (window["passed"], window["metrics"]["extended_hours"], window["metrics"]["quarantined"]) == (1, 0, 0)
    assert minute["completeness"] is None  # no completeness check on minute bars yet

    actions = found[("synthetic", "corporate_actions")]
    assert (actions["rows_stored"], actions["rows_quarantined"]) == (1, 0)  # NVDA's split on 2024-06-10

    # Part of the range again: for those sessions the newer results count, the older ones elsewhere.
    only = _cli(tmp_path, database_url, "quality", "--start", "2024-06-05", "--end", "2024-06-05",
                "--provider", "synthetic", "--format", "json")
    assert only.returncode == 0, only.stderr
    one_day = {(d["provider"], d["dataset"]): d for d in json.loads(only.stdout)["datasets"]}
    assert one_day[("synthetic", "bars_1d")]["rows_stored"] == SYMBOLS - 1
    assert one_day[("synthetic", "bars_1d")]["quarantined_by_check"] == {"ohlc_consistency": 1}
    # A check result is about its run's whole range: the run's 60 expected bars, not one session's six.
    assert one_day[("synthetic", "bars_1d")]["completeness"]["expected"] == 60


def test_table_and_filters(ran: str, database_url: str, tmp_path: Path) -> None:
    table = _cli(tmp_path, database_url, "quality", "--start", "2024-06-03", "--end", "2024-06-14")
    assert table.returncode == 0, table.stderr
    text = table.stdout
    assert "quality 2024-06-03 .. 2024-06-14" in text
    assert "96.67% (2 missing)" in text
    assert "2 (ohlc_consistency 1, value_range,ohlc_consistency 1)" in " ".join(text.split())
    assert "latest check results" in text

    nobody = _cli(tmp_path, database_url, "quality", "--start", "2024-06-03", "--end", "2024-06-14",
                  "--provider", "file", "--format", "json")
    assert nobody.returncode == 0, nobody.stderr
    assert json.loads(nobody.stdout)["datasets"] == []
    before = _cli(tmp_path, database_url, "quality", "--start", "2024-05-01", "--end", "2024-05-31")
    assert before.returncode == 0
    assert "no stored rows, quarantined rows or check results" in before.stdout


@pytest.mark.parametrize(("args", "message"), [
    (("--start", "2024-06-14", "--end", "2024-06-03"), "is after --end"),
    (("--start", "2024-06-31", "--end", "2024-07-03"), "is not a date"),
    (("--start", "2024-06-03", "--end", "2024-06-14", "--format", "csv"), "--format must be table or json"),
    (("--start", "2024-06-03", "--end", "2024-06-14", "--provider", "nobody"), "unknown provider nobody"),
])
def test_bad_input_is_a_clear_error(database_url: str, tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    out = _cli(tmp_path, database_url, "quality", *args)
    assert out.returncode == 2
    assert message in " ".join(out.stderr.split())


def test_missing_database_url_is_a_clear_error(tmp_path: Path) -> None:
    out = _cli(tmp_path, None, "quality", "--start", "2024-06-03", "--end", "2024-06-14")
    assert out.returncode == 2
    assert "MDP_DATABASE_URL is not set" in out.stderr
