"""`ref.corporate_actions` per provider with the time the pipeline learnt each action, and the factor table."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import polars as pl
import psycopg

from mdpipeline.contracts.frames import CANONICAL_CORPORATE_ACTIONS, FACTOR_COLUMNS, STORED_ACTIONS
from mdpipeline.contracts.sql import column_definitions
from mdpipeline.storage.binary_copy import copy_frame
from mdpipeline.storage.loader import LoadResult, ShrinkError
from mdpipeline.storage.reader import read_frame

_KEY = "instrument_id, ex_date, action, provider"


def replace_provider_actions(
    conn: psycopg.Connection, frame: pl.DataFrame, *, provider: str, start: date, end: date, run_id: str,
    symbols: Sequence[str] | None = None, allow_deletes: bool = False,
) -> LoadResult:
    """Make `provider`'s actions with ex_date in [start, end] (and `symbols`, when given) equal to `frame`.

    One transaction (a savepoint inside the caller's). An action whose values did not change keeps
    the time it was first learnt; a new or changed one is stamped now, which is what as-of reads
    filter on. A stored action missing from `frame` is deleted only with `allow_deletes` (else
    `ShrinkError`): a transient empty answer must not erase a split from the adjusted history.
    """
    cols = list(CANONICAL_CORPORATE_ACTIONS)
    scope = "provider = %s and ex_date between %s and %s" + (" and symbol = any(%s)" if symbols is not None else "")
    params: tuple[object, ...] = (provider, start, end, *((list(symbols),) if symbols is not None else ()))
    with conn.transaction():
        lock = f"mdpipeline.load:ref.corporate_actions:{provider}"
        conn.execute("select pg_advisory_xact_lock(hashtext(%s))", (lock,))
        conn.execute(f"create temporary table _actions ({column_definitions(CANONICAL_CORPORATE_ACTIONS)})"
                     " on commit drop")
        with conn.cursor() as cur:
            copy_frame(cur, "_actions", frame.select(cols))
        missing = f"{scope} and not exists (select 1 from _actions n where ({_KEY}) = (c.instrument_id, c.ex_date," \
                  " c.action, c.provider))"
        gone = conn.execute(f"select instrument_id, symbol, ex_date, action from ref.corporate_actions c"
                            f" where {missing} order by ex_date, symbol", params).fetchall()
        if gone and not allow_deletes:
            shown = ", ".join(f"{r[1]} {r[3]} {r[2]}" for r in gone[:10])
            raise ShrinkError(
                f"ref.corporate_actions: the new data of provider {provider} for {start}..{end} lacks {len(gone)}"
                f" stored actions ({shown}); nothing was changed. If the provider really withdrew them, re-run with"
                " deletions allowed (--allow-deletes, or the run tag mdpipeline/allow_deletes=true)")
        if gone:
            conn.execute(f"delete from ref.corporate_actions c where {missing}", params)
        written = conn.execute(
            f"""
            insert into ref.corporate_actions as c ({", ".join(cols)}, run_id, learned_at)
            select {", ".join(cols)}, %s, now() from _actions
            on conflict ({_KEY}) do update set
                symbol = excluded.symbol, ratio = excluded.ratio, amount = excluded.amount,
                currency = excluded.currency, raw_payload_id = excluded.raw_payload_id, run_id = excluded.run_id,
                learned_at = case
                    when (c.ratio, c.amount, c.currency) is not distinct from (excluded.ratio, excluded.amount,
                                                                            excluded.currency)
                    then c.learned_at else excluded.learned_at end
            returning instrument_id, ex_date, (xmax = 0), learned_at = now()
            """,
            (run_id,),
        ).fetchall()
    changed = pl.DataFrame([(r[0], r[1]) for r in written if r[3]] + [(r[0], r[2]) for r in gone],
                           schema={"instrument_id": pl.Int64, "session_date": pl.Date}, orient="row").unique()
    inserted = sum(1 for r in written if r[2])
    return LoadResult(rows=frame.height, inserted=inserted, updated=sum(1 for r in written if r[3] and not r[2]),
                      deleted=len(gone), first_load=False, changed=changed.sort("instrument_id", "session_date"))


def read_actions(conn: psycopg.Connection) -> pl.DataFrame:
    """Every stored corporate action of every provider."""
    return read_frame(
        conn, f"select {', '.join(STORED_ACTIONS)} from ref.corporate_actions order by instrument_id, ex_date",
        None, STORED_ACTIONS,
    )


def actions_by_symbol(conn: psycopg.Connection, start: date, end: date) -> pl.DataFrame:
    """Known corporate actions with ex-date in [start, end], by the symbol valid on the ex-date
    (whichever provider reported them, each action once)."""
    rows = conn.execute(
        "select distinct on (s.symbol, c.ex_date, c.action) s.symbol, c.ex_date, c.action, c.ratio, c.amount"
        " from ref.corporate_actions c join ref.symbology s on s.instrument_id = c.instrument_id"
        " and c.ex_date between s.valid_from and s.valid_to where c.ex_date between %s and %s"
        " order by s.symbol, c.ex_date, c.action",
        (start, end),
    ).fetchall()
    return pl.DataFrame(rows, schema={"symbol": pl.String, "ex_date": pl.Date, "action": pl.String,
                                      "ratio": pl.Float64, "amount": pl.Float64}, orient="row")


def prior_closes(conn: psycopg.Connection, actions: pl.DataFrame) -> pl.DataFrame:
    """Raw close of the last stored session before each (instrument_id, ex_date), any provider.

    When several providers have that session, the median close is taken so one bad feed cannot move it.
    """
    schema = {"instrument_id": pl.Int64(), "ex_date": pl.Date(), "prior_close": pl.Float64()}
    keys = actions.select("instrument_id", "ex_date").unique()
    if keys.is_empty():
        return pl.DataFrame(schema=schema)
    with conn.transaction():
        conn.execute("create temporary table _ex (instrument_id bigint, ex_date date) on commit drop")
        with conn.cursor() as cur:
            copy_frame(cur, "_ex", keys)
        return read_frame(
            conn,
            """
            select e.instrument_id, e.ex_date, p.prior_close
            from _ex e
            cross join lateral (
                select percentile_cont(0.5) within group (order by b.close) as prior_close
                from md.bars_1d b
                where b.instrument_id = e.instrument_id
                  and b.session_date = (select max(session_date) from md.bars_1d x
                                        where x.instrument_id = e.instrument_id and x.session_date < e.ex_date)
            ) p
            """,
            None, schema,
        )


def replace_factors(conn: psycopg.Connection, factors: pl.DataFrame) -> int:
    """Swap the whole factor table in one transaction (it is derived data, rebuilt each time)."""
    with conn.transaction():
        conn.execute("delete from md.adjustment_factors")
        with conn.cursor() as cur:
            return copy_frame(cur, "md.adjustment_factors", factors.select(list(FACTOR_COLUMNS)))


def read_factors(conn: psycopg.Connection) -> pl.DataFrame:
    """The current adjustment factors."""
    return read_frame(conn, f"select {', '.join(FACTOR_COLUMNS)} from md.adjustment_factors", None, FACTOR_COLUMNS)
