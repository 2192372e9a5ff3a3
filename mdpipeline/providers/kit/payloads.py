"""Raw payloads built from responses one way for every network provider, and read back by transforms."""

from __future__ import annotations

import io
from collections.abc import Mapping
from datetime import date

import polars as pl

from mdpipeline.providers.base import RawPayload
from mdpipeline.providers.errors import MalformedPayloadError
from mdpipeline.providers.http import HttpResult


def payload_from(provider: str, dataset: str, result: HttpResult, request_key: str, first: date,
                 last: date) -> RawPayload:
    """One response as a raw payload covering the sessions [first, last]: the body untouched, `params` the
    query as sent with credential values shown as `***` (a stored payload says a credential was sent,
    never which); content type as answered, else JSON (every network provider fetches JSON)."""
    return RawPayload(
        provider=provider, dataset=dataset, session_date=first, session_end=last, request_key=request_key,
        endpoint=result.endpoint, params=dict(result.params), body=result.body,
        content_type=result.content_type or "application/json", status=result.status,
        fetched_at=result.fetched_at)


def read_json(provider: str, payload: RawPayload, schema: Mapping[str, pl.DataType]) -> pl.DataFrame:
    """A stored JSON body read with `schema`; MalformedPayloadError when it is not that document."""
    try:
        return pl.read_json(io.BytesIO(payload.body), schema=dict(schema))
    except (pl.exceptions.PolarsError, ValueError) as exc:
        raise MalformedPayloadError(
            f"{provider}: payload {payload.request_key} is not the documented JSON: {str(exc)[:200]}") from None


def text_column(frame: pl.DataFrame, name: str) -> pl.Expr:
    """Column `name` as text, or nulls when the payload lacks it."""
    return pl.col(name).cast(pl.String) if name in frame.columns else pl.lit(None, pl.String)


__all__ = ["payload_from", "read_json", "text_column"]
