"""What each provider offers, known without building it (no credentials needed at definition time)."""

from __future__ import annotations

import importlib
import inspect

_MODULES = {"file": "files"}


def datasets_of(name: str) -> tuple[str, ...]:
    """Datasets provider `name` serves, read from its class's `datasets` attribute."""
    module = importlib.import_module(f"mdpipeline.providers.{_MODULES.get(name, name)}")
    for _, cls in inspect.getmembers(module, inspect.isclass):
        if getattr(cls, "name", None) == name and isinstance(getattr(cls, "datasets", None), tuple):
            return cls.datasets
    raise LookupError(f"no provider class named {name!r} in {module.__name__}")
