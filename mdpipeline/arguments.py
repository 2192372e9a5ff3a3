"""Command-line values checked against the universe file before anything runs.

A provider that is not enabled, or a symbol that no instrument ever held (or that the chosen
providers do not serve), would otherwise make a run that does nothing and exits 0. Each check
returns the problem as one sentence naming the values and what is available, or None.
"""

from __future__ import annotations

from collections.abc import Sequence

from mdpipeline.providers.registry import PROVIDERS
from mdpipeline.universe import Universe


def unknown_providers(universe: Universe, names: Sequence[str]) -> str | None:
    """Why `names` are not providers the universe enables (None when they all are)."""
    enabled = [n for n, setup in universe.providers.items() if setup.enabled]
    bad = [n for n in names if n not in enabled]
    if not bad:
        return None
    unknown = [n for n in bad if n not in PROVIDERS]
    disabled = [n for n in bad if n in PROVIDERS]
    parts = []
    if unknown:
        parts.append(f"unknown provider {', '.join(unknown)} (providers: {', '.join(PROVIDERS)})")
    if disabled:
        parts.append(f"provider {', '.join(disabled)} is not enabled in the universe file")
    return "; ".join(parts) + f"; enabled: {', '.join(enabled) or 'none'}"


def unknown_symbols(universe: Universe, symbols: Sequence[str], providers: Sequence[str] | None = None, *,
                    served: bool = True) -> str | None:
    """Why `symbols` are not held by any instrument, or (with `served`) not served by `providers`, or by
    any enabled provider when none are given (None when all are fine)."""
    known = set(universe.symbology["symbol"].to_list())
    missing = [s for s in symbols if s not in known]
    if missing:
        return (f"no instrument holds symbol {', '.join(missing)} in the universe file"
                f" (symbols: {_some(sorted(known))})")
    if not served:
        return None
    if providers:
        served = {s for p in providers if p in universe.providers for s in universe.providers[p].symbols}
        unserved = [s for s in symbols if s not in served]
        if unserved:
            return (f"symbol {', '.join(unserved)} is not served by {', '.join(providers)}"
                    f" (they serve: {_some(sorted(served))})")
    else:
        served = {s for setup in universe.providers.values() if setup.enabled for s in setup.symbols}
        unserved = [s for s in symbols if s not in served]
        if unserved:
            return f"no enabled provider serves symbol {', '.join(unserved)} (served: {_some(sorted(served))})"
    return None


def _some(names: list[str], limit: int = 20) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "") or "none"
