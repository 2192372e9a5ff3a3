"""Quality checks through real Dagster runs: labelled synthetic anomalies are each detected.

A first run materializes three clean months (the look-back the robust bands learn from); a second
run materializes 2024-06-03 .. 2024-06-14 with one injected anomaly of each kind, and the asset
checks must find exactly those, with the metadata the UI shows and rows in quality.check_results.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from pathlib import Path

import dagster as dg
import psycopg
import pytest
import yaml

from mdpipeline.orchestration.assembly import build_definitions
from mdpipeline.orchestration.partitions import trading_day_partitions
from mdpipeline.orchestration.quality_checks import BAR_CHECKS, quality_checks
from mdpipeline.orchestration.runner import materialize_range
from mdpipeline.providers.synthetic import SyntheticProvider
from mdpipeline.storage.database import connect
from mdpipeline.universe import load_universe
from mdpipeline_tests.pipeline_helpers import settings_for, universe_with

HISTORY = (date(2024, 3, 1), date(2024, 5, 31))
START, END = date(2024, 6, 3), date(2024, 6, 14)
ANOMALIES = [
    {"kind": "spike", "symbol": "AAPL", "date": "2024-06-05", "dataset": "bars_1d"},
    {"kind": "gap", "symbol": "MSFT", "date": "2024-06-06", "dataset": "bars_1d"},
    {"kind": "missing", "symbol": "SPY", "date": "2024-06-07", "dataset": "bars_1d"},
    {"kind": "stale", "symbol": "TSLA", "date": "2024-06-10", "length": 4, "dataset": "bars_1d"},
    {"kind": "volume_spike", "symbol": "META", "date": "2024-06-12", "dataset": "bars_1d"},
    {"kind": "broken_ohlc", "symbol": "AAPL", "date": "2024-06-11", "dataset": "bars_1d"},
    {"kind": "negative_price", "symbol": "MSFT", "date": "2024-06-12", "dataset": "bars_1d"},
    {"kind": "duplicate", "symbol": "NVDA", "date": "2024-06-04", "dataset": "bars_1d"},
]


@pytest.fixture(autouse=True)
def _frames_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MDP_FRAMES_DIR", str(tmp_path / "frames"))


def _with_checks(defs: dg.Definitions, universe: Path, **kw: object) -> dg.Definitions:
    """The project's definitions with its quality checks rebuilt with other options (e.g. a
    thresholds file); `build_definitions` already wires them with the defaults.

    The checks go in `assets` (AssetChecksDefinition is an AssetsDefinition), which is what
    `materialize_range` hands to Dagster.
    """
    setup = load_universe(universe)
    partitions = trading_day_partitions(setup.exchange_calendar)
    enabled = [name for name, p in setup.providers.items() if p.enabled]
    graph = defs.resolve_asset_graph()
    actions = [k for k in graph.get_all_asset_keys() if k.path[0] == "ref" and k.path[-1] == "corporate_actions"]
    checks = [c for p in enabled
              for c in quality_checks(p, partitions, other_providers=enabled, after=actions, **kw)]  # type: ignore[arg-type]
    own = [a for a in defs.assets or [] if not isinstance(a, dg.AssetChecksDefinition)]
    return dg.Definitions(assets=[*own, *checks], resources=defs.resources)


DAILY_BARS = 'key:"*/bars_1d" or key:"ref/instruments"'  # the daily-bar chain only (no 1m, no actions)


def _run(defs: dg.Definitions, start: date, end: date, **kw: object) -> dg.ExecuteInProcessResult:
    return materialize_range(defs, start, end, instance=dg.DagsterInstance.ephemeral(), select=DAILY_BARS,
                             **kw)  # type: ignore[arg-type]


def _evaluations(result: dg.ExecuteInProcessResult) -> dict[tuple[str, str], dg.AssetCheckEvaluation]:
    return {(e.asset_key.to_user_string(), e.check_name): e for e in result.get_asset_check_evaluations()}


def _flagged(evaluation: dg.AssetCheckEvaluation) -> set[tuple[str, str]]:
    """(instrument, session) pairs listed in the findings table of a check result."""
    text = evaluation.metadata["findings"].value
    rows = [line.split(" | ") for line in str(text).splitlines() if line.startswith("| ") and "---" not in line]
    return {(r[0].strip("| "), r[1]) for r in rows[1:]}


def _insert_split(conn: psycopg.Connection) -> None:
    """NVDA's 10-for-1 split, as the corporate-actions step stores it in ref.corporate_actions."""
    conn.execute("insert into ref.corporate_actions (instrument_id, ex_date, action, ratio, provider)"
                 " values (3, '2024-06-10', 'split', 10, 'quality-test')")


