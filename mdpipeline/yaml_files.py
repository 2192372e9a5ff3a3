"""Reading the project's YAML files (universe, quality thresholds, storage policies)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

# libyaml's parser when PyYAML was built with it (the wheels are): the same objects as yaml.safe_load,
# ten times faster, which matters for a universe of hundreds of instruments read several times a run.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_yaml(path: Path) -> Any:
    """The document in the YAML file at `path`, loaded safely (plain data only)."""
    return yaml.load(Path(path).read_text(), Loader=_LOADER)
