"""`mdpipeline dev up|down|status`: the embedded local stack (PostgreSQL + Apache Kafka + DAGSTER_HOME).

All state lives under `<root>/.mdpipeline`:

- `pg/data` the PostgreSQL cluster (kept across restarts), and `pg/postgres.log`. When root runs the
  stack and the project directory is out of the `postgres` user's reach (a clone in root's 0700
  home), the cluster lives in a per-project directory under `/var/lib/mdpipeline` instead
  (`MDP_DEV_PG_ROOT` to choose another); no permission of the user's directories is changed. The
  choice is recorded in `dev.json` and shown by `dev status`.
- `kafka/` the Kafka broker: `data/` its log directory (topics and messages, kept across restarts),
  `server.properties`, `broker.pid`,
- `logs/` server logs,
- `dagster/` DAGSTER_HOME with its `dagster.yaml` (Dagster's own storage is the database `dagster` in the
  same cluster),
- `dev.json` ports and pids, so `status` and `down` (in another process) find the services and the
  next `up` reuses the same ports when they are still free.

`up` also writes MDP_DATABASE_URL, MDP_KAFKA_BOOTSTRAP_SERVERS, DAGSTER_HOME, MDP_DAGSTER_DATABASE_URL,
DAGSTER_EVENT_BATCH_SIZE and DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS into `<root>/.env`,
keeping the other lines. `down` stops both cleanly;
the database, the topics and their messages survive it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from mdpipeline.devservices.broker import LocalBroker
from mdpipeline.devservices.postgres import LocalPostgres, port_is_free, server_user_can_reach

STATE_DIR = ".mdpipeline"
ENV_DATABASE_URL = "MDP_DATABASE_URL"
ENV_BOOTSTRAP = "MDP_KAFKA_BOOTSTRAP_SERVERS"
ENV_DAGSTER_HOME = "DAGSTER_HOME"
ENV_DAGSTER_DATABASE_URL = "MDP_DAGSTER_DATABASE_URL"  # Dagster's own storage (runs, events, schedules)
ENV_EVENT_BATCH_SIZE = "DAGSTER_EVENT_BATCH_SIZE"
ENV_PLANNED_SUBSET = "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS"  # one planned event per asset and run
EVENT_BATCH_SIZE = "1000"
DAGSTER_DATABASE = "dagster"
LOCAL_INSTANCE = Path(__file__).with_name("dagster.yaml")
ENV_PG_ROOT = "MDP_DEV_PG_ROOT"
DEFAULT_PG_ROOT = Path("/var/lib/mdpipeline")


@dataclass(frozen=True)
class DevStack:
    """Where a running local stack can be reached."""

    database_url: str
    bootstrap_servers: str
    dagster_home: Path


@dataclass(frozen=True)
class DevStatus:
    """What `dev status` reports; URLs are None when the stack was never started here."""

    database_url: str | None
    postgres_running: bool
    bootstrap_servers: str | None
    broker_running: bool
    data_dir: Path
    broker_dir: Path | None = None  # the Kafka node's home: log directory, server.properties
    timescaledb_preloaded: bool | None = None  # whether the running server preloads TimescaleDB
    storage_layout: str | None = None  # the database's layout: timescaledb, postgres-partitioned, not migrated


@dataclass(frozen=True)
class _Paths:
    """The layout of the state directory."""

    state: Path

    @property
    def local_pg(self) -> Path:
        """The cluster's directory inside the project (data/ and postgres.log)."""
        return self.state / "pg"

    @property
    def external_pg(self) -> Path:
        """The cluster's per-project directory outside it, for a project the server user cannot reach."""
        project = self.state.parent
        digest = hashlib.sha256(str(project).encode()).hexdigest()[:12]
        root = Path(os.environ.get(ENV_PG_ROOT) or DEFAULT_PG_ROOT)
        return root / f"{project.name or 'root'}-{digest}" / "pg"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def dagster_home(self) -> Path:
        return self.state / "dagster"

    @property
    def state_file(self) -> Path:
        return self.state / "dev.json"

    @property
    def kafka(self) -> Path:
        return self.state / "kafka"


