"""Quality-metrics events on `md.quality.v1`: one per (provider, dataset, session range).

Key = the provider (the metrics are about a provider's partition, not one instrument, so all of a
provider's quality events stay in one partition, in the order they were produced). The value has
the same envelope as every md.* topic (docs/events.md) with `schema` = `mdpipeline.quality`; its
`event_id` hashes topic, key and the exact `data` text, and `data` is serialized with sorted keys,
so the same metrics always give the same id.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

import polars as pl

from mdpipeline.distribute.events import event_ids
from mdpipeline.distribute.topics import QUALITY

QUALITY_SCHEMA = "mdpipeline.quality"
QUALITY_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class QualityEvent:
    """One message: key, event_id and the JSON value."""

    key: str
    event_id: str
    value: str


def quality_event(provider: str, dataset: str, start: date, end: date, metrics: Mapping[str, Any]) -> QualityEvent:
    """The event announcing `metrics` (JSON-safe, see `quality.metrics.json_safe`) of one partition range.

    Raises ValueError for NaN or infinite numbers: JSON has neither, and they are never rounded away.
    """
    data = {"provider": provider, "dataset": dataset, "partition_start": start.isoformat(),
            "partition_end": end.isoformat(), "metrics": dict(metrics)}
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
    event_id = str(event_ids(QUALITY.name, pl.Series([provider]), pl.Series([text]))[0])
    value = (f'{{"event_id":"{event_id}","schema":"{QUALITY_SCHEMA}","schema_version":{QUALITY_SCHEMA_VERSION},'
             f'"data":{text}}}')
    return QualityEvent(key=provider, event_id=event_id, value=value)
