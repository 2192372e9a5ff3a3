"""The checked-in storage configuration (`config/storage.yaml`): retention, compression and roll-ups.

Read by `mdpipeline migrate`, which applies it (`storage.policies`), and by the plain layout's
retention job. `MDP_STORAGE_CONFIG` points at another file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mdpipeline.yaml_files import read_yaml

DEFAULT_STORAGE_CONFIG = Path(__file__).resolve().parent.parent.parent / "config" / "storage.yaml"
STORAGE_CONFIG_ENV = "MDP_STORAGE_CONFIG"
# Tables with a retention setting; compression applies to the hypertables among them.
RETENTION_TABLES = ("raw.payloads", "md.bars_1d", "md.bars_1m", "md.ticks", "md.quotes", "ops.outbox")
COMPRESSIBLE = ("md.bars_1d", "md.bars_1m", "md.ticks", "md.quotes")
_INTERVAL = re.compile(r"^\s*\d+\s+(minute|hour|day|week|month|year)s?\s*$")


class StorageConfigError(ValueError):
    """The storage configuration is malformed."""


@dataclass(frozen=True)
class TablePolicy:
    """Retention and compression of one table (PostgreSQL interval texts; None: no policy)."""

    retention: str | None = None
    compress_after: str | None = None


@dataclass(frozen=True)
class RollupConfig:
    """How roll-up buckets align (the exchange's clock and session open) and how TimescaleDB refreshes them."""

    timezone: str = "America/New_York"
    session_open: time = time(9, 30)
    refresh_every: str = "15 minutes"
    refresh_lag: str = "1 hour"
    refresh_after_load: bool = True  # the store step refreshes the loaded range (else the policy catches up)


@dataclass(frozen=True)
class StorageConfig:
    """Storage policies per table, the expiry schedule and the roll-ups."""

    tables: dict[str, TablePolicy] = field(default_factory=dict)
    expire_every: str = "1 day"
    rollups: RollupConfig = field(default_factory=RollupConfig)

    def policy(self, table: str) -> TablePolicy:
        """The policy of `table`; revision tables follow the table they keep versions of."""
        return self.tables.get(table.removesuffix("_revisions"), TablePolicy())

    def expiry(self) -> dict[str, str]:
        """Retention of the tables expired row by row (`ops.expire_rows`): raw payloads, published outbox rows."""
        return {t: p.retention for t in ("raw.payloads", "ops.outbox")
                if (p := self.policy(t)).retention is not None}


def _interval(value: Any, where: str) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    if not _INTERVAL.match(text):
        raise StorageConfigError(f"{where}: {value!r} is not an interval such as '30 days' or '5 years'")
    return text


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise StorageConfigError(f"{where}: {value!r} is not true or false")
    return value


def parse_storage_config(doc: dict[str, Any]) -> StorageConfig:
    """A StorageConfig from the YAML document's mapping; rejects unknown tables and malformed intervals."""
    tables: dict[str, TablePolicy] = {}
    for table, given in (doc.get("tables") or {}).items():
        if table not in RETENTION_TABLES:
            raise StorageConfigError(f"tables: unknown table {table!r} (one of {', '.join(RETENTION_TABLES)})")
        entry = given or {}
        unknown = set(entry) - {"retention", "compress_after"}
        if unknown:
            raise StorageConfigError(f"tables.{table}: unknown keys {sorted(unknown)}")
        compress = _interval(entry.get("compress_after"), f"tables.{table}.compress_after")
        if compress is not None and table not in COMPRESSIBLE:
            raise StorageConfigError(f"tables.{table}: only {', '.join(COMPRESSIBLE)} are compressed")
        tables[table] = TablePolicy(_interval(entry.get("retention"), f"tables.{table}.retention"), compress)
    rollups = doc.get("rollups") or {}
    timezone = str(rollups.get("timezone", RollupConfig.timezone))
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise StorageConfigError(f"rollups.timezone: unknown time zone {timezone!r}") from None
    open_text = str(rollups.get("session_open", "09:30"))
    try:
        session_open = time.fromisoformat(open_text)
    except ValueError:
        raise StorageConfigError(f"rollups.session_open: {open_text!r} is not a time such as '09:30'") from None
    return StorageConfig(
        tables=tables,
        expire_every=_interval(doc.get("expire_every", "1 day"), "expire_every") or "1 day",
        rollups=RollupConfig(
            timezone=timezone, session_open=session_open,
            refresh_every=_interval(rollups.get("refresh_every", "15 minutes"), "rollups.refresh_every")
            or "15 minutes",
            refresh_lag=_interval(rollups.get("refresh_lag", "1 hour"), "rollups.refresh_lag") or "1 hour",
            refresh_after_load=_flag(rollups.get("refresh_after_load", True), "rollups.refresh_after_load")),
    )


def storage_config_path() -> Path:
    """`MDP_STORAGE_CONFIG`, else the checked-in `config/storage.yaml`."""
    return Path(os.environ.get(STORAGE_CONFIG_ENV) or DEFAULT_STORAGE_CONFIG)


def load_storage_config(path: Path | None = None) -> StorageConfig:
    """Read the storage configuration (a missing file means no retention or compression, default roll-ups)."""
    path = path or storage_config_path()
    if not path.exists():
        if path == DEFAULT_STORAGE_CONFIG:
            return StorageConfig()
        raise StorageConfigError(f"{path}: no such storage configuration ({STORAGE_CONFIG_ENV})")
    doc = read_yaml(path) or {}
    if not isinstance(doc, dict):
        raise StorageConfigError(f"{path}: expected a mapping")
    return parse_storage_config(doc)
