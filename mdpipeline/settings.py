"""Runtime configuration, read from the environment (and a `.env` in the working directory).

The variable names are public contracts (see docs/configuration.md): changing one breaks deployments.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import load_dotenv

PROVIDERS = ("alphavantage", "finnhub", "iexcloud", "ibkr", "alpaca", "polygon", "file", "synthetic")
_BASE_URL_ENV = {
    "alphavantage": "MDP_ALPHAVANTAGE_BASE_URL",
    "finnhub": "MDP_FINNHUB_BASE_URL",
    "iexcloud": "MDP_IEXCLOUD_BASE_URL",
    "ibkr": "MDP_IBKR_BASE_URL",
    "alpaca": "MDP_ALPACA_BASE_URL",
    "polygon": "MDP_POLYGON_BASE_URL",
}
DEFAULT_UNIVERSE = Path(__file__).resolve().parent.parent / "config" / "universe.yaml"
DEFAULT_FILES_DIR = Path(__file__).resolve().parent.parent / "samples" / "files"


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
            base_urls={p: os.environ[v] for p, v in _BASE_URL_ENV.items() if os.environ.get(v)},
        )
