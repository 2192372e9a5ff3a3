"""Row counts of each layer over a session range, for run summaries (`mdpipeline demo`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import psycopg

# label -> count query over a session range
_RANGE_COUNTS: dict[str, str] = {
    "raw payloads": "select count(*) from raw.payloads where session_date between %s and %s",
    "quarantined rows": "select count(*) from quality.quarantine where session_date between %s and %s",
    "md.bars_1d rows": "select count(*) from md.bars_1d where session_date between %s and %s",
    "md.bars_1m rows": "select count(*) from md.bars_1m where session_date between %s and %s",
}
_TABLE_COUNTS: dict[str, str] = {  # label -> count query of a whole table
    "corporate actions (ref)": "select count(*) from ref.corporate_actions",
    "adjustment factors": "select count(*) from md.adjustment_factors",
}


def layer_counts(conn: psycopg.Connection, start: date, end: date) -> dict[str, int]:
    """Rows of each layer with sessions in [start, end] (reference tables: all rows)."""
    counts = {name: _count(conn, query, (start, end)) for name, query in _RANGE_COUNTS.items()}
    return {**counts, **{name: _count(conn, query, ()) for name, query in _TABLE_COUNTS.items()}}


def published_messages(conn: psycopg.Connection, topic: str, run_ids: Sequence[str]) -> int:
    """Messages the runs `run_ids` confirmed on `topic` (ops.publications)."""
    return _count(conn, "select coalesce(sum(messages), 0) from ops.publications where run_id = any(%s)"
                        " and topic = %s", (list(run_ids), topic))


def adjusted_bar_count(conn: psycopg.Connection) -> int:
    """Rows of the adjusted daily bars view, md.bars_1d_adjusted."""
    return _count(conn, "select count(*) from md.bars_1d_adjusted", ())


def _count(conn: psycopg.Connection, query: str, params: tuple[object, ...]) -> int:
    row = conn.execute(query, params).fetchone()
    return int(row[0]) if row else 0
