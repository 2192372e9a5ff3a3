"""Helpers for provider tests against a real HTTP server on loopback (pytest-httpserver).

`script(httpserver, path, ...)` serves a sequence of answers on one path (the last one repeats) and
records every request, so a test can say "503, 502, then the data" and count what the client sent.
`make_provider` builds a network provider against that server, `isolated` gives each test its own
credentials and breaker state, and `universe_file` writes a universe switching one provider on.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import pytest
import yaml
from pytest_httpserver import HTTPServer
from pytest_httpserver.httpserver import QueryMatcher
from werkzeug import Request, Response

from mdpipeline.providers.http import reset_shared_state
from mdpipeline.providers.rest import RestProvider
from mdpipeline.settings import DEFAULT_FILES_DIR, DEFAULT_UNIVERSE, Settings
from mdpipeline.universe import ProviderSetup

Answer = Response | Callable[[Request], Response]
P = TypeVar("P", bound=RestProvider)


def json_response(obj: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """A JSON response (bytes as `json.dumps` writes them)."""
    return Response(json.dumps(obj), status=status, headers=dict(headers or {}), content_type="application/json")


def raw_response(body: bytes | str, status: int = 200, content_type: str = "application/json",
                 headers: Mapping[str, str] | None = None) -> Response:
    """A response with exactly `body`."""
    return Response(body, status=status, headers=dict(headers or {}), content_type=content_type)


def truncated_response(body: bytes, declared: int | None = None) -> Response:
    """A response announcing more bytes (Content-Length) than it sends: the connection drops mid-body."""
    resp = Response(body, content_type="application/json")
    resp.headers["Content-Length"] = str(declared if declared is not None else len(body) + 100)
    return resp


def slow(seconds: float, answer: Answer) -> Callable[[Request], Response]:
    """An answer given only after `seconds` (longer than the client's timeout -> a timeout)."""

    def handler(request: Request) -> Response:
        time.sleep(seconds)
        return answer(request) if callable(answer) and not isinstance(answer, Response) else answer

    return handler


@dataclass
class Script:
    """Answers served in order on one path; the last repeats. `requests` records what was asked."""

    answers: list[Answer]
    requests: list[Request] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: Request) -> Response:
        with self._lock:
            index = min(len(self.requests), len(self.answers) - 1)
            self.requests.append(request)
            answer = self.answers[index]
        return answer(request) if callable(answer) and not isinstance(answer, Response) else answer

    @property
    def count(self) -> int:
        """Requests received so far."""
        return len(self.requests)

    def args(self, index: int = -1) -> dict[str, str]:
        """Query parameters of request `index`."""
        return dict(self.requests[index].args)


class SubsetQuery(QueryMatcher):
    """Matches requests whose query holds at least these parameters (others, e.g. the API key, ignored)."""

    def __init__(self, expected: Mapping[str, str]) -> None:
        self.expected = {k: str(v) for k, v in expected.items()}

    def get_comparing_values(self, request_query_string: bytes) -> tuple[bool, bool]:
        query = dict(parse_qsl(request_query_string.decode(), keep_blank_values=True))
        return all(query.get(k) == v for k, v in self.expected.items()), True


def script(server: HTTPServer, path: str | re.Pattern[str], *answers: Answer,
           query: Mapping[str, str] | None = None) -> Script:
    """Serve `answers` in order on GET `path` (only for requests whose query includes `query`, if given)."""
    handler = Script(list(answers))
    server.expect_request(path, method="GET", query_string=SubsetQuery(query) if query else None
                          ).respond_with_handler(handler)
    return handler


def closed_port_url() -> str:
    """A loopback URL nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class SleepRecorder:
    """An injectable `sleep` that records the waits instead of sleeping."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


# Fast policies for provider tests: no token bucket or daily cap, tiny backoff (waits are recorded, not slept).
FAST_HTTP: dict[str, Any] = {"rate_per_second": None, "daily_limit": None, "backoff_initial": 0.01,
                             "backoff_max": 0.05, "timeout": 2.0, "breaker_reset_timeout": 0.5}


def provider_setup(name: str, symbols: tuple[str, ...], *, fast: Mapping[str, Any] = FAST_HTTP,
                   **options: Any) -> ProviderSetup:
    """A provider setup as the universe file gives it, with `fast` merged under `options['http']`."""
    http = {**fast, **(options.pop("http", None) or {})}
    return ProviderSetup(name=name, enabled=True, symbols=symbols, options={"http": http, **options})


def provider_settings(server: HTTPServer, name: str, prefix: str = "") -> Settings:
    """Settings whose base URL for `name` is the loopback server (plus an optional path prefix)."""
    return Settings(database_url="", kafka_bootstrap_servers="", universe_path=DEFAULT_UNIVERSE,
                    files_dir=DEFAULT_FILES_DIR, base_urls={name: server.url_for(prefix or "/").rstrip("/")})


def make_provider(cls: type[P], server: HTTPServer, symbols: tuple[str, ...] = ("AAPL",), *, prefix: str = "",
                  fast: Mapping[str, Any] = FAST_HTTP, **options: Any) -> tuple[P, SleepRecorder]:
    """Provider `cls` against the loopback server (base URL plus `prefix`), its waits recorded, not slept."""
    sleep = SleepRecorder()
    setup = provider_setup(cls.name, symbols, fast=fast, **options)
    return cls(setup, provider_settings(server, cls.name, prefix), sleep=sleep), sleep


def isolated(monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str] | None = None,
             provider: str | None = None) -> Iterator[None]:
    """Body of an autouse fixture: credentials `env` set, breaker/bucket state of `provider` (or all) reset."""
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    reset_shared_state(provider)
    yield
    reset_shared_state(provider)


def universe_file(tmp_path: Path, provider: str, symbols: Sequence[str], *, only: bool = False,
                  enabled: bool = True, file: str = "universe.yaml", **options: Any) -> Path:
    """The checked-in universe with `provider` set to `enabled` for `symbols` (every other one off if `only`)."""
    doc = yaml.safe_load(DEFAULT_UNIVERSE.read_text())
    if only:
        for setup in doc["providers"].values():
            setup["enabled"] = False
    doc["providers"][provider] = {"enabled": enabled, "symbols": list(symbols), **options}
    path = tmp_path / file
    path.write_text(yaml.safe_dump(doc))
    return path


def registry_files(tmp_path: Path, provider: str) -> tuple[Path, Path, Settings]:
    """Universe files with `provider` on and off for AAPL, and settings giving it a dummy base URL."""
    on = universe_file(tmp_path, provider, ["AAPL"], file="on.yaml")
    off = universe_file(tmp_path, provider, ["AAPL"], enabled=False, file="off.yaml")
    return on, off, Settings("", "", on, tmp_path, base_urls={provider: "http://127.0.0.1:9/x"})


def bars_1d_chain(provider: str) -> str:
    """A Dagster selection of `provider`'s daily-bar chain raw -> md (plus the reference data it needs)."""
    layers = ("raw", "validated", "normalized", "md")
    return " or ".join([*(f'key:"{layer}/{provider}/bars_1d"' for layer in layers), 'key:"ref/instruments"'])
