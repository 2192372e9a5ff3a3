"""Thresholds from the checked-in config, with dataset and provider overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mdpipeline.providers.registry import PROVIDERS
from mdpipeline.quality.thresholds import DEFAULT_QUALITY_CONFIG, Thresholds, load_thresholds


def write(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "quality.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_later_layers_override_only_the_keys_they_name(tmp_path: Path) -> None:
    path = write(tmp_path, {
        "defaults": {"returns": {"k": 7.0, "min_periods": 9}, "lookback_sessions": 30},
        "datasets": {"bars_1m": {"returns": {"k": 12.0}, "staleness": {"require_zero_volume": True}}},
        "providers": {"polygon": {"bars_1m": {"returns": {"window": 390}, "divergence": {"compare_with": ["x"]}}}},
    })
    polygon = load_thresholds("polygon", "bars_1m", path)
    assert (polygon.returns.k, polygon.returns.min_periods, polygon.returns.window) == (12.0, 9, 390)
    assert polygon.staleness.require_zero_volume
    assert polygon.divergence.compare_with == ("x",)
    assert polygon.lookback_sessions == 30
    alpaca_daily = load_thresholds("alpaca", "bars_1d", path)
    assert (alpaca_daily.returns.k, alpaca_daily.returns.window) == (7.0, None)
    assert alpaca_daily.staleness == Thresholds().staleness
    assert alpaca_daily.divergence.compare_with is None


@pytest.mark.parametrize(("doc", "message"), [
    ({"default": {}}, "unknown top-level keys"),
    ({"defaults": {"outliers": {"k": 3}}}, "unknown section 'outliers'"),
    ({"datasets": {"bars_1d": {"returns": {"kk": 3}}}}, r"unknown keys \['kk'\]"),
])
def test_typos_are_errors(tmp_path: Path, doc: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_thresholds("file", "bars_1d", write(tmp_path, doc))


def test_environment_points_at_another_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MDP_QUALITY_CONFIG", str(write(tmp_path, {"defaults": {"volume": {"k": 3.0}}})))
    assert load_thresholds("file", "bars_1d").volume.k == 3.0


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("dataset", ["bars_1d", "bars_1m"])
def test_the_checked_in_config_loads_for_every_provider(provider: str, dataset: str) -> None:
    t = load_thresholds(provider, dataset, DEFAULT_QUALITY_CONFIG)
    assert t.returns.k >= 8
    assert t.completeness.min_pct == 100.0
    if dataset == "bars_1m":
        assert t.staleness.require_zero_volume
    if provider == "synthetic" and dataset == "bars_1d":
        assert t.divergence.compare_with == ()  # random prices are compared with nobody
