"""Adjusted prices for real historical corporate actions, through Dagster, the Python API and the CLI.

The events are public facts (ex-dates and ratios/amounts); the closes are the published raw closes
(rounded to the cent) of the sessions around them. Expected values are computed by hand from the
rule in DESIGN.md: split r on D -> earlier prices x 1/r, volumes x r; dividend d on D -> earlier
prices x (1 - d / raw close of the session before D); factors compound.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml

from mdpipeline.orchestration.assembly import build_definitions
from mdpipeline.orchestration.runner import materialize_range
from mdpipeline.read import bars
from mdpipeline.storage.database import connect
from mdpipeline_tests.pipeline_helpers import settings_for

REL = 1e-9
# symbol, date, close (raw, as traded), volume
CLOSES = [
    ("AAPL", "2020-08-05", 440.25, 30_498_000), ("AAPL", "2020-08-06", 455.61, 50_607_200),
    ("AAPL", "2020-08-07", 444.45, 49_453_300), ("AAPL", "2020-08-27", 500.04, 38_888_100),
    ("AAPL", "2020-08-28", 499.23, 46_907_500), ("AAPL", "2020-08-31", 129.04, 225_702_700),
    ("TSLA", "2022-08-23", 889.36, 21_000_000), ("TSLA", "2022-08-24", 891.29, 20_800_000),
    ("TSLA", "2022-08-25", 296.07, 53_230_000),
    ("NVDA", "2024-06-06", 1209.98, 66_306_800), ("NVDA", "2024-06-07", 1208.88, 41_238_600),
    ("NVDA", "2024-06-10", 121.79, 314_162_700), ("NVDA", "2024-06-11", 120.91, 222_551_200),
    ("GE", "2021-07-29", 13.11, 52_000_000), ("GE", "2021-07-30", 12.94, 60_000_000),
    ("GE", "2021-08-02", 104.11, 9_500_000),
]
ACTIONS = [  # symbol, ex_date, action, ratio, amount
    ("AAPL", "2020-08-07", "cash_dividend", None, 0.82),
    ("AAPL", "2020-08-31", "split", 4.0, None),
    ("TSLA", "2022-08-25", "split", 3.0, None),
    ("NVDA", "2024-06-10", "split", 10.0, None),
    ("NVDA", "2024-06-11", "cash_dividend", None, 0.01),
    ("GE", "2021-08-02", "split", 0.125, None),  # 1-for-8 reverse split
]
RANGES = [(date(2020, 8, 5), date(2020, 8, 31)), (date(2022, 8, 23), date(2022, 8, 25)),
          (date(2024, 6, 6), date(2024, 6, 11)), (date(2021, 7, 29), date(2021, 8, 2))]

# Hand-computed expectations: (symbol, date) -> (split-adjusted close, total-adjusted close)
EXPECTED = {
    ("AAPL", date(2020, 8, 6)): (455.61 / 4, (455.61 - 0.82) / 4),
    ("AAPL", date(2020, 8, 7)): (444.45 / 4, 444.45 / 4),
    ("AAPL", date(2020, 8, 28)): (499.23 / 4, 499.23 / 4),
    ("AAPL", date(2020, 8, 31)): (129.04, 129.04),
    ("TSLA", date(2022, 8, 24)): (891.29 / 3, 891.29 / 3),
    ("TSLA", date(2022, 8, 25)): (296.07, 296.07),
    ("NVDA", date(2024, 6, 7)): (1208.88 / 10, 1208.88 / 10 * (1 - 0.01 / 121.79)),
    ("NVDA", date(2024, 6, 10)): (121.79, 121.79 - 0.01),
    ("NVDA", date(2024, 6, 11)): (120.91, 120.91),
    ("GE", date(2021, 7, 30)): (12.94 * 8, 12.94 * 8),
    ("GE", date(2021, 8, 2)): (104.11, 104.11),
}


def _write_vendor_files(root: Path, actions: list[tuple]) -> None:
    (root / "bars_1d").mkdir(parents=True, exist_ok=True)
    (root / "corporate_actions").mkdir(parents=True, exist_ok=True)
    pl.DataFrame(
        [{"symbol": s, "date": d, "open": c, "high": c * 1.01, "low": c * 0.99, "close": c, "volume": v}
         for s, d, c, v in CLOSES]
    ).write_csv(root / "bars_1d" / "history.csv")
    pl.DataFrame(
        [{"symbol": s, "ex_date": d, "action": a, "ratio": r, "amount": m, "currency": "USD"}
         for s, d, a, r, m in actions],
        schema={"symbol": pl.String, "ex_date": pl.String, "action": pl.String, "ratio": pl.Float64,
                "amount": pl.Float64, "currency": pl.String},
    ).write_csv(root / "corporate_actions" / "actions.csv")


def _universe(tmp_path: Path) -> Path:
    doc = yaml.safe_load((Path(__file__).resolve().parent.parent / "config" / "universe.yaml").read_text())
    doc["instruments"].append({"id": 7, "name": "General Electric Company", "mic": "XNYS", "currency": "USD",
                               "asset_class": "equity", "symbols": [{"symbol": "GE", "valid_from": "1962-01-02"}]})
    doc["providers"] = {"synthetic": {"enabled": False},
                        "file": {"enabled": True, "symbols": ["AAPL", "TSLA", "NVDA", "GE"]}}
    path = tmp_path / "universe.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str, kafka_bootstrap: str):
    """Definitions over vendor files holding the events, and a function that materializes every range."""
    monkeypatch.setenv("MDP_FRAMES_DIR", str(tmp_path / "frames"))
    files = tmp_path / "files"
    _write_vendor_files(files, ACTIONS)
    defs = build_definitions(settings_for(database_url, kafka_bootstrap, universe=_universe(tmp_path),
                                          files_dir=files))

    def run_all(select: str | None = None) -> list[dg.ExecuteInProcessResult]:
        results = [materialize_range(defs, s, e, select=select, instance=dg.DagsterInstance.ephemeral())
                   for s, e in RANGES]
        assert all(r.success for r in results)
        return results

    return defs, files, run_all


def _close(frame: pl.DataFrame, symbol: str, day: date) -> float:
    return frame.filter((pl.col("symbol") == symbol) & (pl.col("session_date") == day))["close"].item()


@pytest.mark.both_layouts
def test_adjusted_prices_match_hand_computed_values(history, database_url: str) -> None:
    _, _, run_all = history
    results = run_all()
    checks = [e for r in results for e in r.get_asset_check_evaluations() if e.check_name == "no_ex_date_jump"]
    assert len(checks) == len(RANGES)
    assert all(c.passed for c in checks)

    symbols = ["AAPL", "TSLA", "NVDA", "GE"]
    raw = bars(symbols, "2020-01-01", "2024-12-31", database_url=database_url)
    split = bars(symbols, "2020-01-01", "2024-12-31", adjust="split", database_url=database_url)
    total = bars(symbols, "2020-01-01", "2024-12-31", adjust="total", database_url=database_url)
    assert raw.height == split.height == total.height == len(CLOSES)
    for (symbol, day), (want_split, want_total) in EXPECTED.items():
        assert _close(split, symbol, day) == pytest.approx(want_split, rel=REL), (symbol, day)
        assert _close(total, symbol, day) == pytest.approx(want_total, rel=REL), (symbol, day)
        raw_close = next(c for s, d, c, _ in CLOSES if s == symbol and d == day.isoformat())
        assert _close(raw, symbol, day) == raw_close  # raw bars are never rewritten
    aapl = split.filter((pl.col("symbol") == "AAPL") & (pl.col("session_date") == date(2020, 8, 28)))
    assert aapl["volume"].item() == pytest.approx(46_907_500 * 4, rel=REL)
    assert aapl["high"].item() == pytest.approx(499.23 * 1.01 / 4, rel=REL)
    ge = split.filter((pl.col("symbol") == "GE") & (pl.col("session_date") == date(2021, 7, 30)))
    assert ge["volume"].item() == pytest.approx(60_000_000 / 8, rel=REL)

    # The SQL view agrees with the Python computation.
    with connect(database_url) as conn:
        view = conn.execute(
            "select split_close, total_close from md.bars_1d_adjusted where symbol = 'NVDA' "
            "and session_date = '2024-06-07'").fetchone()
    assert view is not None
    assert view[0] == pytest.approx(EXPECTED[("NVDA", date(2024, 6, 7))][0], rel=REL)
    assert view[1] == pytest.approx(EXPECTED[("NVDA", date(2024, 6, 7))][1], rel=REL)


def test_cli_prints_the_same_adjusted_prices(history, database_url: str) -> None:
    _, _, run_all = history
    run_all()
    env = {**os.environ, "MDP_DATABASE_URL": database_url}
    raw = {(s, d): c for s, d, c, _ in CLOSES}
    for mode in ("none", "split", "total"):
        out = subprocess.run(
            [str(Path(sys.executable).parent / "mdpipeline"), "bars", "AAPL,TSLA,NVDA,GE", "--start", "2020-01-01",
             "--end", "2024-12-31", "--adjust", mode, "--format", "json"],
            env=env, capture_output=True, text=True, timeout=120, check=False)
        assert out.returncode == 0, out.stderr
        rows = {(r["symbol"], r["session_date"]): r["close"] for r in json.loads(out.stdout)}
        assert len(rows) == len(CLOSES)
        for (symbol, day), (want_split, want_total) in EXPECTED.items():
            want = {"none": raw[(symbol, day.isoformat())], "split": want_split, "total": want_total}[mode]
            assert rows[(symbol, day.isoformat())] == pytest.approx(want, rel=REL), (mode, symbol, day)


@pytest.mark.both_layouts
def test_new_action_corrects_history_without_a_provider_call(history, database_url: str) -> None:
    _, files, run_all = history
    _write_vendor_files(files, [a for a in ACTIONS if a[0] != "NVDA"])  # the split is not known yet
    run_all()
    before = bars("NVDA", "2024-06-06", "2024-06-11", adjust="split", database_url=database_url)
    assert _close(before, "NVDA", date(2024, 6, 7)) == 1208.88
    with connect(database_url) as conn:
        payloads = conn.execute("select count(*) from raw.payloads where dataset = 'bars_1d'").fetchone()
        learnt_before = datetime.now(UTC)

    _write_vendor_files(files, ACTIONS)  # the actions file now has NVDA's split and dividend
    run_all(select="key:raw/file/corporate_actions+")  # the actions chain and what depends on it, only
    after = bars("NVDA", "2024-06-06", "2024-06-11", adjust="split", database_url=database_url)
    assert _close(after, "NVDA", date(2024, 6, 7)) == pytest.approx(120.888, rel=REL)
    with connect(database_url) as conn:
        assert conn.execute("select count(*) from raw.payloads where dataset = 'bars_1d'").fetchone() == payloads

    # As known before the split was learnt: no look-ahead.
    as_of = bars("NVDA", "2024-06-06", "2024-06-11", adjust="split", as_of=learnt_before, database_url=database_url)
    assert _close(as_of, "NVDA", date(2024, 6, 7)) == 1208.88
    assert _close(as_of, "NVDA", date(2024, 6, 10)) == 121.79


def test_as_of_before_the_bars_were_stored_returns_nothing(history, database_url: str) -> None:
    _, _, run_all = history
    before = datetime.now(UTC)
    run_all()
    assert bars("AAPL", "2020-08-01", "2020-08-31", as_of=before, database_url=database_url).is_empty()
    assert bars("AAPL", "2020-08-01", "2020-08-31", database_url=database_url).height == 6


def test_regular_and_special_dividend_on_one_ex_date_add_up(history, database_url: str) -> None:
    _, files, run_all = history
    _write_vendor_files(files, [*ACTIONS, ("TSLA", "2022-08-25", "cash_dividend", None, 1.0),
                                ("TSLA", "2022-08-25", "cash_dividend", None, 0.5)])
    run_all()
    total = bars("TSLA", "2022-08-23", "2022-08-25", adjust="total", database_url=database_url)
    assert _close(total, "TSLA", date(2022, 8, 24)) == pytest.approx(891.29 / 3 * (1 - 1.5 / 891.29), rel=REL)
    with connect(database_url) as conn:
        assert conn.execute("select count(*) from quality.quarantine").fetchone() == (0,)
