"""The services a benchmark runs against: from the environment, or a throwaway broker and cluster started here."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg

from mdpipeline.devservices import LocalBroker, LocalPostgres


@contextlib.contextmanager
def services(*, commit_timestamps: bool = False) -> Iterator[tuple[str, str]]:
    """(bootstrap servers, database url): MDP_KAFKA_BOOTSTRAP_SERVERS / MDP_DATABASE_URL when set, otherwise an
    Apache Kafka broker and a PostgreSQL cluster started in temporary directories (stopped and removed at the end).
    `commit_timestamps`: the cluster records when each transaction committed (`track_commit_timestamp`)."""
    with contextlib.ExitStack() as stack:
        bootstrap = os.environ.get("MDP_KAFKA_BOOTSTRAP_SERVERS", "")
        if not bootstrap:
            broker_dir = Path(tempfile.mkdtemp(prefix="bench-kafka-"))
            stack.callback(shutil.rmtree, broker_dir, ignore_errors=True)  # runs after the stop below
            broker = LocalBroker(broker_dir)
            bootstrap = broker.start()
            stack.callback(broker.stop)
        url = os.environ.get("MDP_DATABASE_URL", "")
        if not url:
            root = Path(tempfile.mkdtemp(prefix="bench-pg-"))
            root.chmod(0o755)
            stack.callback(shutil.rmtree, root, ignore_errors=True)  # a cluster of a run weighs gigabytes
            pg = LocalPostgres(root / "data", log_file=root / "postgres.log", fast=True)
            url = pg.start()
            if commit_timestamps:
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute("alter system set track_commit_timestamp = on")
                pg.stop()
                url = pg.start()
            stack.callback(pg.stop)
        yield bootstrap, url
