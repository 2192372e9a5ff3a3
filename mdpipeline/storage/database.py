"""Connections to the market-data database."""

from __future__ import annotations

import psycopg


def connect(url: str, *, autocommit: bool = True) -> psycopg.Connection:
    """Open a connection in UTC; autocommit so that each `conn.transaction()` block is one transaction."""
    if not url:
        raise RuntimeError(
            "MDP_DATABASE_URL is not set: run `mdpipeline dev up` (writes .env) or export it"
        )
    return psycopg.connect(url, autocommit=autocommit, options="-c timezone=UTC")
