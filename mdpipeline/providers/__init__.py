"""Market-data providers: the contract (base), the adapters (one module each, declaring a `SPEC`), the
adapter kit, the HTTP client, and the registry that turns a provider name (CLI, Dagster config) plus the
universe file and the settings into a ready `Provider`.
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
from mdpipeline.providers.registry import PROVIDERS, SPECS, build_provider
from mdpipeline.providers.synthetic import SyntheticProvider

__all__ = [
    "DATASETS",
    "PROVIDERS",
    "SPECS",
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
