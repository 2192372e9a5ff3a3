"""Row-level lineage after a real pipeline run: row -> raw payload -> run -> quarantine -> event on the topic."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from psycopg import sql

from mdpipeline.distribute.subscriber import Event
from mdpipeline.distribute.topics import BARS_1D
from mdpipeline.lineage import bar_lineage, describe
from mdpipeline.orchestration.assembly import build_definitions
from mdpipeline.orchestration.runner import materialize_range
from mdpipeline.storage.database import connect
from mdpipeline.storage.raw_store import decompress
from mdpipeline_tests.pipeline_helpers import events_of_run, settings_for, universe_with

START, END = date(2024, 6, 10), date(2024, 6, 12)
DAY = date(2024, 6, 11)
CLI = str(Path(sys.executable).parent / "mdpipeline")


@dataclass(frozen=True)
class Ran:
    """One synthetic pipeline run over START..END, with AAPL's bar of DAY broken (quarantined)."""

    database_url: str
    bootstrap: str
    run_id: str
    events: list[Event]


@pytest.fixture(scope="module")
def ran(pg_server_url: str, template_db: str, kafka_bootstrap: str,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ran]:
    tmp = tmp_path_factory.mktemp("lineage")
    name = f"lin_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {} template {}").format(sql.Identifier(name),
                                                                       sql.Identifier(template_db)))
    url = pg_server_url.rsplit("/", 1)[0] + "/" + name
    os.environ["MDP_FRAMES_DIR"] = str(tmp / "frames")
    try:
        universe = universe_with(tmp, anomalies=[{"kind": "broken_ohlc", "symbol": "AAPL", "date": DAY.isoformat()}])
        defs = build_definitions(settings_for(url, kafka_bootstrap, universe=universe))
        result = materialize_range(defs, START, END, providers=["synthetic"], instance=dg.DagsterInstance.ephemeral())
        assert result.success
        yield Ran(url, kafka_bootstrap, result.run_id, events_of_run(kafka_bootstrap, BARS_1D.name, result.run_id))
    finally:
        os.environ.pop("MDP_FRAMES_DIR", None)
        with psycopg.connect(pg_server_url, autocommit=True) as admin:
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


def _on_topic(ran: Ran, symbol: str, day: date) -> tuple[Event, dict]:
    """The message of the run that carries (symbol, day)."""
    found = [(e, json.loads(e.value)) for e in ran.events]
    matches = [(e, v) for e, v in found
               if v["data"]["symbol"] == symbol and v["data"]["session_date"] == day.isoformat()]
    assert len(matches) == 1, matches
    return matches[0]


def test_lineage_walks_from_the_row_to_its_payload_run_and_event(ran: Ran) -> None:
    with connect(ran.database_url) as conn:
        (nvda,) = bar_lineage(conn, "nvda", DAY, "synthetic")
        stored = conn.execute(
            "select payload_id, sha256, body, compression, endpoint, params, first_run_id from raw.payloads p"
            " join md.bars_1d b on b.raw_payload_id = p.payload_id"
            " where b.symbol = 'NVDA' and b.session_date = %s and b.provider = 'synthetic'", (DAY,)).fetchone()
    assert stored is not None
    payload_id, sha256, stored_body, compression, endpoint, params, first_run = stored
    body = decompress(bytes(stored_body), compression)  # stored zstd-compressed, identified as sent
    assert compression == "zstd"

    assert nvda.row is not None
    assert (nvda.symbol, nvda.session_date, nvda.provider) == ("NVDA", DAY, "synthetic")
    assert nvda.run_id == ran.run_id  # the run that stored the row
    assert nvda.payload is not None
    assert nvda.payload.payload_id == payload_id == nvda.row["raw_payload_id"]
    assert nvda.payload.sha256 == sha256 == hashlib.sha256(body).hexdigest()
    assert (nvda.payload.endpoint, nvda.payload.params, nvda.payload.bytes) == (endpoint, params, len(body))
    assert nvda.payload.first_run_id == first_run == ran.run_id
    assert nvda.quarantine == []

    # The event id recomputed from the stored row is the one the broker delivered, under the same key.
    message, value = _on_topic(ran, "NVDA", DAY)
    assert nvda.event is not None
    assert nvda.event.topic == BARS_1D.name
    assert nvda.event.key == message.key == str(nvda.row["instrument_id"])
    assert nvda.event.event_id == value["event_id"]
    assert nvda.event.value == message.value
    assert message.headers["mdp-run-id"] == ran.run_id
    assert [(p.run_id, p.partition_start, p.partition_end) for p in nvda.publications] == [(ran.run_id, START, END)]
    assert all(o.published_at is not None for o in nvda.outbox)

    text = "\n".join(describe(nvda))
    assert f"raw.payloads {payload_id}" in text
    assert nvda.event.event_id in text