def test_each_anomaly_kind_is_detected_and_reported(database_url: str, kafka_bootstrap: str,
                                                    tmp_path: Path) -> None:
    universe = universe_with(tmp_path, anomalies=ANOMALIES)
    defs = build_definitions(settings_for(database_url, kafka_bootstrap, universe=universe))
    history = _run(defs, *HISTORY, providers=["synthetic"])
    assert history.success
    clean = _evaluations(history)
    # Three clean months: the soft checks find nothing (no false alarms on ordinary data).
    for name in ("staleness", "return_outliers", "price_gaps", "volume_spikes", "completeness", "quality_metrics"):
        assert clean[("md/synthetic/bars_1d", name)].passed, name

    with connect(database_url) as conn:
        _insert_split(conn)
    result = _run(defs, START, END, providers=["synthetic"])
    assert result.success  # soft findings warn; they never fail the run
    checks = _evaluations(result)
    key = "md/synthetic/bars_1d"
    assert {name for (asset, name) in checks if asset == key} >= set(BAR_CHECKS)
    assert all(checks[(key, name)].severity == dg.AssetCheckSeverity.WARN for name in BAR_CHECKS)

    completeness = checks[(key, "completeness")]
    assert not completeness.passed
    # gap + missing, and the bars quarantined upstream (broken OHLC, negative price, conflicting
    # duplicates) are missing from what gets published too.
    assert _flagged(completeness) == {("MSFT", "2024-06-06"), ("SPY", "2024-06-07"), ("AAPL", "2024-06-11"),
                                      ("MSFT", "2024-06-12"), ("NVDA", "2024-06-04")}
    assert completeness.metadata["expected"].value == 60
    assert completeness.metadata["missing"].value == 5
    assert completeness.metadata["completeness_pct"].value == pytest.approx(100 * 55 / 60, abs=1e-3)

    stale = checks[(key, "staleness")]
    assert not stale.passed
    assert _flagged(stale) == {("TSLA", d) for d in ("2024-06-10", "2024-06-11", "2024-06-12", "2024-06-13")}

    returns = checks[(key, "return_outliers")]
    assert not returns.passed
    assert returns.metadata["by_kind"].value == {"corporate_action": 1, "return_outlier": 1}
    assert _flagged(returns) == {("AAPL", "2024-06-05"), ("NVDA", "2024-06-10")}  # the split: info only
    assert "explained by split 10" in str(returns.metadata["findings"].value)

    assert checks[(key, "price_gaps")].passed  # the gap after the spike and the split's gap are explained
    volume = checks[(key, "volume_spikes")]
    assert _flagged(volume) == {("META", "2024-06-12")}  # NVDA's split-day volume is split-adjusted

    summary = checks[(key, "quality_metrics")]
    assert not summary.passed
    assert summary.metadata["rows_quarantined"].value == 4
    assert summary.metadata["quarantined_by_check"].value == {
        "duplicate_conflict": 2, "ohlc_consistency": 1, "value_range,ohlc_consistency": 1}
    assert summary.metadata["flags_by_kind"].value == {
        "missing": 5, "return_outlier": 1, "stale": 4, "volume_spike": 1}
    assert summary.metadata["info_by_kind"].value == {"corporate_action": 1, "no_trades": 4}
    assert "█" in str(summary.metadata["summary"].value)

    with connect(database_url) as conn:
        stored = conn.execute(
            "select check_name, passed, severity, metadata from quality.check_results"
            " where asset_key = %s and partition_start = %s and partition_end = %s",
            (key, START, END)).fetchall()
    assert {r[0] for r in stored} == {*BAR_CHECKS, "divergence"}  # the bar checks and divergence, on md
    by_name = {r[0]: r for r in stored}
    assert by_name["quality_metrics"][1] is False
    assert by_name["quality_metrics"][2] == "WARN"
    assert by_name["quality_metrics"][3]["completeness_pct"] == pytest.approx(100 * 55 / 60, abs=1e-3)
    assert by_name["quality_metrics"][3]["rows_quarantined"] == 4


def test_unexplained_split_is_flagged(database_url: str, kafka_bootstrap: str, tmp_path: Path) -> None:
    universe = universe_with(tmp_path)
    defs = build_definitions(settings_for(database_url, kafka_bootstrap, universe=universe))
    assert _run(defs, date(2024, 4, 1), date(2024, 5, 31), providers=["synthetic"]).success
    result = _run(defs, START, END, providers=["synthetic"])  # nothing in ref.corporate_actions
    checks = _evaluations(result)
    key = "md/synthetic/bars_1d"
    assert _flagged(checks[(key, "return_outliers")]) == {("NVDA", "2024-06-10")}
    assert "jump" in str(checks[(key, "return_outliers")].metadata["findings"].value)
    assert _flagged(checks[(key, "price_gaps")]) == {("NVDA", "2024-06-10")}


