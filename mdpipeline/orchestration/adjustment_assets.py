"""Adjustment assets: consolidated corporate actions -> adjustment factors -> adjusted daily bars.

They are not partitioned: a corporate action learnt today changes the adjusted history of every
earlier session, so the factors are rebuilt whole from `ref` and the stored raw closes, without any
provider call, and the adjusted view follows.
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import dagster as dg
import polars as pl

from mdpipeline.enrich.adjustments import adjustment_factors
from mdpipeline.enrich.corporate_actions import consolidate_actions
from mdpipeline.orchestration.resources import DatabaseResource
from mdpipeline.orchestration.retries import retry_transient
from mdpipeline.quality.ex_date_jumps import MAX_EX_DATE_LOG_RETURN, stored_ex_date_jumps
from mdpipeline.quality.metrics import rows_markdown as markdown
from mdpipeline.storage.corporate_actions import prior_closes, read_actions, replace_factors
from mdpipeline.storage.counts import adjusted_bar_count

FACTORS_KEY = dg.AssetKey(["md", "adjustment_factors"])
ADJUSTED_KEY = dg.AssetKey(["md", "bars_1d_adjusted"])


def adjustment_assets(action_keys: Sequence[dg.AssetKey], bar_keys: Sequence[dg.AssetKey]) -> list:
    """The factor table and the adjusted view, downstream of every provider's actions and stored bars."""

    @dg.asset(key=FACTORS_KEY, group_name="adjusted", deps=[*action_keys, *bar_keys], kinds={"postgres", "polars"},
              metadata={"table": "md.adjustment_factors"},
              description="Back-adjustment factors per corporate action (split 1/r, dividend 1 - d/prior close), "
                          "rebuilt from ref.corporate_actions and raw closes; no provider call.")
    @retry_transient
    def adjustment_factors_asset(db: DatabaseResource) -> dg.MaterializeResult:
        with db.connection() as conn:
            actions, disagreements = consolidate_actions(read_actions(conn))
            factors, unusable = adjustment_factors(actions, prior_closes(conn, actions))
            replace_factors(conn, factors)
        return dg.MaterializeResult(metadata={
            "factors": factors.height, "splits": factors.filter(pl.col("action") == "split").height,
            "dividends": factors.filter(pl.col("action") == "cash_dividend").height,
            "unusable_actions": unusable.height,
            "unusable": dg.MetadataValue.md(markdown(unusable, ("instrument_id", "ex_date", "action", "reason"))),
            "provider_disagreements": disagreements.height,
        })

    @dg.asset(key=ADJUSTED_KEY, group_name="adjusted", deps=[FACTORS_KEY, *bar_keys], kinds={"postgres"},
              metadata={"view": "md.bars_1d_adjusted"},
              description="Daily bars split-adjusted and total-return-adjusted (view over md.bars_1d and the "
                          "factor table); the Python API and `mdpipeline bars --adjust` compute the same.",
              check_specs=[dg.AssetCheckSpec("no_ex_date_jump", asset=ADJUSTED_KEY,
                                             description="After total adjustment no ex-date shows an artificial "
                                                         "jump.")])
    @retry_transient
    def bars_1d_adjusted(db: DatabaseResource):
        with db.connection() as conn:
            rows = adjusted_bar_count(conn)
            jumps = stored_ex_date_jumps(conn)
        yield dg.MaterializeResult(metadata={"rows": rows,
                                             "checked_at": datetime.now(UTC).isoformat()})
        bad = jumps.filter(pl.col("log_return").abs() > MAX_EX_DATE_LOG_RETURN)
        yield dg.AssetCheckResult(
            check_name="no_ex_date_jump", passed=bad.is_empty(),
            metadata={"ex_dates_checked": jumps.height, "jumps": bad.height,
                      "max_abs_log_return": float(jumps["log_return"].abs().max() or 0.0),
                      "detail": dg.MetadataValue.md(
                          markdown(bad, ("symbol", "provider", "session_date", "log_return")))},
        )

    return [adjustment_factors_asset, bars_1d_adjusted]