def _paths(root: Path | None) -> _Paths:
    return _Paths((Path(root) if root is not None else Path.cwd()).absolute() / STATE_DIR)


def _read_state(paths: _Paths) -> dict[str, Any]:
    """The saved ports and pids, empty when absent or unreadable."""
    try:
        state = json.loads(paths.state_file.read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _write_state(paths: _Paths, postgres: LocalPostgres, broker: LocalBroker) -> None:
    state = {
        "postgres": {"port": postgres.port, "pid": postgres.pid, "data_dir": str(postgres.data_dir)},
        "broker": {"port": broker.port, "controller_port": broker.controller_port, "pid": broker.pid},
    }
    _atomic_write(paths.state_file, json.dumps(state, indent=2) + "\n")


def _saved_port(state: dict[str, Any], service: str, key: str = "port") -> int | None:
    """The port a service used last time, if it is still an int."""
    entry = state.get(service)
    port = entry.get(key) if isinstance(entry, dict) else None
    return port if isinstance(port, int) else None


def _pg_home(paths: _Paths, state: dict[str, Any], choose: bool) -> Path:
    """The directory holding the cluster (`data/`, `postgres.log`): the one recorded in dev.json, else
    (`choose`) the project's own when the server user can reach it, or the per-project one outside."""
    entry = state.get("postgres")
    saved = entry.get("data_dir") if isinstance(entry, dict) else None
    if isinstance(saved, str) and saved:
        return Path(saved).parent
    if not choose or (paths.local_pg / "data").exists():
        return paths.local_pg
    paths.state.mkdir(parents=True, exist_ok=True)
    return paths.local_pg if server_user_can_reach(paths.state) else paths.external_pg


def _postgres(paths: _Paths, state: dict[str, Any], choose: bool = False) -> LocalPostgres:
    """The cluster handle; a running cluster keeps its port, else reuse the saved one when free."""
    home = _pg_home(paths, state, choose)
    port = _saved_port(state, "postgres")
    pg = LocalPostgres(home / "data", port=port, log_file=home / "postgres.log")
    if port is not None and not pg.is_running() and not port_is_free(port):
        pg = LocalPostgres(home / "data", log_file=home / "postgres.log")
    return pg


def _broker(paths: _Paths, state: dict[str, Any]) -> LocalBroker:
    """The broker handle; a running broker keeps its ports, else reuse the saved ones when free."""
    ports = [_saved_port(state, "broker", key) for key in ("port", "controller_port")]
    port, controller_port = (p if p is not None and port_is_free(p) else None for p in ports)
    return LocalBroker(paths.kafka, port=port, controller_port=controller_port, log_file=paths.logs / "kafka.log")


def dev_up(root: Path | None = None) -> DevStack:
    """Start (or keep) the local PostgreSQL and Kafka broker, prepare DAGSTER_HOME, write `.env`.

    `root` defaults to the current directory. Both keep their data under `.mdpipeline` across
    restarts.
    """
    root_dir = (Path(root) if root is not None else Path.cwd()).absolute()
    paths = _paths(root_dir)
    paths.logs.mkdir(parents=True, exist_ok=True)
    state = _read_state(paths)
    postgres = _postgres(paths, state, choose=True)
    broker = _broker(paths, state)
    running = (postgres.is_running(), broker.is_running())
    try:
        database_url = postgres.start()
        dagster_url = postgres.ensure_database(DAGSTER_DATABASE).replace("postgresql://", "postgresql+psycopg2://", 1)
        bootstrap_servers = broker.start()
    except BaseException:  # a half-started stack is stopped again: only what this call started
        if not running[1]:
            broker.stop()
        if not running[0]:
            postgres.stop()
        raise
    _write_state(paths, postgres, broker)
    dagster_home = _ensure_dagster_home(paths.dagster_home)
    update_env_file(
        root_dir / ".env",
        {
            ENV_DATABASE_URL: database_url,
            ENV_BOOTSTRAP: bootstrap_servers,
            ENV_DAGSTER_HOME: str(dagster_home),
            ENV_DAGSTER_DATABASE_URL: dagster_url,
            ENV_EVENT_BATCH_SIZE: EVENT_BATCH_SIZE,
            ENV_PLANNED_SUBSET: "1",
        },
    )
    return DevStack(database_url, bootstrap_servers, dagster_home)


def dev_down(root: Path | None = None) -> None:
    """Stop the broker and PostgreSQL cleanly; both keep their data for the next `dev up`."""
    paths = _paths(root)
    state = _read_state(paths)
    _broker(paths, state).stop()
    postgres = _postgres(paths, state)
    if postgres.data_dir.exists():
        postgres.stop()


def dev_status(root: Path | None = None) -> DevStatus:
    """Report whether the services recorded under `root` run, and where."""
    paths = _paths(root)
    state = _read_state(paths)
    postgres = _postgres(paths, state)
    pg_running = postgres.data_dir.exists() and postgres.is_running()
    broker = LocalBroker(paths.kafka, port=_saved_port(state, "broker"))
    preloaded, layout = _storage(postgres.url) if pg_running else (None, None)
    return DevStatus(
        database_url=postgres.url if postgres.port is not None else None,
        postgres_running=pg_running,
        bootstrap_servers=broker.bootstrap_servers if broker.port is not None else None,
        broker_running=broker.is_running(),
        data_dir=postgres.data_dir,
        broker_dir=paths.kafka,
        timescaledb_preloaded=preloaded,
        storage_layout=layout,
    )


def _storage(url: str) -> tuple[bool | None, str | None]:
    """Whether the server preloads TimescaleDB, and the layout `migrate` recorded ("not migrated" before)."""
    from mdpipeline.storage.database import connect
    from mdpipeline.storage.migrations import storage_layout, timescaledb_preloaded

    try:
        with connect(url) as conn:
            preloaded = timescaledb_preloaded(conn)
            try:
                return preloaded, storage_layout(conn)
            except (RuntimeError, psycopg.Error):
                return preloaded, "not migrated"
    except psycopg.Error:
        return None, None


def _ensure_dagster_home(dagster_home: Path) -> Path:
    """Create DAGSTER_HOME with the project's local instance config (never overwritten once there)."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    target = dagster_home / "dagster.yaml"
    if not target.exists():
        shutil.copyfile(LOCAL_INSTANCE, target)
    return dagster_home


_ENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=")


def _env_value(value: str) -> str:
    """Quote a value for `.env` only when python-dotenv would otherwise misread it."""
    if value and not re.search(r"[\s#'\"\\$]", value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def update_env_file(path: Path, values: dict[str, str]) -> None:
    """Set KEY=value lines in a `.env` file, replacing existing keys in place, keeping all other lines.

    The file may hold API keys and passwords: it is (re)written readable by its owner only (0600).
    """
    lines = path.read_text().splitlines() if path.exists() else []
    pending = dict(values)
    out: list[str] = []
    for line in lines:
        match = _ENV_LINE.match(line)
        key = match.group(1) if match else None
        if key in values:
            if key in pending:
                out.append(f"{key}={_env_value(pending.pop(key))}")
            continue  # drop duplicate definitions of a key we own
        out.append(line)
    out += [f"{key}={_env_value(value)}" for key, value in pending.items()]
    _atomic_write(path, "\n".join(out) + "\n", mode=0o600)


def _atomic_write(path: Path, text: str, mode: int | None = None) -> None:
    """Write via a temporary file and rename, so readers never see half a file; with `mode`, the file is
    created with that mode from the start (never readable by others, even for an instant)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if mode is None:
        tmp.write_text(text)
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
    else:
        tmp.unlink(missing_ok=True)
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "w") as f:
            f.write(text)
        os.chmod(tmp, mode)  # whatever the umask
    tmp.replace(path)
