"""Per-partition quality metrics on md.quality.v1, through real Dagster runs, PostgreSQL and the broker.

Read only as docs/events.md describes the topic: the value validates against
docs/schemas/md.quality.v1.json, headers against headers.v1.json, key = provider, and event_id is
the documented hash of topic, key and the data text.
"""

from __future__ import annotations

import hashlib
import json
from datetime import date
from pathlib import Path

import dagster as dg
import jsonschema
import pytest

from mdpipeline.distribute.quality_events import quality_event
from mdpipeline.distribute.subscriber import Event
from mdpipeline.distribute.topics import QUALITY
from mdpipeline.orchestration.assembly import build_definitions
from mdpipeline.orchestration.runner import materialize_range
from mdpipeline.storage.database import connect
from mdpipeline_tests.pipeline_helpers import events_of_run, settings_for, universe_with

DOCS = Path(__file__).resolve().parent.parent / "docs" / "schemas"
START, END = date(2024, 6, 3), date(2024, 6, 14)
ANOMALIES = [
    {"kind": "broken_ohlc", "symbol": "AAPL", "date": "2024-06-05"},
    {"kind": "negative_price", "symbol": "MSFT", "date": "2024-06-06"},
]
QUALITY_ASSET = 'key:"published/synthetic/quality"'


@pytest.fixture(autouse=True)
def _frames_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MDP_FRAMES_DIR", str(tmp_path / "frames"))