def test_lineage_of_a_quarantined_bar_shows_why(ran: Ran) -> None:
    with connect(ran.database_url) as conn:
        (aapl,) = bar_lineage(conn, "AAPL", DAY)
    assert aapl.row is None  # held back, never stored or published
    assert aapl.event is None
    assert [q.check_name for q in aapl.quarantine] == ["ohlc_consistency"]
    assert aapl.quarantine[0].stage == "validate"
    assert aapl.quarantine[0].run_id == ran.run_id
    assert aapl.payload is not None  # the payload the bad row came from
    assert aapl.payload.session_date == DAY
    assert not [v for _, v in [(e, json.loads(e.value)) for e in ran.events]
                if v["data"]["symbol"] == "AAPL" and v["data"]["session_date"] == DAY.isoformat()]


def test_cli_lineage_prints_payload_and_event(ran: Ran) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MDP_")}
    env.update(MDP_DATABASE_URL=ran.database_url, MDP_KAFKA_BOOTSTRAP_SERVERS=ran.bootstrap)
    out = subprocess.run([CLI, "lineage", "NVDA", DAY.isoformat(), "--provider", "synthetic", "--format", "json",
                          "--scan-topic"], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    (doc,) = json.loads(out.stdout)
    message, value = _on_topic(ran, "NVDA", DAY)
    assert doc["run_id"] == ran.run_id
    assert doc["event"]["event_id"] == value["event_id"]
    assert [(d["partition"], d["offset"]) for d in doc["deliveries"]
            if d["headers"]["mdp-run-id"] == ran.run_id] == [(message.partition, message.offset)]
    with connect(ran.database_url) as conn:
        row = conn.execute("select sha256 from raw.payloads where payload_id = %s",
                           (doc["payload"]["payload_id"],)).fetchone()
    assert row is not None
    assert doc["payload"]["sha256"] == row[0]

    text = subprocess.run([CLI, "lineage", "NVDA", f"{DAY.isoformat()}T20:00:00+00:00"], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert text.returncode == 0, text.stderr
    assert value["event_id"] in text.stdout
    assert "raw.payloads" in text.stdout

    missing = subprocess.run([CLI, "lineage", "NVDA", "2024-06-08"], env=env, capture_output=True, text=True,
                             timeout=120, check=False)  # a Saturday: nothing stored
    assert missing.returncode == 1


def test_assets_carry_owners_kinds_schemas_and_column_lineage() -> None:
    graph = build_definitions(settings_for("", "")).resolve_asset_graph()
    for provider in ("synthetic", "file"):
        for layer in ("raw", "validated", "normalized", "md", "published"):
            node = graph.get(dg.AssetKey([layer, provider, "bars_1d"]))
            assert node.owners == ["team:market-data"]
            assert node.kinds
            assert node.description
            schema = node.metadata["dagster/column_schema"]
            wanted = {"key", "event_id"} if layer == "published" else {"session_date"}
            assert wanted <= {c.name for c in schema.columns}
            if layer == "raw":
                assert node.metadata["dagster/table_name"] == "raw.payloads"
                continue
            lineage = node.metadata["dagster/column_lineage"]
            upstream = {dep for deps in lineage.deps_by_column.values() for dep in deps}
            assert {d.asset_key for d in upstream} <= set(node.parent_keys)  # only real upstream assets
            assert set(lineage.deps_by_column) <= {c.name for c in schema.columns}
    md = graph.get(dg.AssetKey(["md", "synthetic", "bars_1d"]))
    assert md.metadata["dagster/table_name"] == "md.bars_1d"
