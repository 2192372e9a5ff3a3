"""Corporate-action values providers give in their own terms."""

from __future__ import annotations

import polars as pl


def number(expr: pl.Expr) -> pl.Expr:
    """Text or numbers -> Float64; values that do not parse -> null."""
    return expr.cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)


def split_ratio(new: pl.Expr, old: pl.Expr) -> pl.Expr:
    """New shares per old share from a split's two sides (e.g. split_to / split_from: 4 for 4-for-1, 0.1
    for 1-for-10); null unless both sides are positive numbers."""
    n, o = number(new), number(old)
    return pl.when((n > 0) & (o > 0)).then(n / o)


__all__ = ["number", "split_ratio"]
