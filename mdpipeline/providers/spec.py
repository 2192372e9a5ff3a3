"""`ProviderSpec`: everything the rest of the pipeline knows about a provider, declared once, as `SPEC`, in
the provider's own module (read through `mdpipeline.providers.registry`).

Name and datasets are the adapter class's own attributes; the spec adds what is known without building
the adapter: the credential variables, the base-URL variable (network providers:
`MDP_<NAME>_BASE_URL`), and for real-time providers the websocket feed, the shape of its landed frames
and the REST source that repairs stream gaps. Feed and gap repairer live in `mdpipeline.stream`, which
sits above the providers: the spec names them as "module:attribute" and `feed()` / `gap_repairer()`
import them on demand, so the providers layer never imports the stream layer.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Protocol

from mdpipeline.providers.base import Provider
from mdpipeline.providers.limits import LimitsStore
from mdpipeline.settings import Settings, base_url_variable
from mdpipeline.universe import ProviderSetup


class Adapter(Protocol):
    """A provider class as the registry builds it."""

    name: str
    datasets: tuple[str, ...]

    @classmethod
    def from_settings(cls, setup: ProviderSetup, settings: Settings, calendar_name: str, *,
                      limits_store: LimitsStore | None = None) -> Provider:
        """The provider for `setup` in these surroundings; `limits_store` holds its request limits for
        every process (None: counted in this process)."""
        ...


@dataclass(frozen=True)
class ProviderSpec:
    """One provider's entry in the registry."""

    adapter: type[Adapter]
    credentials: tuple[str, ...] = ()  # environment variables read (only) when fetching
    network: bool = True  # fetched over HTTP: the base URL may be overridden by MDP_<NAME>_BASE_URL
    stream_feed: str | None = None  # "module:Class" of the websocket feed (`mdpipeline.stream.feeds`)
    stream_frames: str | None = None  # shape of landed frames the stream parser reads: "alpaca" | "finnhub"
    gap_repair: str | None = None  # "module:Class" of the REST trade history that repairs stream gaps
    unrepairable: str | None = None  # why stream gaps of this provider cannot be repaired (no gap_repair)

    @property
    def name(self) -> str:
        """The provider's name (CLI, universe file, tables, topics)."""
        return self.adapter.name

    @property
    def datasets(self) -> tuple[str, ...]:
        """The datasets the provider serves."""
        return self.adapter.datasets

    @property
    def base_url_env(self) -> str | None:
        """The variable overriding the base URL (network providers only)."""
        return base_url_variable(self.name) if self.network else None

    @property
    def streams(self) -> bool:
        """True when the provider lands real-time frames (`mdpipeline stream`)."""
        return self.stream_frames is not None

    def build(self, setup: ProviderSetup, settings: Settings, calendar_name: str, *,
              limits_store: LimitsStore | None = None) -> Provider:
        """The adapter for `setup` (request limits in `limits_store`, if given); ProviderError when its
        options are invalid."""
        return self.adapter.from_settings(setup, settings, calendar_name, limits_store=limits_store)

    def feed_class(self) -> Any | None:
        """The websocket feed class, built with `from_env(symbols, quotes=, bars=, url=)` (None: none)."""
        return _load(self.stream_feed)

    def repairer_class(self) -> Any | None:
        """The gap-repair source class, built with `from_env(base_url=, options=)` (None: none)."""
        return _load(self.gap_repair)


def _load(ref: str | None) -> Any | None:
    if ref is None:
        return None
    module, _, attribute = ref.partition(":")
    return getattr(importlib.import_module(module), attribute)


__all__ = ["Adapter", "ProviderSpec"]
