"""What one read-API request may ask for, and how long it may take (configurable by environment).

| variable | default | limits |
|---|---|---|
| `MDP_SERVE_MAX_SYMBOLS` | 100 | symbols per request |
| `MDP_SERVE_MAX_DAYS` | 3660 | days between start and end (inclusive) |
| `MDP_SERVE_MAX_ROWS` | 500000 | rows in one answer (more: 400, narrow the request) |
| `MDP_SERVE_STATEMENT_TIMEOUT` | 30 | seconds one query may run (then 503) |
| `MDP_SERVE_POOL_SIZE` | 8 | database connections shared by all requests |
| `MDP_SERVE_POOL_TIMEOUT` | 10 | seconds a request waits for a free connection (then 503) |
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from mdpipeline.env_numbers import env_number


@dataclass(frozen=True)
class ApiLimits:
    """Per-request limits and the database pool of the read API."""

    max_symbols: int = 100
    max_days: int = 3660
    max_rows: int = 500_000
    statement_timeout: float = 30.0
    pool_size: int = 8
    pool_timeout: float = 10.0

    @classmethod
    def from_env(cls, **overrides: float) -> ApiLimits:
        """Defaults, then MDP_SERVE_<NAME> from the environment, then `overrides`."""
        values: dict[str, float] = {}
        for f in fields(cls):
            number = env_number(f"MDP_SERVE_{f.name.upper()}")
            if number is not None:
                values[f.name] = int(number) if f.type == "int" else number
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]
