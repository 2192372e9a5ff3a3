"""Response bodies: one polars frame as JSON (records), Arrow IPC stream, or Parquet."""

from __future__ import annotations

import io

import polars as pl

MEDIA_TYPES = {
    "json": "application/json",
    "arrow": "application/vnd.apache.arrow.stream",
    "parquet": "application/vnd.apache.parquet",
}


def negotiate(requested: str | None, accept: str | None) -> str:
    """The format from `?format=` or else the Accept header; JSON by default. ValueError when unknown."""
    if requested:
        if requested not in MEDIA_TYPES:
            raise ValueError(f"format must be one of {', '.join(MEDIA_TYPES)}, not {requested!r}")
        return requested
    for name, media in MEDIA_TYPES.items():
        if accept and media in accept:
            return name
    return "json"


def encode(frame: pl.DataFrame, fmt: str) -> bytes:
    """Serialize `frame` (dates as ISO 8601 in JSON; native types in Arrow and Parquet)."""
    if fmt == "json":
        return frame.write_json().encode()
    buf = io.BytesIO()
    if fmt == "arrow":
        frame.write_ipc_stream(buf)
    else:
        frame.write_parquet(buf)
    return buf.getvalue()
