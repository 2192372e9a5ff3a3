"""Request quotas held by the database: real processes, a real PostgreSQL and a loopback HTTP server.

Each worker is a separate Python process (multiprocessing, spawn) with its own HTTP client, as two
Dagster runs or two workers would be; they share only the database URL (each client is handed the
database's limits store, as `ProvidersResource` hands it to the providers).
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from mdpipeline.orchestration.resources import ProvidersResource
from mdpipeline.providers.alphavantage import KEY_ENV, classify
from mdpipeline.providers.base import ProviderError
from mdpipeline.providers.errors import QuotaStoreError, RateLimitError
from mdpipeline.providers.http import HttpClient, HttpPolicy
from mdpipeline.providers.provider_state import reset_shared_state
from mdpipeline.storage.provider_limits import quota_store
from mdpipeline.storage.provider_quota import quota_today
from mdpipeline_tests.provider_servers import closed_port_url, isolated, json_response, script, universe_file

PROVIDER = "quotaprov"
OK = json_response({"ok": True})


@pytest.fixture(autouse=True)
def _fresh_shared_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    yield from isolated(monkeypatch, provider=PROVIDER)


def worker(base_url: str, database_url: str | None, policy: dict[str, Any], attempts: int, ready: Any, go: Any,
           results: Any) -> None:
    """One process: up to `attempts` GETs until the quota refuses; reports (sent, refusal message)."""
    client = HttpClient(PROVIDER, base_url, HttpPolicy(**policy),
                        limits_store=quota_store(database_url) if database_url else None)
    ready.set()
    go.wait(30)
    sent, refused = 0, ""
    for _ in range(attempts):
        try:
            client.get("/data")
        except RateLimitError as exc:
            refused = str(exc)
            break
        sent += 1
    results.put((sent, refused))


def run_workers(server: HTTPServer, database_url: str | None, policy: dict[str, Any], attempts: int,
                processes: int = 2) -> tuple[list[tuple[int, str]], float]:
    """Start `processes` workers, let them go at once; their results and the time they were let go."""
    ctx = mp.get_context("spawn")
    go, results = ctx.Event(), ctx.Queue()
    readies = [ctx.Event() for _ in range(processes)]
    procs = [ctx.Process(target=worker, args=(server.url_for("/"), database_url, policy, attempts, ready, go, results))
             for ready in readies]
    for p in procs:
        p.start()
    try:
        for ready in readies:
            assert ready.wait(120), "a worker process did not start"
        started = time.time()
        go.set()
        outcome = [results.get(timeout=120) for _ in procs]
    finally:
        for p in procs:
            p.join(30)
    assert all(p.exitcode == 0 for p in procs)
    return outcome, started


def quota_used(database_url: str, tz: str = "UTC") -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return quota_today(conn, PROVIDER, tz).used


def test_two_processes_never_take_more_than_the_daily_quota(httpserver: HTTPServer, database_url: str) -> None:
    s = script(httpserver, "/data", OK)
    outcome, _ = run_workers(httpserver, database_url, {"timeout": 5.0, "daily_limit": 7}, attempts=20)
    assert sum(sent for sent, _ in outcome) == 7
    assert s.count == 7  # the provider saw exactly the quota, whoever took it
    assert all("daily limit of 7 requests reached" in refused for _, refused in outcome)
    assert all("counted in the database by every process" in refused for _, refused in outcome)
    assert quota_used(database_url) == 7


def test_the_daily_quota_is_held_across_runs(httpserver: HTTPServer, database_url: str) -> None:
    s = script(httpserver, "/data", OK)
    policy = {"timeout": 5.0, "daily_limit": 5}
    first, _ = run_workers(httpserver, database_url, policy, attempts=3, processes=1)
    assert first == [(3, "")]
    second, _ = run_workers(httpserver, database_url, policy, attempts=5, processes=1)  # a later run
    assert second[0][0] == 2
    assert s.count == 5


def test_two_processes_share_one_token_bucket(httpserver: HTTPServer, database_url: str) -> None:
    arrivals: list[float] = []
    lock = threading.Lock()

    def handler(_: Request) -> Response:
        with lock:
            arrivals.append(time.time())
        return OK

    httpserver.expect_request("/data").respond_with_handler(handler)
    interval = 0.25
    outcome, started = run_workers(httpserver, database_url, {"timeout": 5.0, "rate_per_second": 1 / interval},
                                   attempts=4)
    assert [sent for sent, _ in outcome] == [4, 4]
    # Slots are handed out by the database one interval apart, whichever process asks: the k-th request
    # cannot arrive before its slot (two per-process buckets would both send at once).
    for k, arrived in enumerate(sorted(arrivals)):
        assert arrived >= started + k * interval - 0.02, (k, arrived - started)


def test_the_quota_day_is_the_provider_day(httpserver: HTTPServer, database_url: str) -> None:
    s = script(httpserver, "/data", OK)
    tz = "America/New_York"
    client = HttpClient(PROVIDER, httpserver.url_for("/"),
                        HttpPolicy(timeout=5.0, daily_limit=2, quota_timezone=tz),
                        limits_store=quota_store(database_url))
    today = datetime.now(ZoneInfo(tz)).date()
    with psycopg.connect(database_url, autocommit=True) as conn:  # yesterday (New York) was spent
        conn.execute("insert into ops.provider_quota (provider, quota_day, used) values (%s, %s, 2)",
                     (PROVIDER, today - timedelta(days=1)))
    client.get("/data")
    client.get("/data")
    with pytest.raises(RateLimitError) as info:
        client.get("/data")
    assert not info.value.retryable
    assert f"for {today} (America/New_York day" in str(info.value)
    assert f"resets at {today + timedelta(days=1)} 00:00 America/New_York" in str(info.value)
    assert s.count == 2
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute("select quota_day, used from ops.provider_quota where provider = %s order by 1",
                            (PROVIDER,)).fetchall()
    assert rows == [(today - timedelta(days=1), 2), (today, 2)]


def test_the_providers_own_daily_answer_stops_every_process(httpserver: HTTPServer, database_url: str) -> None:
    spent = {"Information": "We have detected your API key as K and our standard API rate limit is 25 requests per "
                            "day. Please subscribe to any of the premium plans at https://www.alphavantage.co/premium/ "
                            "to instantly remove all daily rate limits."}
    s = script(httpserver, "/data", json_response(spent))
    client = HttpClient(PROVIDER, httpserver.url_for("/"), HttpPolicy(timeout=5.0, daily_limit=25),
                        classify=classify, limits_store=quota_store(database_url))
    with pytest.raises(RateLimitError, match="25 requests per day"):
        client.get("/data")
    assert s.count == 1
    outcome, _ = run_workers(httpserver, database_url, {"timeout": 5.0, "daily_limit": 25}, attempts=3, processes=1)
    assert outcome[0][0] == 0
    assert "the provider answered that its daily quota is spent" in outcome[0][1]
    assert s.count == 1  # the other process sent nothing


def test_unreachable_quota_database_sends_nothing(httpserver: HTTPServer) -> None:
    s = script(httpserver, "/data", OK)
    dead = closed_port_url().replace("http://", "postgresql://postgres@") + "/nowhere"
    client = HttpClient(PROVIDER, httpserver.url_for("/"), HttpPolicy(timeout=5.0, daily_limit=25),
                        limits_store=quota_store(dead))
    with pytest.raises(QuotaStoreError, match="unreachable"):
        client.get("/data")
    assert s.count == 0
    assert client.breaker_state == "closed"


def test_missing_quota_tables_say_migrate(httpserver: HTTPServer, database_url: str) -> None:
    s = script(httpserver, "/data", OK)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("drop table ops.provider_quota")
    client = HttpClient(PROVIDER, httpserver.url_for("/"), HttpPolicy(timeout=5.0, daily_limit=25),
                        limits_store=quota_store(database_url))
    with pytest.raises(QuotaStoreError, match="mdpipeline migrate"):
        client.get("/data")
    assert s.count == 0


def test_without_a_database_the_limits_stay_in_the_process(httpserver: HTTPServer) -> None:
    s = script(httpserver, "/data", OK)
    client = HttpClient(PROVIDER, httpserver.url_for("/"), HttpPolicy(timeout=5.0, daily_limit=1))
    client.get("/data")
    with pytest.raises(RateLimitError, match=r"counted in this process"):
        client.get("/data")
    assert s.count == 1


def test_unknown_quota_timezone_is_refused() -> None:
    with pytest.raises(ProviderError, match="unknown quota_timezone"):
        HttpPolicy.from_options({"http": {"quota_timezone": "Mars/Olympus"}})


@pytest.mark.parametrize("shared", [True, False], ids=["with-database", "without"])
def test_the_dagster_resource_hands_the_databases_limits_to_the_providers(
        httpserver: HTTPServer, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        shared: bool) -> None:
    s = script(httpserver, "/data", OK)
    monkeypatch.setenv("MDP_DATABASE_URL", database_url if shared else "")
    monkeypatch.setenv(KEY_ENV, "k")
    universe = universe_file(tmp_path, "alphavantage", ["AAPL"], http={"daily_limit": 1, "rate_per_second": None})
    resource = ProvidersResource(universe_path=str(universe), base_urls={"alphavantage": httpserver.url_for("/")})
    reset_shared_state("alphavantage")
    try:
        http = resource.provider("alphavantage").http  # type: ignore[attr-defined]
        http.get("/data")
        with pytest.raises(RateLimitError) as info:
            http.get("/data")
    finally:
        reset_shared_state("alphavantage")
    assert s.count == 1
    where = "in the database by every process" if shared else "in this process"
    assert f"counted {where}" in str(info.value)
    with psycopg.connect(database_url, autocommit=True) as conn:
        used = conn.execute("select coalesce(sum(used), 0) from ops.provider_quota where provider = 'alphavantage'")
        assert used.fetchone() == ((1,) if shared else (0,))
