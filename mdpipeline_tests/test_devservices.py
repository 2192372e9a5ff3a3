"""Real start/stop tests of the local dev services: PostgreSQL, the Apache Kafka broker and the dev stack.

PostgreSQL runs as the `postgres` user when we are root, and pytest's own tmp_path sits under a
0700 directory that user cannot traverse, so the services get a world-traversable temporary
directory of their own.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from mdpipeline.devservices import (
    LocalBroker,
    LocalPostgres,
    PostgresError,
    dev_down,
    dev_status,
    dev_up,
    timescaledb_installed,
    update_env_file,
)
from mdpipeline.devservices.broker import BrokerError
from mdpipeline.devservices.kafka_dist import ENV_KAFKA_HOME, KafkaDistError, kafka_dist, kafka_version
from mdpipeline.devservices.postgres import find_bindir
from mdpipeline.devservices.stack import LOCAL_INSTANCE
from mdpipeline.distribute.subscriber import end_offsets
from mdpipeline.storage.database import connect
from mdpipeline.storage.migrations import migrate, storage_layout


def _have_postgres() -> bool:
    try:
        find_bindir()
    except PostgresError:
        return False
    return True


needs_postgres = pytest.mark.skipif(not _have_postgres(), reason="PostgreSQL server binaries not installed")


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A temporary directory the `postgres` user can traverse (removed afterwards)."""
    path = Path(tempfile.mkdtemp(prefix="mdp-devservices-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def postgres(shared_tmp: Path) -> Iterator[LocalPostgres]:
    pg = LocalPostgres(shared_tmp / "pg" / "data", fast=True)
    yield pg
    pg.stop()


@pytest.fixture
def broker(shared_tmp: Path) -> Iterator[LocalBroker]:
    b = LocalBroker(shared_tmp / "kafka")
    yield b
    b.stop()


@needs_postgres
def test_postgres_starts_serves_and_stops(postgres: LocalPostgres) -> None:
    url = postgres.start()
    assert url == f"postgresql://postgres@127.0.0.1:{postgres.port}/mdpipeline"
    with psycopg.connect(url) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        assert conn.execute("select current_database()").fetchone() == ("mdpipeline",)
        conn.execute("create table keep_me (x int)")
    pid = postgres.pid
    assert postgres.start() == url  # idempotent: same server, same URL
    assert postgres.pid == pid
    assert postgres.is_running()

    postgres.stop()
    assert not postgres.is_running()
    postgres.stop()  # stopping a stopped cluster is a no-op

    assert postgres.start() == url  # restart on the same port keeps the data
    with psycopg.connect(url) as conn:
        assert conn.execute("select count(*) from keep_me").fetchone() == (0,)


@needs_postgres
def test_postgres_listens_on_loopback_only(postgres: LocalPostgres) -> None:
    url = postgres.start()
    with psycopg.connect(url) as conn:
        settings = dict(
            conn.execute(
                "select name, setting from pg_settings where name in "
                "('listen_addresses', 'unix_socket_directories', 'fsync')"
            ).fetchall()
        )
    assert settings == {"listen_addresses": "127.0.0.1", "unix_socket_directories": "", "fsync": "off"}


@needs_postgres
def test_postgres_preloads_timescaledb_when_installed_and_migrate_asks_the_server(shared_tmp: Path) -> None:
    """`dev up`'s cluster preloads TimescaleDB exactly when it is installed (telemetry off), and `migrate` picks
    the layout by what the server can do: a cluster told not to preload it gets the plain layout even where
    the extension is on disk (the bug of a cluster that listed it but could not create it)."""
    installed = timescaledb_installed()
    for name, preload in (("default", None), ("plain", False)):
        pg = LocalPostgres(shared_tmp / name / "data", fast=True, timescaledb=preload)
        try:
            with connect(pg.start()) as conn:
                settings = dict(conn.execute(
                    "select 'shared_preload_libraries', current_setting('shared_preload_libraries') union all"
                    " select 'telemetry', current_setting('timescaledb.telemetry_level', true)").fetchall())
                on_disk = conn.execute("select count(*) from pg_available_extensions where name = 'timescaledb'")
                assert on_disk.fetchone() == (int(installed),)
                migrate(conn)
                layout = storage_layout(conn)
        finally:
            pg.stop()
        if name == "default" and installed:
            assert settings == {"shared_preload_libraries": "timescaledb", "telemetry": "off"}
            assert layout == "timescaledb"
        else:
            assert settings == {"shared_preload_libraries": "", "telemetry": None}
            assert layout == "postgres-partitioned"


@needs_postgres
@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another user")
def test_postgres_unreachable_data_dir_fails_clearly(shared_tmp: Path) -> None:
    private = shared_tmp / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(PostgresError, match="traversable"):
        LocalPostgres(private / "data", fast=True).start()


def test_broker_round_trip_and_restart_keeps_messages(broker: LocalBroker) -> None:
    servers = broker.start()
    assert servers == f"127.0.0.1:{broker.port}"
    assert broker.is_running()
    assert broker.start() == servers  # idempotent
    assert LocalBroker(broker.home).bootstrap_servers == servers  # found via the pid file and its config
    pid = broker.pid
    assert pid is not None
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"kafka.Kafka" in argv
    assert b"-Xmx512m" in argv  # bounded heap

    topic = f"test.devservices.{uuid.uuid4().hex[:8]}"
    _create_topic(servers, topic)
    _produce(servers, topic, b"AAPL", b'{"close": 1.0}')
    assert _consume_one(servers, topic) == (b"AAPL", b'{"close": 1.0}')

    broker.stop()
    assert not broker.is_running()
    assert not Path(f"/proc/{pid}").exists()
    assert not broker.pid_file.exists()
    assert (broker.data_dir / "meta.properties").is_file()

    assert broker.start() == servers  # same port, same log directory: the message is still there
    assert broker.pid != pid
    assert end_offsets(servers, topic) == {0: (0, 1)}
    assert _consume_one(servers, topic) == (b"AAPL", b'{"close": 1.0}')


def test_broker_port_in_use_fails_clearly(broker: LocalBroker, shared_tmp: Path) -> None:
    broker.start()
    with pytest.raises(BrokerError, match="already in use"):
        LocalBroker(shared_tmp / "other", port=broker.port).start()


def test_kafka_jars_come_from_the_cache_or_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dist = kafka_dist(resolve=False)  # resolved by bootstrap (or the session broker) before
    assert (dist.libs / f"kafka_2.13-{kafka_version()}.jar").is_file()
    assert kafka_version().startswith("4.")
    monkeypatch.setenv(ENV_KAFKA_HOME, str(tmp_path / "empty"))
    with pytest.raises(KafkaDistError, match="mdpipeline dev prepare"):
        kafka_dist(resolve=False)


def test_update_env_file_keeps_other_lines(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("# comment\nFOO=bar\nexport MDP_DATABASE_URL=old\nMDP_DATABASE_URL=older\n")
    update_env_file(env, {"MDP_DATABASE_URL": "postgresql://x", "DAGSTER_HOME": "/a b/c"})
    assert env.read_text() == '# comment\nFOO=bar\nMDP_DATABASE_URL=postgresql://x\nDAGSTER_HOME="/a b/c"\n'


@pytest.mark.parametrize("existing", [None, 0o644, 0o666])
def test_the_env_file_is_readable_by_its_owner_only(tmp_path: Path, existing: int | None) -> None:
    """.env may hold API keys: written 0600 whatever the umask, even over a world-readable one."""
    env = tmp_path / ".env"
    if existing is not None:
        env.write_text("POLYGON_API_KEY=secret\n")
        env.chmod(existing)
    old_umask = os.umask(0o022)
    try:
        update_env_file(env, {"MDP_DATABASE_URL": "postgresql://x"})
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert "MDP_DATABASE_URL=postgresql://x" in env.read_text()


@needs_postgres
def test_dev_up_status_down(shared_tmp: Path) -> None:
    root = shared_tmp / "project"
    root.mkdir()
    (root / ".env").write_text("POLYGON_API_KEY=secret\nMDP_KAFKA_BOOTSTRAP_SERVERS=stale:9092\n")
    try:
        stack = dev_up(root)
        assert stat.S_IMODE((root / ".env").stat().st_mode) == 0o600  # it holds POLYGON_API_KEY
        env = _read_env(root / ".env")
        dagster_url = stack.database_url.replace("postgresql://", "postgresql+psycopg2://").rsplit("/", 1)[0]
        assert env == {
            "POLYGON_API_KEY": "secret",
            "MDP_KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap_servers,
            "MDP_DATABASE_URL": stack.database_url,
            "DAGSTER_HOME": str(root / ".mdpipeline" / "dagster"),
            "MDP_DAGSTER_DATABASE_URL": dagster_url + "/dagster",
            "DAGSTER_EVENT_BATCH_SIZE": "1000",
            "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "1",
        }
        assert stack.dagster_home.is_absolute()
        assert (stack.dagster_home / "dagster.yaml").read_text() == LOCAL_INSTANCE.read_text()
        with psycopg.connect(stack.database_url.rsplit("/", 1)[0] + "/dagster") as conn:  # Dagster's own database
            assert conn.execute("select 1").fetchone() == (1,)
        with psycopg.connect(stack.database_url) as conn:
            assert conn.execute("select 1").fetchone() == (1,)

        status = dev_status(root)
        assert status.postgres_running
        assert status.broker_running
        assert status.database_url == stack.database_url
        assert status.bootstrap_servers == stack.bootstrap_servers
        assert status.data_dir == root / ".mdpipeline" / "pg" / "data"
        assert status.broker_dir == root / ".mdpipeline" / "kafka"
        assert status.timescaledb_preloaded == timescaledb_installed()
        assert status.storage_layout == "not migrated"
        assert dev_up(root) == stack  # idempotent while running
        topic = f"test.devstack.{uuid.uuid4().hex[:8]}"
        _create_topic(stack.bootstrap_servers, topic)
        _produce(stack.bootstrap_servers, topic, b"NVDA", b"kept")

        dev_down(root)
        status = dev_status(root)
        assert not status.postgres_running
        assert not status.broker_running

        again = dev_up(root)  # a restart reuses the recorded ports and keeps topics and messages
        assert again == stack
        assert end_offsets(stack.bootstrap_servers, topic) == {0: (0, 1)}
        assert _consume_one(stack.bootstrap_servers, topic) == (b"NVDA", b"kept")
    finally:
        dev_down(root)
    assert not dev_status(root).postgres_running
    assert not dev_status(root).broker_running


def _read_env(path: Path) -> dict[str, str]:
    pairs = (tuple(line.split("=", 1)) for line in path.read_text().splitlines() if "=" in line)
    return dict(pairs)


def _create_topic(servers: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": servers})  # referenced until the futures resolve
    for future in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        future.result(timeout=15)


def _produce(servers: str, topic: str, key: bytes, value: bytes) -> None:
    """Produce one message with broker acknowledgement from all replicas, idempotently."""
    delivered: list[object] = []
    producer = Producer({"bootstrap.servers": servers, "acks": "all", "enable.idempotence": True})
    producer.produce(topic, key=key, value=value, on_delivery=lambda err, _msg: delivered.append(err))
    assert producer.flush(15) == 0
    assert delivered == [None]


def _consume_one(servers: str, topic: str) -> tuple[bytes | None, bytes | None]:
    """Read the first message of topic as a fresh consumer group member."""
    consumer = Consumer(
        {
            "bootstrap.servers": servers,
            "group.id": f"test-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
        }
    )
    try:
        consumer.subscribe([topic])
        for _ in range(30):
            message = consumer.poll(1.0)
            if message is not None:
                assert message.error() is None, message.error()
                return message.key(), message.value()
    finally:
        consumer.close()
    raise AssertionError(f"no message on {topic} within 30 s")


def test_dagster_home_gets_the_local_instance_config_once(tmp_path: Path) -> None:
    from mdpipeline.devservices.stack import _ensure_dagster_home

    home = _ensure_dagster_home(tmp_path / ".mdpipeline" / "dagster")
    assert (home / "dagster.yaml").read_text() == LOCAL_INSTANCE.read_text()
    (home / "dagster.yaml").write_text("# edited locally\n")
    _ensure_dagster_home(home)
    assert (home / "dagster.yaml").read_text() == "# edited locally\n"  # never overwritten


@needs_postgres
def test_a_failed_dev_up_stops_what_it_started_and_says_so_in_one_line(shared_tmp: Path) -> None:
    root = shared_tmp / "half"
    root.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MDP_", "DAGSTER_HOME"))}
    env["JAVA_HOME"] = str(shared_tmp / "no-java-here")  # the broker cannot start: no JVM
    cli = str(Path(sys.executable).parent / "mdpipeline")
    try:
        up = subprocess.run([cli, "dev", "up"], cwd=root, env=env, capture_output=True, text=True, timeout=120,
                            check=False)
        assert up.returncode == 1, up.stdout + up.stderr
        assert "Traceback" not in up.stderr
        assert up.stderr.startswith("error: ")
        assert "hint: " in up.stderr
        status = dev_status(root)
        assert not status.postgres_running  # PostgreSQL had been started by this call: it was stopped again
        assert not status.broker_running
    finally:
        dev_down(root)
