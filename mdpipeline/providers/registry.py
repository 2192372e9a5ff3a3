"""The provider registry: every provider's `ProviderSpec`, read from its module, in one ordered table.

The CLI, the Dagster layer, the stream collector, the stream parser and gap repair all ask this table
what providers exist and what they offer; a provider declares it once, as `SPEC` in its own module, and
is listed once below (the order is the order names are shown in).
"""

from __future__ import annotations

from mdpipeline.providers import alpaca, alphavantage, files, finnhub, ibkr, iexcloud, polygon, synthetic
from mdpipeline.providers.base import Provider, ProviderError
from mdpipeline.providers.limits import LimitsStore
from mdpipeline.providers.spec import ProviderSpec
from mdpipeline.settings import Settings
from mdpipeline.universe import Universe

_MODULES = (alphavantage, finnhub, iexcloud, ibkr, alpaca, polygon, files, synthetic)

SPECS: dict[str, ProviderSpec] = {m.SPEC.name: m.SPEC for m in _MODULES}
PROVIDERS: tuple[str, ...] = tuple(SPECS)  # provider names (command line, universe file, tables, topics)
STREAM_PROVIDERS: tuple[str, ...] = tuple(sorted(n for n, s in SPECS.items() if s.streams))  # real-time


def spec(name: str) -> ProviderSpec:
    """The spec of provider `name`; ProviderError naming the known ones when there is none."""
    try:
        return SPECS[name]
    except KeyError:
        raise ProviderError(f"unknown provider {name!r} (known: {', '.join(PROVIDERS)})") from None


def build_provider(name: str, universe: Universe, settings: Settings, *,
                   limits_store: LimitsStore | None = None) -> Provider:
    """The provider `name`, set up from the universe file; ProviderError when it cannot be used.

    `limits_store` holds its request limits for every process (the database's, handed down by the
    caller that has the database URL: `mdpipeline.storage.provider_limits.quota_store`); None counts
    them in this process."""
    entry = spec(name)
    try:
        setup = universe.provider(name)
    except KeyError as exc:
        raise ProviderError(str(exc.args[0])) from None
    if not setup.enabled:
        raise ProviderError(f"provider {name} is disabled in the universe file (enabled: false)")
    return entry.build(setup, settings, universe.exchange_calendar, limits_store=limits_store)


__all__ = ["PROVIDERS", "SPECS", "STREAM_PROVIDERS", "build_provider", "spec"]
