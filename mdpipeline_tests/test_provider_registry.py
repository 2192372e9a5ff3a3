"""The provider registry: every provider module's SPEC is listed, and what the rest of the pipeline reads
from it (names, datasets, base-URL variables, feeds, gap repairers, option whitelists) holds."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest

import mdpipeline.providers
from mdpipeline.providers.base import ProviderError
from mdpipeline.providers.registry import PROVIDERS, SPECS, STREAM_PROVIDERS, build_provider, spec
from mdpipeline.providers.spec import ProviderSpec
from mdpipeline.settings import DEFAULT_FILES_DIR, DEFAULT_UNIVERSE, Settings
from mdpipeline.universe import ProviderSetup, load_universe


def test_every_module_declaring_a_spec_is_listed() -> None:
    declared = {}
    for info in pkgutil.iter_modules(mdpipeline.providers.__path__):
        module = importlib.import_module(f"mdpipeline.providers.{info.name}")
        if isinstance(getattr(module, "SPEC", None), ProviderSpec):
            declared[module.SPEC.name] = module.SPEC
    assert declared == SPECS
    assert PROVIDERS == ("alphavantage", "finnhub", "iexcloud", "ibkr", "alpaca", "polygon", "file", "synthetic")


def test_base_url_variables_are_read_for_every_network_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    network = [s for s in SPECS.values() if s.network]
    assert {s.name for s in network} == {"alphavantage", "finnhub", "iexcloud", "ibkr", "alpaca", "polygon"}
    for entry in network:
        monkeypatch.setenv(entry.base_url_env, f"http://127.0.0.1:9/{entry.name}")
    assert SPECS["iexcloud"].base_url_env == "MDP_IEXCLOUD_BASE_URL"
    assert SPECS["file"].base_url_env is None
    monkeypatch.chdir(Path(__file__).parent)  # no .env here
    assert Settings.from_env().base_urls == {s.name: f"http://127.0.0.1:9/{s.name}" for s in network}


def test_stream_feeds_and_gap_repairers_resolve() -> None:
    assert STREAM_PROVIDERS == ("alpaca", "finnhub", "synthetic")
    assert SPECS["alpaca"].feed_class().__name__ == "AlpacaFeed"
    assert SPECS["finnhub"].feed_class().__name__ == "FinnhubFeed"
    assert SPECS["synthetic"].feed_class() is None  # lands frames from its own generator
    assert SPECS["alpaca"].repairer_class().__name__ == "AlpacaTrades"
    assert SPECS["synthetic"].repairer_class().from_env(options={"seed": 11}).seed == 11
    assert SPECS["finnhub"].repairer_class() is None
    assert "free tier" in (SPECS["finnhub"].unrepairable or "")
    assert {s.stream_frames for s in SPECS.values() if s.streams} == {"alpaca", "finnhub"}


def test_credentials_and_datasets_are_declared() -> None:
    assert SPECS["alpaca"].credentials == ("ALPACA_API_KEY_ID", "ALPACA_API_SECRET_KEY")
    assert SPECS["ibkr"].credentials == ()
    assert SPECS["ibkr"].datasets == ("bars_1d", "bars_1m")
    assert spec("polygon").datasets == ("bars_1d", "bars_1m", "corporate_actions")
    with pytest.raises(ProviderError, match=r"unknown provider 'bloomberg' \(known: alphavantage, finnhub"):
        spec("bloomberg")


@pytest.mark.parametrize("name", PROVIDERS)
def test_every_adapter_refuses_unknown_options(name: str, tmp_path: Path) -> None:
    settings = Settings("", "", DEFAULT_UNIVERSE, DEFAULT_FILES_DIR, base_urls={name: "http://127.0.0.1:9"})
    setup = ProviderSetup(name, True, ("AAPL",), {"typo_option": 1})
    with pytest.raises(ProviderError, match=rf"{name}: unknown option\(s\) typo_option \(known: "):
        SPECS[name].build(setup, settings, "XNYS")


def test_build_provider_builds_the_enabled_providers_of_the_universe() -> None:
    universe = load_universe(DEFAULT_UNIVERSE)
    settings = Settings("", "", DEFAULT_UNIVERSE, DEFAULT_FILES_DIR)
    for name, setup in universe.providers.items():
        if setup.enabled:
            provider = build_provider(name, universe, settings)
            assert (provider.name, provider.datasets) == (name, SPECS[name].datasets)
