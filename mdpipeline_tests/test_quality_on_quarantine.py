"""`on_quarantine` (config/quality.yaml): a range with quarantined rows publishes the good rows, or none.

Through real Dagster materializations: with `block` the validated asset's blocking `schema` check
fails with severity ERROR, so normalize, store and publish do not run for that range; the
quarantine still holds the rejected row with its reason.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml

from mdpipeline.distribute.topics import BARS_1D
from mdpipeline.orchestration.assembly import build_definitions
from mdpipeline.orchestration.runner import materialize_range
from mdpipeline.quality.thresholds import DEFAULT_QUALITY_CONFIG, load_thresholds, on_quarantine
from mdpipeline.storage.bars import read_bars_1d, read_bars_1m
from mdpipeline.storage.database import connect
from mdpipeline_tests.pipeline_helpers import events_of_run, settings_for, universe_with

START, END = date(2024, 6, 4), date(2024, 6, 5)  # two sessions
SYMBOLS = 6
BROKEN = [{"kind": "broken_ohlc", "symbol": "AAPL", "date": "2024-06-05"}]  # daily bar and first minute


def _config(tmp_path: Path, policy: str) -> Path:
    path = tmp_path / "quality.yaml"
    path.write_text(yaml.safe_dump({"providers": {"synthetic": {"bars_1d": {"on_quarantine": policy}}}}))
    return path


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str, kafka_bootstrap: str):
    """Materialize the synthetic provider's range under a given on_quarantine for its daily bars."""
    monkeypatch.setenv("MDP_FRAMES_DIR", str(tmp_path / "frames"))

    def go(policy: str, anomalies: list[dict]) -> dg.ExecuteInProcessResult:
        monkeypatch.setenv("MDP_QUALITY_CONFIG", str(_config(tmp_path, policy)))
        universe = universe_with(tmp_path, anomalies=anomalies)
        defs = build_definitions(settings_for(database_url, kafka_bootstrap, universe=universe))
        return materialize_range(defs, START, END, providers=["synthetic"], instance=dg.DagsterInstance.ephemeral())

    return go


def _checks(result: dg.ExecuteInProcessResult) -> dict[tuple[str, str], dg.AssetCheckEvaluation]:
    return {(e.asset_key.to_user_string(), e.check_name): e for e in result.get_asset_check_evaluations()}


def _materialized(result: dg.ExecuteInProcessResult) -> set[str]:
    return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}


def test_block_publishes_nothing_of_the_range(run, database_url: str) -> None:
    result = run("block", BROKEN)
    assert not result.success  # the blocking check failed the validate step
    schema = _checks(result)[("validated/synthetic/bars_1d", "schema")]
    assert not schema.passed
    assert schema.severity == dg.AssetCheckSeverity.ERROR
    assert schema.metadata["on_quarantine"].value == "block"
    assert schema.metadata["rows_quarantined"].value == 1
    assert "1 rows quarantined and on_quarantine is block" in str(schema.metadata["error"].value)
    failures = [e for e in result.all_events if e.is_step_failure]
    assert [e.step_key for e in failures] == ["validated__synthetic__bars_1d"]

    done = _materialized(result)
    assert "validated/synthetic/bars_1d" in done  # the valid rows exist as the validated frame ...
    for downstream in ("normalized/synthetic/bars_1d", "md/synthetic/bars_1d", "published/synthetic/bars_1d",
                       "published/synthetic/quality"):
        assert downstream not in done  # ... but nothing of the range went further
    # The minute bars keep the default (publish_valid): their good rows went on.
    assert "md/synthetic/bars_1m" in done
    with connect(database_url) as conn:
        assert read_bars_1d(conn, start=START, end=END).is_empty()
        assert read_bars_1m(conn, start=START, end=END).height == SYMBOLS * 2 * 390 - 1
        held = conn.execute("select dataset, symbol, session_date, check_name from quality.quarantine"
                            " order by dataset").fetchall()
        announced = conn.execute("select count(*) from ops.outbox_events where topic = 'md.bars.1d.v1'").fetchone()
        recorded = conn.execute("select passed, severity, metadata->>'on_quarantine' from quality.check_results"
                                " where asset_key = 'validated/synthetic/bars_1d' and check_name = 'schema'"
                                ).fetchall()
    assert held == [("bars_1d", "AAPL", date(2024, 6, 5), "ohlc_consistency"),
                    ("bars_1m", "AAPL", date(2024, 6, 5), "ohlc_consistency")]
    assert recorded == [(False, "ERROR", "block")]
    assert announced == (0,)  # every md.* message goes through the outbox: no daily bar was even queued


def test_block_without_quarantined_rows_publishes_everything(run, database_url: str) -> None:
    result = run("block", [])
    assert result.success
    assert _checks(result)[("validated/synthetic/bars_1d", "schema")].passed
    assert {"md/synthetic/bars_1d", "published/synthetic/bars_1d", "published/synthetic/quality"} <= _materialized(
        result)
    with connect(database_url) as conn:
        assert read_bars_1d(conn, start=START, end=END).height == SYMBOLS * 2


def test_publish_valid_publishes_the_good_rows(run, database_url: str, kafka_bootstrap: str) -> None:
    result = run("publish_valid", BROKEN)
    assert result.success
    checks = _checks(result)
    assert checks[("validated/synthetic/bars_1d", "schema")].passed
    assert checks[("validated/synthetic/bars_1d", "schema")].metadata["on_quarantine"].value == "publish_valid"
    assert not checks[("validated/synthetic/bars_1d", "quarantine")].passed  # warns
    with connect(database_url) as conn:
        stored = read_bars_1d(conn, start=START, end=END)
    assert stored.height == SYMBOLS * 2 - 1
    assert stored.filter((pl.col("symbol") == "AAPL") & (pl.col("session_date") == date(2024, 6, 5))).is_empty()
    assert len(events_of_run(kafka_bootstrap, BARS_1D.name, result.run_id)) == SYMBOLS * 2 - 1


def test_policy_resolution_and_typos(tmp_path: Path) -> None:
    assert on_quarantine("synthetic", "bars_1d", DEFAULT_QUALITY_CONFIG) == "publish_valid"
    path = _config(tmp_path, "block")
    assert on_quarantine("synthetic", "bars_1d", path) == "block"
    assert on_quarantine("synthetic", "bars_1m", path) == "publish_valid"
    assert on_quarantine("file", "bars_1d", path) == "publish_valid"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"defaults": {"on_quarantine": "drop"}}))
    with pytest.raises(ValueError, match="on_quarantine must be one of publish_valid, block"):
        load_thresholds("file", "bars_1d", bad)