def _vendor_files(files: Path, universe: Path) -> None:
    """A vendor dump of the file provider's symbols made from the synthetic provider's clean bars."""
    setup = load_universe(universe)
    synthetic = setup.providers["synthetic"]
    clean = SyntheticProvider(replace(synthetic, options={**synthetic.options, "anomalies": []}),
                              setup.exchange_calendar)
    bars = clean.daily_bars(list(setup.providers["file"].symbols), START, END)
    (files / "bars_1d").mkdir(parents=True)
    bars.rename({"session_date": "date"}).write_csv(files / "bars_1d" / "vendor.csv")


def test_divergence_between_two_providers(database_url: str, kafka_bootstrap: str, tmp_path: Path) -> None:
    universe = universe_with(tmp_path, anomalies=[
        {"kind": "divergence", "symbol": "MSFT", "date": "2024-06-07", "magnitude": 150, "dataset": "bars_1d"},
        {"kind": "divergence", "symbol": "AAPL", "date": "2024-06-12", "magnitude": 30, "dataset": "bars_1d"},
    ])
    files = tmp_path / "files"
    _vendor_files(files, universe)
    config = tmp_path / "quality.yaml"
    config.write_text(yaml.safe_dump({"providers": {
        "synthetic": {"bars_1d": {"divergence": {"compare_with": ["file"]}}},
        "file": {"bars_1d": {"divergence": {"compare_with": ["synthetic"], "columns": ["close"]}}},
    }}))
    defs = _with_checks(build_definitions(settings_for(database_url, kafka_bootstrap, universe=universe,
                                                       files_dir=files)), universe, config_path=config)
    result = _run(defs, START, END)
    assert result.success
    checks = _evaluations(result)

    synthetic = checks[("md/synthetic/bars_1d", "divergence")]
    assert not synthetic.passed
    assert synthetic.severity == dg.AssetCheckSeverity.WARN
    assert _flagged(synthetic) == {("2 (MSFT)", "2024-06-07")}  # AAPL's 30 bps stay under 50
    meta = synthetic.metadata
    assert meta["divergence"].value["pairs_compared"] == 30  # 3 shared symbols x 10 sessions
    assert meta["divergence"].value["pairs_flagged"] == 1
    # +150 bps on one side is 1e4 * 0.015 / 1.0075 = 148.9 bps of the mid price
    assert meta["divergence"].value["bps"]["close"]["max"] == pytest.approx(1e4 * 0.015 / 1.0075, abs=0.01)
    assert meta["divergence"].value["bps"]["close"]["over_threshold"] == 1
    assert "synthetic vs file: open 148.9 bps, high 148.9 bps, low 148.9 bps, close 148.9 bps" in str(
        meta["findings"].value)

    file_side = checks[("md/file/bars_1d", "divergence")]
    assert _flagged(file_side) == {("2 (MSFT)", "2024-06-07")}

    with connect(database_url) as conn:
        stored = conn.execute("select passed, metadata from quality.check_results"
                              " where asset_key = 'md/synthetic/bars_1d' and check_name = 'divergence'").fetchall()
    assert len(stored) == 1
    assert stored[0][0] is False
    assert stored[0][1]["divergence"]["pairs_flagged"] == 1


def test_demo_range_raises_no_false_alarms(database_url: str, kafka_bootstrap: str) -> None:
    """The checked-in universe and thresholds, wired as build_definitions should wire them: the bar
    checks wait for the corporate-actions assets, so NVDA's 10-for-1 split (2024-06-10, in the
    synthetic path and in the vendor file) is explained, not flagged."""
    defs = build_definitions(settings_for(database_url, kafka_bootstrap))
    graph = defs.resolve_asset_graph()
    actions = [k for k in graph.get_all_asset_keys() if k.path[0] == "ref" and k.path[-1] == "corporate_actions"]
    assert actions, "the corporate-actions step stores actions in ref.corporate_actions"
    result = materialize_range(defs, date(2024, 6, 3), date(2024, 6, 21), instance=dg.DagsterInstance.ephemeral(),
                               select='key:"*/bars_1d" or key:"*/corporate_actions" or key:"ref/instruments"')
    assert result.success
    checks = _evaluations(result)
    ours = {k: e for k, e in checks.items() if k[1] in {*BAR_CHECKS, "divergence"}}
    assert len(ours) == 2 * (len(BAR_CHECKS) + 1)  # both providers
    assert all(e.passed for e in ours.values()), [k for k, e in ours.items() if not e.passed]
    for provider in ("synthetic", "file"):
        returns = checks[(f"md/{provider}/bars_1d", "return_outliers")]
        assert returns.metadata["by_kind"].value == {"corporate_action": 1}
        assert _flagged(returns) == {("NVDA", "2024-06-10")}

