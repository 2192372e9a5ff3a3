"""Real services for the test session: ephemeral PostgreSQL clusters and an Apache Kafka broker.

Both start on free loopback ports with the same code `mdpipeline dev up` uses, or come from the
environment (MDP_TEST_DATABASE_URL, MDP_TEST_KAFKA_BOOTSTRAP_SERVERS) when given. Each test gets a
fresh, migrated database cloned from a template, so tests never see each other's rows.

Storage layouts: where TimescaleDB is installed, the default server preloads it (as `dev up` does),
so the suite runs on the TimescaleDB layout. Tests marked `both_layouts` run once per layout: the
`postgres-partitioned` run gets a second server started without the preload, on which `migrate`
itself finds that the extension cannot be used (it is on disk, not loadable) and picks the plain
layout. Without TimescaleDB they run on the plain layout only. Servers start on first use and are
shared by every test of the session (one pair per xdist worker).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from mdpipeline.devservices import LocalBroker, LocalPostgres, timescaledb_installed
from mdpipeline.storage.database import connect
from mdpipeline.storage.migrations import POSTGRES_PARTITIONED, TIMESCALEDB, migrate

TEMPLATE_DB = "mdp_template"
EXTERNAL = "external"  # MDP_TEST_DATABASE_URL: one given server, whatever layout it supports


def available_layouts() -> list[str]:
    """The layouts this machine can run the suite on, the default first."""
    if os.environ.get("MDP_TEST_DATABASE_URL"):
        return [EXTERNAL]
    return [TIMESCALEDB, POSTGRES_PARTITIONED] if timescaledb_installed() else [POSTGRES_PARTITIONED]


DEFAULT_LAYOUT = available_layouts()[0]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked `both_layouts` run once per available layout (the `layout` fixture); those also marked
    `timescaledb` only on that one; a test that parametrizes `layout` itself keeps its own."""
    pinned = any("layout" in str(m.args[0]) for m in metafunc.definition.iter_markers("parametrize"))
    if "layout" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_layouts") and not pinned:
        layouts = available_layouts()
        if metafunc.definition.get_closest_marker("timescaledb"):
            layouts = [layout for layout in layouts if layout != POSTGRES_PARTITIONED] or layouts[:1]
        metafunc.parametrize("layout", layouts, indirect=True)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked `timescaledb` need the extension: skipped where it is not installed."""
    if item.get_closest_marker("timescaledb") and TIMESCALEDB not in available_layouts():
        pytest.skip("TimescaleDB is not installed for this machine's PostgreSQL")


class PgServers:
    """The session's PostgreSQL servers, one per layout, each with a migrated template; started on first use."""

    def __init__(self) -> None:
        self._servers: dict[str, LocalPostgres] = {}
        self._urls: dict[str, str] = {}
        self._templates: set[str] = set()
        self._roots: list[Path] = []

    def url(self, layout: str) -> str:
        """URL of the layout's server's maintenance database (`postgres`)."""
        if layout not in self._urls:
            if layout == EXTERNAL:
                self._urls[layout] = os.environ["MDP_TEST_DATABASE_URL"]
            else:
                root = Path(tempfile.mkdtemp(prefix=f"mdp-pg-{layout}-"))
                root.chmod(0o755)  # the server runs as the postgres user when the tests run as root
                # No TimescaleDB job scheduler: its sessions would block cloning the template, and
                # policies run only when a test calls them (CALL run_job), so runs are deterministic.
                server = LocalPostgres(root / "data", log_file=root / "postgres.log", fast=True,
                                       timescaledb=layout == TIMESCALEDB, background_jobs=False)
                self._servers[layout] = server
                self._roots.append(root)
                self._urls[layout] = server.start().rsplit("/", 1)[0] + "/postgres"
        return self._urls[layout]

    def template(self, layout: str) -> str:
        """The migrated template database of the layout's server."""
        if layout not in self._templates:
            admin_url = self.url(layout)
            with psycopg.connect(admin_url, autocommit=True) as admin:
                admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(TEMPLATE_DB)))
                admin.execute(sql.SQL("create database {}").format(sql.Identifier(TEMPLATE_DB)))
            with connect(admin_url.rsplit("/", 1)[0] + "/" + TEMPLATE_DB) as conn:
                migrate(conn)
            self._templates.add(layout)
        return TEMPLATE_DB

    def stop(self) -> None:
        for server in self._servers.values():
            server.stop()
        for root in self._roots:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_servers() -> Iterator[PgServers]:
    """The session's servers (started lazily, stopped at the end)."""
    servers = PgServers()
    try:
        yield servers
    finally:
        servers.stop()


@pytest.fixture
def layout(request: pytest.FixtureRequest) -> str:
    """The storage layout of the test's databases: its parameter under `both_layouts`, else the default."""
    return str(getattr(request, "param", DEFAULT_LAYOUT))


@pytest.fixture(scope="session")
def pg_server_url(pg_servers: PgServers) -> str:
    """URL of the default layout's server's maintenance database (`postgres`)."""
    return pg_servers.url(DEFAULT_LAYOUT)


@pytest.fixture(scope="session")
def template_db(pg_servers: PgServers) -> str:
    """The default layout's migrated template database that per-test databases are cloned from."""
    return pg_servers.template(DEFAULT_LAYOUT)


@pytest.fixture
def new_database(pg_servers: PgServers, layout: str) -> Iterator[Callable[[], str]]:
    """A factory of fresh migrated databases on the test's layout, all dropped afterwards."""
    made: list[str] = []
    admin_url = pg_servers.url(layout)

    def make() -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        template = pg_servers.template(layout)
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("create database {} template {}").format(
                sql.Identifier(name), sql.Identifier(template)))
        made.append(name)
        return admin_url.rsplit("/", 1)[0] + "/" + name

    yield make
    with psycopg.connect(admin_url, autocommit=True) as admin:
        for name in made:
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


@pytest.fixture
def database_url(new_database: Callable[[], str]) -> str:
    """A fresh migrated database for one test (on its layout), dropped afterwards."""
    return new_database()


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    """A connection to the test's database."""
    with connect(database_url) as c:
        yield c


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of an Apache Kafka broker for the session (one per test process).

    Started like `mdpipeline dev up` starts it, in a temporary directory removed afterwards.
    """
    given = os.environ.get("MDP_TEST_KAFKA_BOOTSTRAP_SERVERS")
    if given:
        yield given
        return
    root = Path(tempfile.mkdtemp(prefix="mdp-kafka-"))
    broker = LocalBroker(root)
    try:
        yield broker.start()
    finally:
        broker.stop()
        shutil.rmtree(root, ignore_errors=True)
