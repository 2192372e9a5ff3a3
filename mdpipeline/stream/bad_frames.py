"""Frames that cannot be parsed, set aside one by one so a bad frame never blocks the frames around it.

A raw range is parsed column-wise as a whole. `frame_defects` first finds, with vectorized checks, the
frames a parser would drop silently or choke on: not UTF-8, not JSON, holding a NUL character
(PostgreSQL text cannot store it), without a provider or of a provider no parser knows, of a kind
that is neither `data` nor `gap`, or of the wrong JSON shape for their provider. `isolate` then runs
the parser on the rest; when it still raises (a wrong JSON type inside a message makes polars raise
ComputeError, and some inputs make it panic with pyo3's PanicException, which is not an Exception),
it sets aside the frames the error names or else splits the frames in halves until each failing frame
stands alone: k bad frames among n cost O(n log k) parsing, and the good frames are parsed as usual.

Each frame set aside becomes a `quality.quarantine` row (dataset `ticks`, stage `stream`, check
`malformed_frame`) with the reason and the frame itself: raw topic, partition and offset, provider,
kind, receive time, size, and the value as text, or base64 when it is not UTF-8 or holds NUL.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from datetime import datetime

import polars as pl
from polars.exceptions import PanicException

from mdpipeline.stream.parse import ALPACA_SHAPED, FINNHUB_SHAPED, MalformedFramesError

log = logging.getLogger(__name__)

FRAME_CHECK = "malformed_frame"
PARSED_PROVIDERS = ALPACA_SHAPED | FINNHUB_SHAPED
REJECTED_FRAMES: dict[str, pl.DataType] = {"offset": pl.Int64(), "reason": pl.String()}
_REASON_CHARS = 500


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:_REASON_CHARS]


def frame_defects(raw: pl.DataFrame) -> pl.DataFrame:
    """`raw` (columns offset, provider, kind, value, defect) with `reason` set for frames no parser may see.

    `defect` comes from reading the message (e.g. not UTF-8); the checks here add the rest.
    """
    value = pl.col("value")
    text = value.str.strip_chars_start()
    provider, kind = pl.col("provider"), pl.col("kind")
    checks = [
        pl.col("defect"),
        pl.when(~kind.is_in(["data", "gap"])).then(pl.format("unknown frame kind {}", kind)),
        pl.when(provider.is_null()).then(pl.lit("no mdp-provider header")),
        pl.when((kind == "data") & provider.is_not_null() & ~provider.is_in(list(PARSED_PROVIDERS)))
        .then(pl.format("no parser for frames of provider {}", provider)),
        pl.when(value.str.contains("\x00", literal=True) | value.str.contains("\\u0000", literal=True))
        .then(pl.lit("holds a NUL character (PostgreSQL text cannot store it)")),
        pl.when(value.str.json_path_match("$").is_null()).then(pl.lit("not JSON")),
        pl.when((kind == "data") & provider.is_in(list(ALPACA_SHAPED)) & ~text.str.starts_with("["))
        .then(pl.lit("not a JSON array of messages")),
        pl.when(((kind == "gap") | provider.is_in(list(FINNHUB_SHAPED))) & ~text.str.starts_with("{"))
        .then(pl.lit("not a JSON object")),
    ]
    return raw.with_columns(pl.coalesce(checks).alias("reason"))


def isolate(frames: pl.DataFrame, parse: Callable[[pl.DataFrame], pl.DataFrame]) -> tuple[pl.DataFrame,
                                                                                         pl.DataFrame]:
    """(parse(good frames), rejected frames with reasons): frames that make `parse` raise are set aside.

    KeyboardInterrupt and SystemExit propagate; everything else a parser raises, panics included, is a
    property of the frames given.
    """
    try:
        return parse(frames), pl.DataFrame(schema=REJECTED_FRAMES)
    except (Exception, PanicException) as exc:  # PanicException derives from BaseException
        if isinstance(exc, MalformedFramesError):
            named = pl.DataFrame({"offset": exc.offsets}, schema={"offset": pl.Int64()})
            rejected = named.with_columns(pl.lit(exc.reason[:_REASON_CHARS]).alias("reason"))
            rest = frames.join(named, on="offset", how="anti")
            if rest.height == frames.height:  # the error named frames that are not here: a parser bug
                raise
            parsed, more = isolate(rest, parse)
            return parsed, pl.concat([rejected, more])
        if frames.height <= 1:
            return (parse(frames.clear()),
                    frames.select("offset", pl.lit(_first_line(exc)).alias("reason")).cast(REJECTED_FRAMES))
        middle = frames.height // 2
        first, first_rejected = isolate(frames.slice(0, middle), parse)
        second, second_rejected = isolate(frames.slice(middle), parse)
        return pl.concat([first, second]), pl.concat([first_rejected, second_rejected])


def parse_frames(raw: pl.DataFrame, parse: Callable[[pl.DataFrame], pl.DataFrame]) -> tuple[pl.DataFrame,
                                                                                           pl.DataFrame]:
    """Data frames of `raw` -> (parse(those that parse), every data frame set aside with its reason)."""
    checked = frame_defects(raw.filter(pl.col("kind") != "gap"))
    defective = checked.filter(pl.col("reason").is_not_null()).select(list(REJECTED_FRAMES))
    parsed, failed = isolate(checked.filter(pl.col("reason").is_null()).drop("reason"), parse)
    return parsed, pl.concat([defective, failed]).sort("offset")


def gap_markers(raw: pl.DataFrame) -> tuple[list[tuple[int, dict]], pl.DataFrame]:
    """Gap frames of `raw` -> ([(offset, marker)], rejected markers with reasons); a marker needs a provider
    and RFC 3339 `disconnected_at` <= `reconnected_at`. Markers are few (one per reconnect): parsed in Python."""
    checked = frame_defects(raw.filter(pl.col("kind") == "gap"))
    markers: list[tuple[int, dict]] = []
    rejected: list[tuple[int, str]] = []
    for offset, value, defect in checked.select("offset", "value", "reason").iter_rows():
        reason = defect
        if reason is None:
            try:
                marker = json.loads(value)
                start, end = (datetime.fromisoformat(marker[k].replace("Z", "+00:00"))
                              for k in ("disconnected_at", "reconnected_at"))
                if not isinstance(marker.get("provider"), str) or start.tzinfo is None or start > end:
                    raise ValueError("needs a provider and disconnected_at <= reconnected_at, with time zones")
                markers.append((offset, {**marker, "disconnected_at": start, "reconnected_at": end,
                                         "reason": str(marker.get("reason", ""))}))
                continue
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                reason = f"malformed gap marker: {_first_line(exc)}"
        rejected.append((offset, reason))
    return markers, pl.DataFrame(rejected, schema=REJECTED_FRAMES, orient="row")


def frame_quarantine_rows(raw: pl.DataFrame, rejected: pl.DataFrame, *, topic: str, partition: int, run_id: str,
                          timezone: str) -> pl.DataFrame:
    """Quarantine rows (the `quality.quarantine` columns) for the frames of `raw` named in `rejected`."""
    frames = raw.join(rejected, on="offset", how="inner").sort("offset")
    if frames.height:
        log.warning("%s[%d]: %d frame(s) set aside: %s", topic, partition, frames.height,
                    "; ".join(f"{o}: {r}" for o, r in frames.select("offset", "reason").head(5).iter_rows()))
    # binary COPY of jsonb: a version byte (1), then the JSON text
    row_data = ["\x01" + json.dumps(_frame_record(f, topic, partition)) for f in frames.iter_rows(named=True)]
    when = pl.coalesce("received_at", "landed_at")
    return frames.select(
        pl.lit("ticks").alias("dataset"), pl.col("provider").fill_null("unknown"), pl.lit("stream").alias("stage"),
        when.dt.convert_time_zone(timezone).dt.date().alias("session_date"), pl.lit(None, pl.String).alias("symbol"),
        pl.lit(FRAME_CHECK).alias("check_name"), "reason",
        pl.Series("row_data", row_data, dtype=pl.String), pl.lit(run_id).alias("run_id"),
    )


def _frame_record(frame: dict, topic: str, partition: int) -> dict:
    """The frame as a JSON-storable record: text when it is clean UTF-8, else base64 of its bytes."""
    record = {"topic": topic, "partition": partition, "offset": frame["offset"], "kind": frame["kind"],
              "provider": frame["provider"],
              "received_at": frame["received_at"].isoformat() if frame["received_at"] else None}
    value = frame["value"] or ""
    if frame.get("encoding") == "base64":
        record.update(bytes=len(base64.b64decode(value)), value_base64=value)
    elif "\x00" in value or "\\u0000" in value:
        data = value.encode()
        record.update(bytes=len(data), value_base64=base64.b64encode(data).decode())
    else:
        record.update(bytes=len(value.encode()), value=value)
    return record