def _validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((DOCS / f"{name}.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _documented(events: list[Event]) -> dict[str, dict]:
    """Each message checked against docs/ (schema, headers, key, event_id); values by dataset."""
    values, headers = _validator(QUALITY.name), _validator("headers.v1")
    out = {}
    for event in events:
        value = json.loads(event.value)
        values.validate(value)
        headers.validate(event.headers)
        data_text = event.value[event.value.index('"data":') + len('"data":'):-1]
        assert json.loads(data_text) == value["data"]
        expected = hashlib.sha256(f"{QUALITY.name}\x1f{event.key}\x1f{data_text}".encode()).hexdigest()[:32]
        assert value["event_id"] == expected == event.headers["mdp-event-id"]
        assert event.key == value["data"]["provider"] == event.headers["mdp-provider"]
        out[value["data"]["dataset"]] = value
    assert len(out) == len(events)  # one message per dataset
    return out


def test_quality_metrics_are_published_per_provider_and_dataset(database_url: str, kafka_bootstrap: str,
                                                                tmp_path: Path) -> None:
    universe = universe_with(tmp_path, anomalies=ANOMALIES)
    defs = build_definitions(settings_for(database_url, kafka_bootstrap, universe=universe))
    result = materialize_range(defs, START, END, providers=["synthetic"], instance=dg.DagsterInstance.ephemeral())
    assert result.success
    materialized = {e.asset_key.to_user_string(): e for e in result.get_asset_materialization_events()}
    assert materialized["published/synthetic/quality"].materialization.metadata["messages"].value == 2

    events = events_of_run(kafka_bootstrap, QUALITY.name, result.run_id)
    assert {e.headers["mdp-partition-start"] for e in events} == {"2024-06-03"}
    assert {e.headers["mdp-partition-end"] for e in events} == {"2024-06-14"}
    published = _documented(events)
    assert set(published) == {"bars_1d", "bars_1m"}  # the file provider was not in the run

    daily = published["bars_1d"]
    assert (daily["schema"], daily["schema_version"]) == ("mdpipeline.quality", 1)
    data = daily["data"]
    assert (data["provider"], data["partition_start"], data["partition_end"]) == ("synthetic", "2024-06-03",
                                                                                 "2024-06-14")
    metrics = data["metrics"]
    assert metrics["rows"] == 58
    assert (metrics["expected"], metrics["present"], metrics["missing"]) == (60, 58, 2)
    assert metrics["completeness_pct"] == pytest.approx(100 * 58 / 60, abs=1e-4)
    assert metrics["rows_quarantined"] == 2
    assert metrics["quarantined_by_check"] == {"ohlc_consistency": 1, "value_range,ohlc_consistency": 1}
    assert metrics["flags_by_kind"] == {"missing": 2}
    assert metrics["info_by_kind"] == {"corporate_action": 1}  # NVDA's split, explained
    assert metrics["divergence"]["pairs_compared"] == 0  # config: synthetic is compared with nobody

    # The same numbers the quality_metrics check stored for the range (it reads the normalized frame).
    with connect(database_url) as conn:
        row = conn.execute("select metadata from quality.check_results where asset_key = %s and check_name ="
                           " 'quality_metrics' and partition_start = %s and partition_end = %s",
                           ("md/synthetic/bars_1d", START, END)).fetchone()
    assert row is not None
    assert {k: v for k, v in metrics.items() if k != "divergence"} == row[0]

    minute = published["bars_1m"]["data"]["metrics"]
    assert (minute["rows"], minute["expected"], minute["missing"]) == (6 * 10 * 390 - 2, 6 * 10 * 390, 2)
    assert minute["quarantined_by_check"] == {"ohlc_consistency": 1, "value_range,ohlc_consistency": 1}
    assert minute["divergence"]["threshold_bps"] == 25.0  # the bars_1m thresholds

    # Same stored data, same metrics, same event ids: a re-run of the asset alone is deduplicated.
    again = materialize_range(defs, START, END, providers=["synthetic"], select=QUALITY_ASSET,
                              instance=dg.DagsterInstance.ephemeral())
    assert again.success
    repeated = _documented(events_of_run(kafka_bootstrap, QUALITY.name, again.run_id))
    assert {d: v["event_id"] for d, v in repeated.items()} == {d: v["event_id"] for d, v in published.items()}

    # The metrics do not depend on the order the server returns bars in (they are read unsorted):
    # the same minute bars written back in a random physical order give the same event ids.
    with connect(database_url) as conn, conn.transaction():
        conn.execute("create temporary table shuffled on commit drop as select * from md.bars_1m order by random()")
        conn.execute("delete from md.bars_1m")
        conn.execute("insert into md.bars_1m select * from shuffled")
    reordered = materialize_range(defs, START, END, providers=["synthetic"], select=QUALITY_ASSET,
                                  instance=dg.DagsterInstance.ephemeral())
    assert reordered.success
    shuffled = _documented(events_of_run(kafka_bootstrap, QUALITY.name, reordered.run_id))
    assert {d: v["event_id"] for d, v in shuffled.items()} == {d: v["event_id"] for d, v in published.items()}

    # Changed metrics, a new id.
    with connect(database_url) as conn:
        conn.execute("delete from quality.quarantine where dataset = 'bars_1d' and symbol = 'AAPL'")
    changed = materialize_range(defs, START, END, providers=["synthetic"], select=QUALITY_ASSET,
                                instance=dg.DagsterInstance.ephemeral())
    after = _documented(events_of_run(kafka_bootstrap, QUALITY.name, changed.run_id))
    assert after["bars_1d"]["data"]["metrics"]["rows_quarantined"] == 1
    assert after["bars_1d"]["event_id"] != published["bars_1d"]["event_id"]
    assert after["bars_1m"]["event_id"] == published["bars_1m"]["event_id"]


def test_event_id_depends_only_on_content() -> None:
    metrics = {"rows": 3, "flags_by_kind": {"stale": 1, "missing": 2}}
    first = quality_event("file", "bars_1d", START, END, metrics)
    reordered = quality_event("file", "bars_1d", START, END, {"flags_by_kind": {"missing": 2, "stale": 1},
                                                             "rows": 3})
    assert first == reordered
    assert first.key == "file"
    assert quality_event("file", "bars_1d", START, END, {**metrics, "rows": 4}).event_id != first.event_id
    assert quality_event("synthetic", "bars_1d", START, END, metrics).event_id != first.event_id
    value = json.loads(first.value)
    assert list(value) == ["event_id", "schema", "schema_version", "data"]
    with pytest.raises(ValueError, match="JSON compliant"):
        quality_event("file", "bars_1d", START, END, {"rows": float("nan")})
