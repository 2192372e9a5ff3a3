"""Runtime configuration, read from the environment (and a `.env` in the working directory).

The variable names are public contracts (see docs/configuration.md): changing one breaks deployments.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import load_dotenv

# MDP_<PROVIDER>_BASE_URL: a provider's base-URL override (proxies, gateways, tests). Which providers
# exist is the provider registry's business (`mdpipeline.providers.registry`), not this module's.
_BASE_URL_ENV = re.compile(r"MDP_([A-Z0-9]+)_BASE_URL")
DEFAULT_UNIVERSE = Path(__file__).resolve().parent.parent / "config" / "universe.yaml"
DEFAULT_FILES_DIR = Path(__file__).resolve().parent.parent / "samples" / "files"


def base_url_variable(provider: str) -> str:
    """The environment variable overriding the base URL of `provider` (e.g. MDP_ALPACA_BASE_URL)."""
    return f"MDP_{provider.upper()}_BASE_URL"


def load_env(path: Path | None = None) -> None:
    """Load `.env` (by default from the working directory) without overriding set variables."""
    load_dotenv(path or Path.cwd() / ".env", override=False)


@dataclass(frozen=True)
class Settings:
    """What the pipeline needs to know about its surroundings."""

    database_url: str
    kafka_bootstrap_servers: str
    universe_path: Path
    files_dir: Path
    base_urls: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> Settings:
        """Build settings from environment variables, after reading `.env`."""
        load_env()
        return cls(
            database_url=os.environ.get("MDP_DATABASE_URL", ""),
            kafka_bootstrap_servers=os.environ.get("MDP_KAFKA_BOOTSTRAP_SERVERS", ""),
            universe_path=Path(os.environ.get("MDP_UNIVERSE", str(DEFAULT_UNIVERSE))),
            files_dir=Path(os.environ.get("MDP_FILES_DIR", str(DEFAULT_FILES_DIR))),
            base_urls={m[1].lower(): value for name, value in os.environ.items()
                       if value and (m := _BASE_URL_ENV.fullmatch(name))},
        )
