"""Market-data providers: the contract (base), the implementations, and a registry by name.

The registry is the one place that turns a provider name (CLI, Dagster config) plus the universe
file and the settings into a ready `Provider`.
"""

from __future__ import annotations

from mdpipeline.providers.alpaca import AlpacaProvider
from mdpipeline.providers.alphavantage import AlphaVantageProvider
from mdpipeline.providers.base import DATASETS, STANDARD_COLUMNS, Provider, ProviderError, Query, RawPayload
from mdpipeline.providers.files import FileProvider
from mdpipeline.providers.finnhub import FinnhubProvider
from mdpipeline.providers.ibkr import IbkrProvider
from mdpipeline.providers.iexcloud import IexCloudProvider
from mdpipeline.providers.polygon import PolygonProvider
from mdpipeline.providers.synthetic import SyntheticProvider
from mdpipeline.settings import PROVIDERS, Settings
from mdpipeline.universe import Universe

IMPLEMENTED = ("synthetic", "file", "alphavantage", "finnhub", "iexcloud", "ibkr", "alpaca", "polygon")
# Network providers built from (setup, settings, calendar_name).
_NETWORK_PROVIDERS = {"ibkr": IbkrProvider, "alpaca": AlpacaProvider, "polygon": PolygonProvider,
                      "alphavantage": AlphaVantageProvider, "finnhub": FinnhubProvider,
                      "iexcloud": IexCloudProvider}


def build_provider(name: str, universe: Universe, settings: Settings) -> Provider:
    """The provider `name`, set up from the universe file; ProviderError when it cannot be used."""
    if name not in PROVIDERS:
        raise ProviderError(f"unknown provider {name!r} (known: {', '.join(PROVIDERS)})")
    if name not in IMPLEMENTED:
        raise ProviderError(f"provider {name} is not implemented yet")
    try:
        setup = universe.provider(name)
    except KeyError as exc:
        raise ProviderError(str(exc.args[0])) from None
    if not setup.enabled:
        raise ProviderError(f"provider {name} is disabled in the universe file (enabled: false)")
    if name == "synthetic":
        return SyntheticProvider(setup, calendar_name=universe.exchange_calendar)
    if name in _NETWORK_PROVIDERS:
        return _NETWORK_PROVIDERS[name](setup, settings, calendar_name=universe.exchange_calendar)
    return FileProvider(setup, settings.files_dir, calendar_name=universe.exchange_calendar)


__all__ = [
    "DATASETS",
    "IMPLEMENTED",
    "STANDARD_COLUMNS",
    "AlpacaProvider",
    "AlphaVantageProvider",
    "FileProvider",
    "FinnhubProvider",
    "IbkrProvider",
    "IexCloudProvider",
    "PolygonProvider",
    "Provider",
    "ProviderError",
    "Query",
    "RawPayload",
    "SyntheticProvider",
    "build_provider",
]
