"""A range backfill launched over Dagster's GraphQL API exactly as the UI does, run by `dagster dev`'s daemon.

`dagster dev` (webserver + daemon) runs as a subprocess against the test database and broker with the
repository's dagster.yaml; the backfill must become one run for the whole range (single-run backfill
policy), land its rows in md.bars_1d and its events on md.bars.1d.v1, and a second launch of the same
range must change nothing but the run ids.
"""

from __future__ import annotations

import json
from typing import Any

import polars as pl

from mdpipeline.distribute.subscriber import read_topic
from mdpipeline.distribute.topics import BARS_1D
from mdpipeline.storage.bars import read_bars_1d
from mdpipeline.storage.database import connect
from mdpipeline_tests.ui_helpers import (
    PROVIDER,
    UI_END,
    UI_START,
    DagsterDev,
    asset_paths,
    launch_backfill,
    session_keys,
    wait_for_backfill,
)

pytest_plugins = ["mdpipeline_tests.ui_helpers"]

SYMBOLS = 6  # the synthetic provider serves six instruments


def _only_run(backfill: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """The backfill's single run: its id and tags."""
    assert backfill["status"] == "COMPLETED_SUCCESS", backfill
    (run,) = backfill["runs"]  # single-run backfill policy: one run for the whole range
    assert run["status"] == "SUCCESS", run
    return run["runId"], {t["key"]: t["value"] for t in run["tags"]}


def _stored(database_url: str) -> tuple[pl.DataFrame, int, list[tuple]]:
    with connect(database_url) as conn:
        bars = read_bars_1d(conn, start=UI_START, end=UI_END, provider=PROVIDER)
        payloads = conn.execute("select count(*) from raw.payloads where provider = %s", (PROVIDER,)).fetchone()
        publications = conn.execute(
            "select run_id, partition_start, partition_end, messages from ops.publications where provider = %s "
            "order by publication_id", (PROVIDER,)).fetchall()
    assert payloads is not None
    return bars, int(payloads[0]), publications


def test_range_backfill_from_the_ui_runs_once_and_is_idempotent(
    dagster_ui: DagsterDev, ui_backfill: dict[str, Any], ui_database_url: str, kafka_bootstrap: str
) -> None:
    keys = session_keys()
    rows = SYMBOLS * len(keys)
    first_run, tags = _only_run(ui_backfill)
    assert ui_backfill["isAssetBackfill"]
    assert ui_backfill["numPartitions"] == len(keys)
    assert tags["dagster/backfill"] == ui_backfill["id"]
    assert tags["dagster/from_ui"] == "true"
    assert (tags["dagster/asset_partition_range_start"], tags["dagster/asset_partition_range_end"]) == (
        keys[0], keys[-1])
    assert "dagster/priority" not in tags  # backfills from the UI keep the default priority 0

    before, payloads_before, publications = _stored(ui_database_url)
    assert before.height == rows
    assert before.select("instrument_id", "session_date").is_unique().all()
    assert [d.isoformat() for d in before["session_date"].unique().sort()] == keys
    assert set(before["run_id"]) == {first_run}
    assert payloads_before == len(keys)
    assert publications == [(first_run, UI_START, UI_END, rows)]

    # The same range again, launched the same way: replaces, never duplicates.
    second = wait_for_backfill(dagster_ui, launch_backfill(dagster_ui, asset_paths(), keys))
    second_run, _ = _only_run(second)
    assert second_run != first_run
    after, payloads_after, publications = _stored(ui_database_url)
    assert after.height == rows
    assert after.select("instrument_id", "session_date").is_unique().all()
    prices = ["instrument_id", "session_date", "open", "high", "low", "close", "volume"]
    assert after.select(prices).equals(before.select(prices))
    assert set(after["run_id"]) == {first_run}  # unchanged bars are not rewritten: they keep the run that stored them
    assert payloads_after == payloads_before  # identical payload bytes are not stored twice
    assert [p[0] for p in publications] == [first_run, second_run]

    # Both runs published every bar, broker-confirmed, with lineage headers; same bars, same event ids.
    by_run: dict[str, list[dict]] = {first_run: [], second_run: []}
    for event in read_topic(kafka_bootstrap, BARS_1D.name):
        run_id = event.headers.get("mdp-run-id", "")
        if run_id in by_run:
            assert event.headers["mdp-partition-start"] == keys[0]
            assert event.headers["mdp-partition-end"] == keys[-1]
            assert event.headers["mdp-provider"] == PROVIDER
            value = json.loads(event.value)
            assert event.key == str(value["data"]["instrument_id"])
            by_run[run_id].append(value)
    assert len(by_run[first_run]) == len(by_run[second_run]) == rows
    first_ids = {v["event_id"] for v in by_run[first_run]}
    assert len(first_ids) == rows
    assert first_ids == {v["event_id"] for v in by_run[second_run]}
