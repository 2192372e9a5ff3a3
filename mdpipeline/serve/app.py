"""The read API as an ASGI application (FastAPI), with its OpenAPI schema at `/openapi.json`.

    GET /health
    GET /v1/bars/1d?symbol=AAPL[,MSFT]&start=YYYY-MM-DD&end=YYYY-MM-DD[&provider=P][&format=json|arrow|parquet]
    GET /v1/bars/1m, /v1/bars/5m, /v1/bars/15m, /v1/bars/1h  (the same parameters; 5m..1h: roll-ups of 1m)
    GET /v1/quality?symbol=...&start=...&end=...[&provider=P][&format=...]

The format comes from `format=` or the Accept header (`application/json`,
`application/vnd.apache.arrow.stream`, `application/vnd.apache.parquet`); JSON is the default and
`X-Row-Count` gives the number of rows. Errors are JSON `{"error": ...}`: 400 for bad parameters and
requests beyond the limits (`mdpipeline.serve.limits`: symbols, days, rows), 404 for an unknown path,
503 when the database is busy (no pooled connection free in time) or a query runs past the statement
timeout. Requests share a bounded connection pool (psycopg_pool) whose connections carry the
statement timeout; handlers run in the server's worker threads, at most `pool_size` of them in the
database at once.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import date
from typing import Annotated, Any, Literal

import polars as pl
import psycopg
from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from psycopg_pool import ConnectionPool, PoolTimeout
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from mdpipeline.providers.registry import PROVIDERS
from mdpipeline.serve.formats import MEDIA_TYPES, encode, negotiate
from mdpipeline.serve.limits import ApiLimits
from mdpipeline.serve.queries import BARS, quality
from mdpipeline.storage.database import Timeouts, connection_kwargs

log = logging.getLogger(__name__)

APPLICATION_NAME = "mdpipeline-serve"  # in pg_stat_activity
SYMBOL = r"[A-Za-z0-9.^=_/-]{1,20}"
SYMBOLS_PATTERN = rf"^{SYMBOL}(,{SYMBOL})*$"
Provider = Literal[PROVIDERS]  # type: ignore[valid-type]  # the registry's names, in its order
Format = Literal["json", "arrow", "parquet"]
Query_ = Callable[[psycopg.Connection, list[str], date, date, str | None, int], pl.DataFrame]
Symbols = Annotated[str, Query(description="Comma-separated tickers (at most MDP_SERVE_MAX_SYMBOLS, default 100).",
                               pattern=SYMBOLS_PATTERN, examples=["AAPL,MSFT"])]
Start = Annotated[date, Query(description="First session (YYYY-MM-DD), inclusive.")]
End = Annotated[date, Query(description="Last session (YYYY-MM-DD), inclusive.")]
ProviderQ = Annotated[Provider | None, Query(description="Only this provider.")]
FormatQ = Annotated[Format | None, Query(description="json (default), arrow or parquet; else the Accept header.")]
Accept = Annotated[str | None, Header(include_in_schema=False)]


class ApiError(Exception):
    """A request the API answers with `status` and `{"error": message}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ErrorBody(BaseModel):
    """Every error answer."""

    error: str


class _BarValues(BaseModel):
    """What every bar answer holds (prices as traded, not adjusted)."""

    instrument_id: int
    symbol: str
    session_date: date
    provider: str
    open: float
    high: float
    low: float
    close: float
    volume: float
    vwap: float | None
    trades: int | None
    ingested_at: str | None


class BarRow(_BarValues):
    """One stored daily bar, as JSON."""

    run_id: str | None


class MinuteBarRow(BarRow):
    """One stored one-minute bar: `ts` is the bar's start (UTC), `session_date` its exchange session."""

    ts: str


class RollupRow(_BarValues):
    """One roll-up bar of minute bars: `ts` the bucket start (UTC), `bars` the minute bars in it."""

    ts: str
    bars: int


class QuarantineRow(BaseModel):
    """One quarantined row: why it was rejected, and the row as it arrived (JSON text)."""

    dataset: str
    provider: str
    stage: str
    session_date: date | None
    symbol: str | None
    check_name: str
    reason: str
    row_data: str
    run_id: str
    quarantined_at: str


def _responses(row: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    binary = {"schema": {"type": "string", "format": "binary"}}
    rows = {"type": "array", "items": {"$ref": f"#/components/schemas/{row.__name__}"}}
    error = {"model": ErrorBody}
    return {
        200: {"description": "Rows as JSON (an array of objects), Arrow IPC stream or Parquet.",
              "content": {MEDIA_TYPES["json"]: {"schema": rows}, MEDIA_TYPES["arrow"]: binary,
                          MEDIA_TYPES["parquet"]: binary},
              "headers": {"X-Row-Count": {"description": "Rows in the answer.", "schema": {"type": "integer"}}}},
        400: {**error, "description": "A parameter is missing or malformed, or the request is beyond the limits."},
        503: {**error, "description": "The database is busy, or the query ran past the statement timeout."},
    }


def create_app(database_url: str, limits: ApiLimits | None = None) -> FastAPI:
    """The read API over the database at `database_url` (the pool opens when the app starts)."""
    limits = limits or ApiLimits.from_env()
    pool = ConnectionPool(database_url, min_size=1, max_size=limits.pool_size, open=False, timeout=limits.pool_timeout,
                          kwargs={"autocommit": True, "application_name": APPLICATION_NAME,
                                  **connection_kwargs(Timeouts.from_env(statement=limits.statement_timeout),
                                                      url=database_url)})

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        pool.open(wait=False)
        try:
            yield
        finally:
            pool.close()

    app = FastAPI(title="mdpipeline read API", version="1", lifespan=lifespan,
                  description="Stored bars (daily, minute, roll-ups) and quarantined rows, as JSON, Arrow IPC or"
                              " Parquet.")
    app.state.pool = pool
    app.state.limits = limits

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"error": "; ".join(parts)}, status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = (f"no such path {request.url.path!r}; see /v1/bars/{{1d,1m,5m,15m,1h}}, /v1/quality, /docs"
                   if exc.status_code == 404 else str(exc.detail))
        return JSONResponse({"error": message}, status_code=exc.status_code)

    @app.get("/health", summary="Liveness", response_model=dict[str, str])
    def health() -> dict[str, str]:
        return {"status": "ok"}

    def answer(query: Query_, symbol: str, start: date, end: date, provider: str | None, fmt: str | None,
               accept: str | None) -> Response:
        try:
            chosen = negotiate(fmt, accept)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        symbols = _symbols(symbol, limits)
        if end < start:
            raise ApiError(400, f"end {end} is before start {start}")
        if (end - start).days + 1 > limits.max_days:
            raise ApiError(400, f"the range holds {(end - start).days + 1} days; at most {limits.max_days} per "
                                "request (MDP_SERVE_MAX_DAYS)")
        frame = _run(pool, limits, query, symbols, start, end, provider)
        return Response(encode(frame, chosen), media_type=MEDIA_TYPES[chosen],
                        headers={"X-Row-Count": str(frame.height)})

    def bars_route(interval: str, summary: str, row: type[BaseModel]) -> None:
        query = BARS[interval]

        @app.get(f"/v1/bars/{interval}", summary=summary, responses=_responses(row), response_class=Response,
                 operation_id=f"get_bars_{interval}")
        def get_bars(symbol: Symbols, start: Start, end: End, provider: ProviderQ = None, format: FormatQ = None,
                     accept: Accept = None) -> Response:
            return answer(query, symbol, start, end, provider, format, accept)

    bars_route("1d", "Stored daily bars", BarRow)
    bars_route("1m", "Stored one-minute bars", MinuteBarRow)
    for interval in BARS:
        if interval not in ("1d", "1m"):
            bars_route(interval, f"{interval} bars rolled up from the stored minute bars", RollupRow)

    @app.get("/v1/quality", summary="Quarantined rows with reasons", responses=_responses(QuarantineRow),
             response_class=Response)
    def get_quality(symbol: Symbols, start: Start, end: End, provider: ProviderQ = None, format: FormatQ = None,
                    accept: Accept = None) -> Response:
        return answer(quality, symbol, start, end, provider, format, accept)

    _register_models(app, (BarRow, MinuteBarRow, RollupRow, QuarantineRow))
    return app


def _symbols(given: str, limits: ApiLimits) -> list[str]:
    """Upper-cased, de-duplicated symbols; never empty (an empty list must not mean every symbol)."""
    symbols = list(dict.fromkeys(s.strip().upper() for s in given.split(",") if s.strip()))
    if not symbols:
        raise ApiError(400, "symbol must name at least one symbol")
    if len(symbols) > limits.max_symbols:
        raise ApiError(400, f"{len(symbols)} symbols; at most {limits.max_symbols} per request (MDP_SERVE_MAX_SYMBOLS)")
    return symbols


def _run(pool: ConnectionPool, limits: ApiLimits, query: Query_, symbols: list[str], start: date, end: date,
         provider: str | None) -> pl.DataFrame:
    """The query on a pooled connection, at most max_rows + 1 rows read; limits and timeouts as API errors."""
    try:
        # In a transaction: the read stays on the pooled connection (its statement timeout, the pool's bound).
        with pool.connection() as conn, conn.transaction():
            frame = query(conn, symbols, start, end, provider, limits.max_rows + 1)
    except PoolTimeout:
        raise ApiError(503, f"the database is busy: no connection free within {limits.pool_timeout:g}s; "
                            "retry later") from None
    except psycopg.errors.QueryCanceled:
        raise ApiError(503, f"the query ran longer than {limits.statement_timeout:g}s (MDP_SERVE_STATEMENT_TIMEOUT); "
                            "ask for fewer symbols or a shorter range") from None
    except psycopg.Error as exc:
        log.exception("read API query failed")
        raise ApiError(503, f"database error: {type(exc).__name__}") from None
    if frame.height > limits.max_rows:
        raise ApiError(400, f"more than {limits.max_rows} rows match; ask for fewer symbols or a shorter range "
                            "(MDP_SERVE_MAX_ROWS)")
    return frame


def _register_models(app: FastAPI, models: tuple[type[BaseModel], ...]) -> None:
    """Add the row models to the OpenAPI components (the 200 answers refer to them by name)."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in models:
            components.setdefault(model.__name__, model.model_json_schema(ref_template="#/components/schemas/{model}"))
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
