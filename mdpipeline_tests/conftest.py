"""Real services for the test session: an ephemeral PostgreSQL cluster and an Apache Kafka broker.

Both start on free loopback ports with the same code `mdpipeline dev up` uses, or come from the
environment (MDP_TEST_DATABASE_URL, MDP_TEST_KAFKA_BOOTSTRAP_SERVERS) when given. Each test gets a
fresh, migrated database cloned from a template, so tests never see each other's rows.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from mdpipeline.devservices import LocalBroker, LocalPostgres
from mdpipeline.storage.database import connect
from mdpipeline.storage.migrations import migrate

TEMPLATE_DB = "mdp_template"


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """URL of a PostgreSQL server's maintenance database (`postgres`)."""
    given = os.environ.get("MDP_TEST_DATABASE_URL")
    if given:
        yield given
        return
    root = Path(tempfile.mkdtemp(prefix="mdp-pg-"))
    root.chmod(0o755)  # the server runs as the postgres user when the tests run as root
    server = LocalPostgres(root / "data", log_file=root / "postgres.log", fast=True)
    url = server.start()
    try:
        yield url.rsplit("/", 1)[0] + "/postgres"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def template_db(pg_server_url: str) -> str:
    """A migrated template database that per-test databases are cloned from."""
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(TEMPLATE_DB)))
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(TEMPLATE_DB)))
    url = pg_server_url.rsplit("/", 1)[0] + "/" + TEMPLATE_DB
    with connect(url) as conn:
        migrate(conn)
    return TEMPLATE_DB


@pytest.fixture
def database_url(pg_server_url: str, template_db: str) -> Iterator[str]:
    """A fresh migrated database for one test, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {} template {}").format(
            sql.Identifier(name), sql.Identifier(template_db)))
    yield pg_server_url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


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
