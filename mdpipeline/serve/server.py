"""A small threaded HTTP server (standard library) for the read API.

    GET /health
    GET /v1/bars/1d?symbol=AAPL[,MSFT]&start=YYYY-MM-DD&end=YYYY-MM-DD[&provider=P][&format=json|arrow|parquet]
    GET /v1/bars/1m, /v1/bars/5m, /v1/bars/15m, /v1/bars/1h  (the same parameters; 5m..1h: roll-ups of 1m)
    GET /v1/quality?symbol=...&start=...&end=...[&provider=P][&format=...]

The format comes from `format=` or the Accept header (`application/json`,
`application/vnd.apache.arrow.stream`, `application/vnd.apache.parquet`). Errors are JSON
`{"error": ...}` with status 400 (bad parameters), 404 (unknown path) or 500.
"""

from __future__ import annotations

import json
import logging
from datetime import date
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import psycopg

from mdpipeline.serve.formats import MEDIA_TYPES, encode, negotiate
from mdpipeline.serve.queries import BARS, Query, quality
from mdpipeline.storage.database import connect

log = logging.getLogger(__name__)
ROUTES: dict[str, Query] = {**{f"/v1/bars/{interval}": q for interval, q in BARS.items()}, "/v1/quality": quality}
MAX_DAYS = 366 * 30


class BadRequestError(ValueError):
    """A parameter is missing or malformed."""


def _params(query: dict[str, list[str]]) -> tuple[list[str], date, date, str | None]:
    def one(name: str) -> str:
        values = query.get(name)
        if not values or not values[0]:
            raise BadRequestError(f"missing parameter {name!r}")
        return values[0]

    symbols = [s.strip().upper() for s in one("symbol").split(",") if s.strip()]
    try:
        start, end = date.fromisoformat(one("start")), date.fromisoformat(one("end"))
    except ValueError as exc:
        raise BadRequestError(f"start and end must be dates (YYYY-MM-DD): {exc}") from None
    if end < start or (end - start).days > MAX_DAYS:
        raise BadRequestError("end must be on or after start, and the range at most 30 years")
    provider = query.get("provider", [None])[0]
    return symbols, start, end, provider


def make_handler(database_url: str) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to one database."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "mdpipeline-serve"

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/health":
                self._send(HTTPStatus.OK, MEDIA_TYPES["json"], b'{"status":"ok"}')
                return
            route = ROUTES.get(url.path)
            if route is None:
                self._error(HTTPStatus.NOT_FOUND, f"no such path {url.path!r}; see {', '.join(ROUTES)}")
                return
            query = parse_qs(url.query)
            try:
                fmt = negotiate(query.get("format", [None])[0], self.headers.get("Accept"))
                symbols, start, end, provider = _params(query)
            except ValueError as exc:
                self._error(HTTPStatus.BAD_REQUEST, str(exc))
                return
            try:
                with connect(database_url) as conn:
                    frame = route(conn, symbols, start, end, provider)
            except psycopg.Error as exc:
                log.exception("read API query failed")
                self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"database error: {type(exc).__name__}")
                return
            self._send(HTTPStatus.OK, MEDIA_TYPES[fmt], encode(frame, fmt), rows=frame.height)

        def _send(self, status: HTTPStatus, media: str, body: bytes, rows: int | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", media)
            self.send_header("Content-Length", str(len(body)))
            if rows is not None:
                self.send_header("X-Row-Count", str(rows))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: HTTPStatus, message: str) -> None:
            self._send(status, MEDIA_TYPES["json"], json.dumps({"error": message}).encode())

        def log_message(self, format: str, *args: object) -> None:
            log.info("%s %s", self.address_string(), format % args)

    return Handler


def make_server(database_url: str, host: str = "127.0.0.1", port: int = 8080) -> ThreadingHTTPServer:
    """A bound server (port 0: any free port; see `server_address`); call serve_forever()."""
    server = ThreadingHTTPServer((host, port), make_handler(database_url))
    server.daemon_threads = True
    return server
