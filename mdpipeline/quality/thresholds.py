"""Detector thresholds from the checked-in `config/quality.yaml`, per provider and dataset.

Resolution, later wins: `defaults`, then `datasets.<dataset>`, then `providers.<provider>.<dataset>`,
merged section by section (an override names only what it changes). Unknown sections or keys are
errors, so a typo cannot silently leave a default in force. `MDP_QUALITY_CONFIG` points elsewhere.

Besides thresholds, `on_quarantine` says what a partition with quarantined rows publishes:
`publish_valid` (the good rows go on) or `block` (the validated asset's blocking check fails, so
nothing of that range goes downstream).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from mdpipeline.yaml_files import read_yaml

DEFAULT_QUALITY_CONFIG = Path(__file__).resolve().parents[2] / "config" / "quality.yaml"
PUBLISH_VALID = "publish_valid"  # a partition with quarantined rows publishes its good rows
BLOCK = "block"  # ... or nothing: the validated asset's blocking `schema` check fails
ON_QUARANTINE = (PUBLISH_VALID, BLOCK)
_SCALARS = ("lookback_sessions", "on_quarantine")


@dataclass(frozen=True)
class CompletenessThresholds:
    """The completeness check passes at or above `min_pct` present bars."""

    min_pct: float = 100.0


@dataclass(frozen=True)
class StalenessThresholds:
    """Runs of >= `min_run` identical closes (and volume 0 with `require_zero_volume`) are stale."""

    min_run: int = 4
    require_zero_volume: bool = False


@dataclass(frozen=True)
class ReturnThresholds:
    """Log returns more than `k` robust sigmas from the median (scale at least `min_sigma`) and larger
    than `min_abs` in absolute value."""

    k: float = 8.0
    window: int | None = None
    min_periods: int = 5
    min_sigma: float = 0.0005
    min_abs: float = 0.0


@dataclass(frozen=True)
class GapThresholds:
    """Open vs previous close: more than `k` robust sigmas and more than `min_abs` (log move)."""

    k: float = 8.0
    min_abs: float = 0.02
    min_periods: int = 5
    min_sigma: float = 0.0005


@dataclass(frozen=True)
class VolumeThresholds:
    """Volume more than `k` times the rolling median of the previous `window` bars."""

    k: float = 10.0
    window: int = 20
    min_periods: int = 5


@dataclass(frozen=True)
class DivergenceThresholds:
    """Providers differing by more than `bps` on any of `columns`; `compare_with` None: all others."""

    bps: float = 50.0
    columns: tuple[str, ...] = ("open", "high", "low", "close")
    compare_with: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Thresholds:
    """Every detector's thresholds for one provider and dataset."""

    completeness: CompletenessThresholds = CompletenessThresholds()
    staleness: StalenessThresholds = StalenessThresholds()
    returns: ReturnThresholds = ReturnThresholds()
    gaps: GapThresholds = GapThresholds()
    volume: VolumeThresholds = VolumeThresholds()
    divergence: DivergenceThresholds = DivergenceThresholds()
    lookback_sessions: int = 60  # history read before the partition, so bands have data to learn from
    on_quarantine: str = PUBLISH_VALID  # what a partition with quarantined rows publishes (ON_QUARANTINE)


_SECTION_TYPES = {
    "completeness": CompletenessThresholds, "staleness": StalenessThresholds, "returns": ReturnThresholds,
    "gaps": GapThresholds, "volume": VolumeThresholds, "divergence": DivergenceThresholds,
}


def config_path() -> Path:
    """`MDP_QUALITY_CONFIG` when set, else the checked-in config/quality.yaml."""
    return Path(os.environ.get("MDP_QUALITY_CONFIG") or DEFAULT_QUALITY_CONFIG)


def load_thresholds(provider: str, dataset: str, path: Path | None = None) -> Thresholds:
    """The thresholds of `provider` and `dataset` (defaults, dataset overrides, provider overrides)."""
    source = path or config_path()
    doc = read_yaml(source) or {}
    unknown = set(doc) - {"defaults", "datasets", "providers"}
    if unknown:
        raise ValueError(f"{source}: unknown top-level keys {sorted(unknown)}")
    layers = [
        ("defaults", doc.get("defaults") or {}),
        (f"datasets.{dataset}", (doc.get("datasets") or {}).get(dataset) or {}),
        (f"providers.{provider}.{dataset}", ((doc.get("providers") or {}).get(provider) or {}).get(dataset) or {}),
    ]
    merged: dict[str, Any] = {}
    for where, layer in layers:
        for section, values in layer.items():
            if section == "lookback_sessions":
                merged[section] = int(values)
                continue
            if section == "on_quarantine":
                if values not in ON_QUARANTINE:
                    raise ValueError(f"{source}: {where}: on_quarantine must be one of {', '.join(ON_QUARANTINE)},"
                                     f" not {values!r}")
                merged[section] = values
                continue
            if section not in _SECTION_TYPES:
                raise ValueError(f"{source}: {where}: unknown section {section!r} "
                                 f"(one of {', '.join(sorted(_SECTION_TYPES))}, {', '.join(_SCALARS)})")
            merged.setdefault(section, {}).update(values or {})
    built: dict[str, Any] = {}
    for section, values in merged.items():
        if section in _SCALARS:
            built[section] = values
            continue
        cls = _SECTION_TYPES[section]
        allowed = {f.name for f in fields(cls)}
        bad = set(values) - allowed
        if bad:
            raise ValueError(f"{source}: section {section!r}: unknown keys {sorted(bad)} (allowed: {sorted(allowed)})")
        built[section] = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    return Thresholds(**built)


def on_quarantine(provider: str, dataset: str, path: Path | None = None) -> str:
    """What a partition of `provider`/`dataset` with quarantined rows publishes: `publish_valid` or `block`."""
    return load_thresholds(provider, dataset, path).on_quarantine
