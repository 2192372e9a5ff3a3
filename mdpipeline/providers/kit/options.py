"""Universe options: every adapter names the options it understands and refuses the others."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mdpipeline.providers.base import ProviderError


def check_options(provider: str, options: Mapping[str, Any], known: frozenset[str]) -> None:
    """ProviderError naming the options of `provider` it does not understand (a typo would otherwise be
    ignored silently)."""
    unknown = sorted(set(options) - known)
    if unknown:
        shown = ", ".join(sorted(known)) or "none"
        raise ProviderError(f"{provider}: unknown option(s) {', '.join(unknown)} (known: {shown})")


__all__ = ["check_options"]
