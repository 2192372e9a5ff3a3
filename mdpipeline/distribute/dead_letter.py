"""Dead letters: events that cannot be serialized faithfully (or that the broker refuses) and why.

JSON has no NaN or infinity: polars would silently write `null` for them, so such rows are never
published on their topic. They go to `md.dead_letter.v1` instead, carrying the reason, the topic
and event they were meant as, and the row with every field as text (nothing is lost).
"""

from __future__ import annotations

import polars as pl

from mdpipeline.distribute.events import envelope, event_ids
from mdpipeline.distribute.topics import DEAD_LETTER


def unserializable_reason(frame: pl.DataFrame, fields: tuple[str, ...]) -> pl.Expr:
    """Per row: why the row cannot be a JSON event (null when it can)."""
    checks = [
        pl.when(~pl.col(c).is_finite()).then(pl.format("{} is {} (JSON has no NaN or infinity)", pl.lit(c),
                                                       pl.col(c).cast(pl.String)))
        for c in fields if frame.schema[c].is_float()
    ]
    if not checks:
        return pl.lit(None, dtype=pl.String)
    return pl.concat_str(checks, separator="; ", ignore_nulls=True).replace("", None)


def dead_letter_events(
    original_topic: str,
    keys: pl.Series,
    original_event_ids: pl.Series,
    reasons: pl.Series,
    payloads: pl.Series,
) -> pl.DataFrame:
    """Dead-letter events (`key`, `event_id`, `value`) for messages meant for `original_topic`.

    `payloads` is the original content as text (JSON with fields as strings, or the value itself).
    """
    frame = pl.DataFrame({"key": keys, "original_event_id": original_event_ids, "reason": reasons,
                          "payload": payloads}).with_columns(pl.lit(original_topic).alias("original_topic"))
    data = frame.select(
        pl.struct("original_topic", "original_event_id", "key", "reason", "payload").struct.json_encode()
    ).to_series()
    ids = event_ids(DEAD_LETTER.name, frame["key"], data)
    return pl.DataFrame({"key": frame["key"], "event_id": ids, "data": data}).select(
        "key", "event_id", envelope(DEAD_LETTER.name, pl.col("event_id"), pl.col("data")).alias("value"),
    )


def text_payload(frame: pl.DataFrame, fields: tuple[str, ...]) -> pl.Series:
    """The rows as JSON objects with every field as text (NaN stays "NaN")."""
    return frame.select(
        pl.struct(pl.col(c).cast(pl.String) for c in fields).struct.json_encode().alias("payload")
    ).to_series()
