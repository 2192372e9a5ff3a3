"""What each provider offers, known without building it (no credentials needed at definition time)."""

from __future__ import annotations

from mdpipeline.providers.registry import spec


def datasets_of(name: str) -> tuple[str, ...]:
    """Datasets provider `name` serves (from the registry)."""
    return spec(name).datasets
