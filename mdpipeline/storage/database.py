"""Connections to the market-data database, with limits so that nothing waits forever.

Every connection the project opens (`connect`, and the read API's pool through `connection_kwargs`)
sets these, in seconds, from the environment (0 switches one off):

- `MDP_PG_CONNECT_TIMEOUT` (10): establishing the connection (a server that does not answer);
- `MDP_PG_STATEMENT_TIMEOUT` (3600): one statement; generous, so a bulk COPY or a set-based reload of
  a large range fits;
- `MDP_PG_LOCK_TIMEOUT` (600): waiting for any lock: rows, DDL, the loader's advisory locks
  (overlapping loads wait up to that long for each other);
- `MDP_PG_IDLE_IN_TRANSACTION_TIMEOUT` (600): a transaction left open while the client does nothing:
  the server ends the session and releases its locks.

TCP keepalives (probe after 30 s idle, every 10 s, 3 probes) find a server that vanished without a
FIN within about a minute instead of the kernel's two hours. A statement over its limit fails with
`psycopg.errors.QueryCanceled`, a lock wait with `LockNotAvailable`; both roll their transaction back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from mdpipeline.env_numbers import env_number

ENV_PREFIX = "MDP_PG_"


@dataclass(frozen=True)
class Timeouts:
    """Seconds; None means no limit."""

    connect: float | None = 10.0
    statement: float | None = 3600.0
    lock: float | None = 600.0
    idle_in_transaction: float | None = 600.0

    @classmethod
    def from_env(cls, **overrides: float | None) -> Timeouts:
        """Defaults, then MDP_PG_<NAME> from the environment, then `overrides` (e.g. a shorter statement limit)."""
        values: dict[str, float | None] = {}
        for name, default in vars(cls()).items():
            seconds = env_number(f"{ENV_PREFIX}{name.upper()}_TIMEOUT", allow_zero=True)
            values[name] = default if seconds is None else (seconds or None)
        values.update(overrides)
        return cls(**values)

    def options(self) -> str:
        """The libpq `options` string setting the server-side limits (and UTC)."""
        settings = {"timezone": "UTC"}
        for name, value in (("statement_timeout", self.statement), ("lock_timeout", self.lock),
                            ("idle_in_transaction_session_timeout", self.idle_in_transaction)):
            settings[name] = str(round(value * 1000)) if value else "0"
        return " ".join(f"-c {k}={v}" for k, v in settings.items())


def connection_kwargs(timeouts: Timeouts | None = None, url: str = "") -> dict[str, Any]:
    """Keyword arguments of `psycopg.connect` (or a pool's `kwargs`) applying `timeouts` (default: from_env);
    `options` given in `url` are kept (ours come after, so they win on the same setting)."""
    limits = timeouts or Timeouts.from_env()
    given = conninfo_to_dict(url).get("options") if url else None
    options = f"{given} {limits.options()}" if given else limits.options()
    kwargs: dict[str, Any] = {"options": options, "keepalives": 1, "keepalives_idle": 30,
                              "keepalives_interval": 10, "keepalives_count": 3}
    if limits.connect:
        kwargs["connect_timeout"] = max(1, round(limits.connect))  # libpq takes whole seconds, at least 2 used
    return kwargs


def connect(url: str, *, autocommit: bool = True) -> psycopg.Connection:
    """Open a connection in UTC with the limits above; autocommit so that each `conn.transaction()` block
    is one transaction."""
    if not url:
        raise RuntimeError(
            "MDP_DATABASE_URL is not set: run `mdpipeline dev up` (writes .env) or export it"
        )
    return psycopg.connect(url, autocommit=autocommit, **connection_kwargs(url=url))
