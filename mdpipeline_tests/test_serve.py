"""The read API against a real server on loopback and the real database."""

from __future__ import annotations

import io
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, date, datetime

import polars as pl
import psycopg
import pytest
from pyarrow import ipc

from mdpipeline.normalize.bars import stamp
from mdpipeline.serve.server import make_server
from mdpipeline.storage.loader import replace_range
from mdpipeline.storage.quarantine_store import replace_quarantine

pytestmark = pytest.mark.both_layouts

DAY1, DAY2 = date(2024, 6, 10), date(2024, 6, 11)


@pytest.fixture
def api(database_url: str, conn: psycopg.Connection) -> Iterator[str]:
    bars = pl.DataFrame({
        "instrument_id": [1, 1, 2], "symbol": ["AAPL", "AAPL", "MSFT"], "session_date": [DAY1, DAY2, DAY1],
        "provider": ["file"] * 3, "open": [1.0, 2.0, 3.0], "high": [1.5, 2.5, 3.5], "low": [0.5, 1.5, 2.5],
        "close": [1.2, 2.2, 3.2], "volume": [100.0, 200.0, 300.0], "vwap": [1.1, None, 3.1], "trades": [5, 6, None],
        "raw_payload_id": pl.Series([None] * 3, dtype=pl.Int64),
    }).with_columns(pl.col("trades").cast(pl.Int64))
    replace_range(conn, "md.bars_1d", stamp(bars, "run-1", datetime.now(UTC)), provider="file", start=DAY1, end=DAY2)
    rejected = pl.DataFrame({"session_date": [DAY2], "symbol": ["AAPL"], "check_name": ["value_range"],
                             "reason": ["close: greater_than(0)"], "row_data": ['{"close": -1}']})
    replace_quarantine(conn, rejected, dataset="bars_1d", provider="file", stage="validate", start=DAY1, end=DAY2,
                       run_id="run-1")
    server = make_server(database_url, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _get(url: str, accept: str | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_bars_as_json_arrow_and_parquet(api: str) -> None:
    query = f"{api}/v1/bars/1d?symbol=aapl&start=2024-06-10&end=2024-06-11"
    status, headers, body = _get(query)
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    rows = json.loads(body)
    assert [(r["session_date"], r["close"]) for r in rows] == [("2024-06-10", 1.2), ("2024-06-11", 2.2)]
    assert rows[1]["vwap"] is None

    status, headers, body = _get(query, accept="application/vnd.apache.arrow.stream")
    assert status == 200
    table = ipc.open_stream(io.BytesIO(body)).read_all()
    assert table.num_rows == 2
    assert str(table.schema.field("session_date").type) == "date32[day]"

    status, headers, body = _get(query + "&format=parquet")
    assert headers["Content-Type"] == "application/vnd.apache.parquet"
    frame = pl.read_parquet(io.BytesIO(body))
    assert frame["close"].to_list() == [1.2, 2.2]
    assert headers["X-Row-Count"] == "2"

    _, _, body = _get(f"{api}/v1/bars/1d?symbol=AAPL,MSFT&start=2024-06-10&end=2024-06-10&provider=file")
    assert sorted(r["symbol"] for r in json.loads(body)) == ["AAPL", "MSFT"]


def test_quality_records(api: str) -> None:
    status, _, body = _get(f"{api}/v1/quality?symbol=AAPL&start=2024-06-01&end=2024-06-30")
    assert status == 200
    (row,) = json.loads(body)
    assert row["check_name"] == "value_range"
    assert json.loads(row["row_data"]) == {"close": -1}


def test_bad_requests_are_explained(api: str) -> None:
    status, _, body = _get(f"{api}/v1/bars/1d?symbol=AAPL&start=2024-06-10")
    assert status == 400
    assert "end" in json.loads(body)["error"]
    status, _, body = _get(f"{api}/v1/bars/1d?symbol=AAPL&start=2024-06-10&end=2024-06-01")
    assert status == 400
    status, _, _ = _get(f"{api}/v1/bars/1d?symbol=AAPL&start=2024-06-10&end=2024-06-11&format=xml")
    assert status == 400
    status, _, _ = _get(f"{api}/v1/nothing")
    assert status == 404
    status, _, body = _get(f"{api}/health")
    assert json.loads(body) == {"status": "ok"}
