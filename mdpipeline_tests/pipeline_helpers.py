"""Helpers shared by the pipeline tests: settings for the test services, reading back events."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from mdpipeline.distribute.subscriber import Event, consume
from mdpipeline.settings import DEFAULT_FILES_DIR, DEFAULT_UNIVERSE, Settings


def settings_for(database_url: str, kafka_bootstrap: str, universe: Path = DEFAULT_UNIVERSE,
                  files_dir: Path = DEFAULT_FILES_DIR) -> Settings:
    """Settings pointing at the test services."""
    return Settings(database_url=database_url, kafka_bootstrap_servers=kafka_bootstrap,
                    universe_path=universe, files_dir=files_dir)


def universe_with(tmp_path: Path, **synthetic_options: object) -> Path:
    """A copy of the checked-in universe with extra synthetic-provider options (e.g. anomalies)."""
    doc = yaml.safe_load(DEFAULT_UNIVERSE.read_text())
    doc["providers"]["synthetic"].update(synthetic_options)
    path = tmp_path / "universe.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def events_of_run(bootstrap: str, topic: str, run_id: str) -> list[Event]:
    """Every message on `topic` whose lineage header names `run_id`."""
    return [e for e in consume(bootstrap, topic, from_beginning=True, idle_timeout=3.0)
            if e.headers.get("mdp-run-id") == run_id]


def event_values(events: list[Event]) -> list[dict]:
    """Parsed JSON values."""
    return [json.loads(e.value) for e in events]
