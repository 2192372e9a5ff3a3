"""Retention and compression as configuration: the storage config, TimescaleDB policies made from it, and the
plain layout's Dagster job dropping partitions by the same rules (both layouts, same expectations)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import polars as pl
import psycopg
import pytest
import yaml

from mdpipeline.contracts.frames import STORED_BARS_1M
from mdpipeline.orchestration.resources import DatabaseResource
from mdpipeline.orchestration.retention import storage_retention
from mdpipeline.sessions import calendar
from mdpipeline.storage.loader import replace_range
from mdpipeline.storage.migrations import migrate, storage_layout
from mdpipeline.storage.storage_config import (
    DEFAULT_STORAGE_CONFIG,
    StorageConfigError,
    load_storage_config,
    parse_storage_config,
)
from mdpipeline.universe import load_universe

TODAY = datetime.now(UTC).date()
OLD = date(TODAY.year - 3, TODAY.month, 1)  # a month wholly older than two years
RECENT = TODAY - timedelta(days=10)
CONFIG = {
    "tables": {"raw.payloads": {"retention": "2 years"}, "md.bars_1m": {"retention": "2 years"},
               "md.bars_1d": {"retention": None, "compress_after": "1 year"},
               "ops.outbox": {"retention": "7 days"}},
    "rollups": {"timezone": "America/New_York", "session_open": "09:30"},
}


def test_the_checked_in_config_parses_and_aligns_rollups_with_the_universe_calendar() -> None:
    config = load_storage_config(DEFAULT_STORAGE_CONFIG)
    assert config.policy("md.bars_1m").retention == "5 years"
    assert config.policy("md.bars_1m_revisions") == config.policy("md.bars_1m")  # revisions follow their table
    assert config.expiry() == {"raw.payloads": "5 years", "ops.outbox": "7 days"}
    exchange = calendar(load_universe(DEFAULT_STORAGE_CONFIG.parent / "universe.yaml").exchange_calendar)
    assert config.rollups.timezone == str(exchange.tz)
    assert config.rollups.session_open == exchange.open_times[-1][1] == time(9, 30)


@pytest.mark.parametrize(("doc", "error"), [
    ({"tables": {"md.bars_2m": {"retention": "1 day"}}}, "unknown table 'md.bars_2m'"),
    ({"tables": {"md.ticks": {"retention": "forever"}}}, "'forever' is not an interval"),
    ({"tables": {"raw.payloads": {"compress_after": "7 days"}}}, "only md.bars_1d, md.bars_1m, md.ticks"),
    ({"tables": {"md.ticks": {"retain": "7 days"}}}, "unknown keys"),
    ({"rollups": {"timezone": "Mars/Olympus"}}, "unknown time zone"),
])
def test_bad_storage_configs_are_refused(doc: dict, error: str) -> None:
    with pytest.raises(StorageConfigError, match=error):
        parse_storage_config(doc)


def _minute(day: date, close: float, learnt: datetime) -> pl.DataFrame:
    ts = datetime.combine(day, time(14, 30), tzinfo=UTC)
    return pl.DataFrame({
        "instrument_id": 1, "symbol": "AAPL", "session_date": day, "provider": "file", "open": 1.0, "high": 2.0,
        "low": 0.5, "close": close, "volume": 10.0, "vwap": None, "trades": None, "ts": ts, "raw_payload_id": None,
        "run_id": "r", "ingested_at": learnt,
    }).select([pl.col(c).cast(t) for c, t in STORED_BARS_1M.items()])


def _fill(conn: psycopg.Connection) -> None:
    """Minute bars (one corrected, so it has a revision), raw payloads and outbox rows, old and recent."""
    now = datetime.now(UTC)
    for day in (OLD, RECENT):
        replace_range(conn, "md.bars_1m", _minute(day, 1.5, now - timedelta(hours=2)), provider="file",
                      start=day, end=day)
        replace_range(conn, "md.bars_1m", _minute(day, 1.6, now - timedelta(hours=1)), provider="file",
                      start=day, end=day)
    with conn.transaction():
        for day in (OLD, RECENT):
            conn.execute("insert into raw.payloads (provider, dataset, session_date, session_end, request_key,"
                         " endpoint, params, status, content_type, body, sha256, fetched_at, first_run_id, last_run_id,"
                         " body_size) values ('file', 'bars_1m', %s, %s, %s, 'e', '{}', 200, 'text/csv', '', %s, now(),"
                         " 'r', 'r', 0)", (day, day, f"k{day}", f"h{day}"))
        for n, (key, published) in enumerate((("old", now - timedelta(days=30)), ("new", now - timedelta(days=1)))):
            headers = conn.execute("insert into ops.outbox_headers (headers) values (%s) returning headers_id",
                                   (f'{{"mdp-run-id": "{key}"}}',)).fetchone()
            conn.execute("insert into ops.outbox_sent (outbox_id, topic, key, event_id, headers_id, provider,"
                         " session_date, created_at, published_at) values (%s, 't', %s, %s, %s, 'file', %s, %s, %s)",
                         (900_000 + n, key, key, headers[0], OLD, now - timedelta(days=30), published))
        conn.execute("insert into ops.outbox (topic, key, event_id, value, headers, provider, session_date, created_at)"
                     " values ('t', 'pending', 'pending', '{}', '{}', 'file', %s, %s)", (OLD, now - timedelta(days=30)))


def _left(conn: psycopg.Connection) -> dict[str, list]:
    def one(query: str) -> list:
        return [r[0] for r in conn.execute(query).fetchall()]
    return {"bars": one("select session_date from md.bars_1m order by 1"),
            "revisions": one("select session_date from md.bars_1m_revisions order by 1"),
            "payloads": one("select session_date from raw.payloads order by 1"),
            "outbox": one("select key from ops.outbox_events order by 1"),
            "header sets": one("select headers ->> 'mdp-run-id' from ops.outbox_headers order by 1")}


@pytest.mark.both_layouts
def test_retention_removes_what_the_config_says_on_either_layout(
        conn: psycopg.Connection, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "storage.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    monkeypatch.setenv("MDP_STORAGE_CONFIG", str(path))
    migrate(conn)  # applies the file: on TimescaleDB its policies, on plain PostgreSQL nothing to schedule
    _fill(conn)
    assert _left(conn) == {"bars": [OLD, RECENT], "revisions": [OLD, RECENT], "payloads": [OLD, RECENT],
                           "outbox": ["new", "old", "pending"], "header sets": ["new", "old"]}
    assert conn.execute("select key, headers ->> 'mdp-run-id' from ops.outbox_events where key <> 'pending'"
                        " order by 1").fetchall() == [("new", "new"), ("old", "old")]
    result = storage_retention.execute_in_process(resources={"db": DatabaseResource(url=database_url)})
    assert result.success
    dropped = result.output_for_node("apply_retention")
    if storage_layout(conn) == "timescaledb":
        assert dropped == 0  # the job leaves TimescaleDB to its own policies ...
        assert len(_left(conn)["bars"]) == 2
        jobs = conn.execute("select job_id from timescaledb_information.jobs where proc_name in"
                            " ('policy_retention', 'expire_rows') order by job_id").fetchall()
        assert len(jobs) == 6  # md.bars_1m, its revisions, the three roll-ups, the expiry job
        for (job,) in jobs:  # ... which its scheduler runs; here, now
            conn.execute("call run_job(%s)", (job,))
    else:
        assert dropped == 2  # the old month's partition of md.bars_1m and of its revisions
    # The expired event's header set goes with it; the remaining event's stays.
    assert _left(conn) == {"bars": [RECENT], "revisions": [RECENT], "payloads": [RECENT], "outbox": ["new", "pending"],
                           "header sets": ["new"]}


@pytest.mark.timescaledb
def test_migrate_makes_the_policies_match_the_config(conn: psycopg.Connection, tmp_path: Path) -> None:
    def policies() -> dict[tuple[str, str], tuple[int, str | None]]:
        rows = conn.execute("select hypertable_name, proc_name, job_id,"
                            " coalesce(config ->> 'drop_after', config ->> 'compress_after')"
                            " from timescaledb_information.jobs where proc_name in"
                            " ('policy_retention', 'policy_compression')").fetchall()
        return {(r[0], r[1]): (r[2], r[3]) for r in rows}

    dims = conn.execute("select hypertable_name, column_name, time_interval::text"
                        " from timescaledb_information.dimensions where hypertable_schema = 'md' order by 1").fetchall()
    assert dims == [("bars_1d", "session_date", "360 days"), ("bars_1d_revisions", "session_date", "360 days"),
                    ("bars_1m", "ts", "7 days"), ("bars_1m_revisions", "ts", "30 days"),
                    ("quotes", "session_date", "1 day"), ("ticks", "session_date", "1 day"),
                    ("ticks_revisions", "session_date", "1 day")]
    checked_in = policies()
    assert {k: v[1] for k, v in checked_in.items()} == {
        ("bars_1d", "policy_compression"): "1 year", ("bars_1m", "policy_compression"): "30 days",
        ("bars_1m", "policy_retention"): "5 years", ("bars_1m_revisions", "policy_retention"): "5 years",
        ("ticks", "policy_compression"): "7 days", ("ticks", "policy_retention"): "90 days",
        ("ticks_revisions", "policy_retention"): "90 days",
        ("quotes", "policy_compression"): "3 days", ("quotes", "policy_retention"): "30 days",
        **{(view, "policy_retention"): "5 years" for view in ("bars_5m", "bars_15m", "bars_1h")}}  # follow 1m
    segments = conn.execute("select segmentby, orderby from timescaledb_information.hypertable_compression_settings"
                            " where hypertable = 'md.bars_1m'::regclass").fetchone()
    assert segments == ("instrument_id,provider", "ts DESC")

    path = tmp_path / "storage.yaml"
    path.write_text(yaml.safe_dump(CONFIG))  # bars_1m: 2 years, no compression; ticks: no policies at all
    migrate(conn, load_storage_config(path))
    changed = policies()
    assert {k: v[1] for k, v in changed.items()} == {
        ("bars_1d", "policy_compression"): "1 year", ("bars_1m", "policy_retention"): "2 years",
        ("bars_1m_revisions", "policy_retention"): "2 years",
        **{(view, "policy_retention"): "2 years" for view in ("bars_5m", "bars_15m", "bars_1h")}}
    assert changed[("bars_1d", "policy_compression")][0] == checked_in[("bars_1d", "policy_compression")][0]  # kept
    migrate(conn, load_storage_config(path))
    assert policies() == changed  # nothing to do the second time
