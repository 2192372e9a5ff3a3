"""A throwaway local PostgreSQL cluster for `mdpipeline dev up` and the tests.

It drives the server binaries (initdb, pg_ctl) directly so that development needs no Docker and no
system service. PostgreSQL refuses to run as root, so when we are root every server command runs as
the `postgres` system user (via `runuser`) against a data directory that user owns.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import psycopg
import psycopg.sql

DATABASE = "mdpipeline"
SUPERUSER = "postgres"
MIN_MAJOR_VERSION = 14
TIMESCALEDB = "timescaledb"
_INSTALL_HINT = "install PostgreSQL 14+ server binaries, e.g. apt-get install postgresql"


class PostgresError(RuntimeError):
    """The local PostgreSQL cluster could not be set up, started or stopped."""


def free_port() -> int:
    """Ask the kernel for a currently unused TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:port.

    SO_REUSEADDR, as servers set it, so that connections of a previous run still in TIME_WAIT do not
    count as "in use".
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def tail(path: Path | None, lines: int = 30) -> str:
    """The last lines of a log file, for error messages (empty when unreadable)."""
    if path is None:
        return ""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _version_key(path: Path) -> tuple[int, ...]:
    """Sort key for /usr/lib/postgresql/<version>/bin directories."""
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name)) or (0,)


def find_bindir() -> Path:
    """Locate the server binaries: pg_config --bindir, then /usr/lib/postgresql/*/bin, then PATH."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], check=False, capture_output=True, text=True, timeout=10
            )
            if out.returncode == 0 and out.stdout.strip():
                candidates.append(Path(out.stdout.strip()))
        except (OSError, subprocess.SubprocessError):
            pass
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for bindir in candidates:
        if all(os.access(bindir / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres")):
            return bindir
    raise PostgresError(f"PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: {_INSTALL_HINT}")


def _pg_config_dir(bindir: Path, option: str) -> Path | None:
    """A directory `pg_config` of these binaries reports (`--pkglibdir`, `--sharedir`), None when unknown."""
    pg_config = bindir / "pg_config"
    if not os.access(pg_config, os.X_OK):
        return None
    try:
        out = subprocess.run([str(pg_config), option], check=False, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else None


def timescaledb_installed(bindir: Path | None = None) -> bool:
    """True when the server binaries' library directory holds TimescaleDB's loader, so it can be preloaded.

    Only says what is on disk: whether a database can use it is decided by `migrate`, which asks the
    running server (mdpipeline.storage.migrations.timescale_available).
    """
    try:
        bindir = bindir or find_bindir()
    except PostgresError:
        return False
    libdir = _pg_config_dir(bindir, "--pkglibdir") or bindir.parent / "lib"
    return (libdir / f"{TIMESCALEDB}.so").exists()


def server_major_version(bindir: Path) -> int:
    """The major version of the `postgres` binary in bindir."""
    cmd = [str(bindir / "postgres"), "--version"]
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=10)
    match = re.search(r"(\d+)(?:\.\d+)?", out.stdout)
    if out.returncode != 0 or not match:
        raise PostgresError(f"cannot tell the version of {bindir / 'postgres'}: {out.stderr.strip()}")
    return int(match.group(1))


class LocalPostgres:
    """One local PostgreSQL cluster in `data_dir`, listening on 127.0.0.1 only, trust authentication.

    `fast=True` turns off fsync, synchronous_commit and full_page_writes: quicker, but a crash can
    corrupt the cluster, so it is meant for tests only, never for `dev up`.

    `timescaledb`: preload the TimescaleDB extension (`shared_preload_libraries`, telemetry off) —
    None (the default) when the server binaries have it installed, False never (a plain server even
    where it is installed), True always. `background_jobs=False` starts no TimescaleDB job scheduler
    (`timescaledb.max_background_workers=0`): policies stay registered but run only when called
    (`CALL run_job(id)`), which keeps tests deterministic and lets databases be cloned from templates.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        log_file: Path | None = None,
        *,
        fast: bool = False,
        timeout: float = 60.0,
        timescaledb: bool | None = None,
        background_jobs: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.log_file = Path(log_file).absolute() if log_file else self.data_dir.parent / "postgres.log"
        self.fast = fast
        self.timeout = timeout
        self._port = port
        self._bindir: Path | None = None
        self._timescaledb = timescaledb
        self.background_jobs = background_jobs

    # -- public API --------------------------------------------------------------------------------

    @property
    def port(self) -> int | None:
        """The port the cluster listens on (or will), None before one is chosen."""
        return self._running_port() or self._port

    @property
    def url(self) -> str:
        """Connection URL of the `mdpipeline` database."""
        if self.port is None:
            raise PostgresError("no port chosen yet: call start() first")
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def preloads_timescaledb(self) -> bool:
        """Whether this cluster starts with TimescaleDB preloaded (decided once, from what is installed)."""
        if self._timescaledb is None:
            self._timescaledb = timescaledb_installed(Path(self._bin("postgres")).parent)
        return self._timescaledb

    @property
    def pid(self) -> int | None:
        """The postmaster's pid from postmaster.pid, when the file exists."""
        fields = self._pid_file_fields()
        return int(fields[0]) if fields and fields[0].strip().isdigit() else None

    def start(self) -> str:
        """Initialise the cluster if needed, start it, create the database; return its URL.

        Idempotent: when the cluster already runs, only the database is ensured.
        """
        if not self.is_running():
            self._prepare_dirs()
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb()
            if self._port is None:
                self._port = free_port()
            self._pg_ctl_start()
        self._ensure_database()
        return self.url

    def stop(self) -> None:
        """Stop the cluster (fast shutdown: roll back open transactions); no-op when not running."""
        if not self.is_running():
            return
        wait = ["-w", "-t", str(int(self.timeout))]
        out = self._run([self._bin("pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast", *wait])
        if out.returncode != 0 and self.is_running():
            raise PostgresError(f"pg_ctl stop failed: {out.stdout}{out.stderr}\n{self._log_tail()}")

    def is_running(self) -> bool:
        """True when a postmaster serves this data directory."""
        if not (self.data_dir / "postmaster.pid").exists():
            return False
        out = self._run([self._bin("pg_ctl"), "status", "-D", str(self.data_dir)])
        return out.returncode == 0

    # -- helpers ----------------------------------------------------------------------------------

    def _bin(self, name: str) -> str:
        """Absolute path of one server binary, checking the version on first use."""
        if self._bindir is None:
            bindir = find_bindir()
            major = server_major_version(bindir)
            if major < MIN_MAJOR_VERSION:
                raise PostgresError(f"PostgreSQL {major} found in {bindir}, need 14+: {_INSTALL_HINT}")
            self._bindir = bindir
        return str(self._bindir / name)

    @staticmethod
    def _as_root() -> bool:
        return os.geteuid() == 0

    def _run(self, cmd: list[str], timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        """Run a server command, as the `postgres` user when we are root."""
        if self._as_root():
            cmd = ["runuser", "-u", SUPERUSER, "--", *cmd]
        try:
            limit = timeout or self.timeout + 10
            return subprocess.run(cmd, check=False, capture_output=True, text=True, cwd="/", timeout=limit)
        except subprocess.TimeoutExpired as exc:
            message = f"timed out after {exc.timeout}s: {' '.join(cmd)}"
            raise PostgresError(f"{message}\n{self._log_tail()}") from exc

    def _prepare_dirs(self) -> None:
        """Create the data dir and log file, owned by the server user and reachable by it."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.touch(exist_ok=True)
        if self._as_root():
            import pwd

            entry = pwd.getpwnam(SUPERUSER)
            _chown_tree(self.data_dir, entry.pw_uid, entry.pw_gid)
            os.chown(self.log_file, entry.pw_uid, entry.pw_gid)
            self._check_reachable()
        self.data_dir.chmod(0o700)

    def _check_reachable(self) -> None:
        """Fail clearly when the `postgres` user cannot reach the data dir or the log file."""
        for path, test in ((self.data_dir, "-w"), (self.log_file, "-w")):
            out = self._run(["test", test, str(path)], timeout=10)
            if out.returncode != 0:
                raise PostgresError(
                    f"the '{SUPERUSER}' user cannot reach {path}: every parent directory must be "
                    f"traversable by it (e.g. `chmod o+x` on each parent), or choose a directory "
                    f"such as one under /tmp"
                )

    def _initdb(self) -> None:
        """Create a new cluster: trust auth, UTF8, no locale (deterministic sorting, fast)."""
        cmd = [
            self._bin("initdb"),
            "-D",
            str(self.data_dir),
            "--auth=trust",
            f"--username={SUPERUSER}",
            "--encoding=UTF8",
            "--no-locale",
        ]
        if self.fast:
            cmd.append("--no-sync")
        out = self._run(cmd)
        if out.returncode != 0:
            raise PostgresError(f"initdb failed in {self.data_dir}:\n{out.stdout}{out.stderr}")

    def _server_options(self) -> str:
        """Options passed to `postgres` on each start (port may change between starts)."""
        opts = [f"-p {self._port}", "-c listen_addresses=127.0.0.1", "-c unix_socket_directories=''"]
        if self.fast:
            opts += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        if self.preloads_timescaledb:
            opts += [f"-c shared_preload_libraries={TIMESCALEDB}", "-c timescaledb.telemetry_level=off"]
            if not self.background_jobs:
                opts.append("-c timescaledb.max_background_workers=0")
        return " ".join(opts)

    def _pg_ctl_start(self) -> None:
        """Start the server and wait until it accepts connections."""
        cmd = [
            self._bin("pg_ctl"),
            "start",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-w",
            "-t",
            str(int(self.timeout)),
            "-o",
            self._server_options(),
        ]
        out = self._run(cmd)
        if out.returncode != 0:
            raise PostgresError(
                f"PostgreSQL did not start on port {self._port} within {self.timeout}s "
                f"({out.stdout.strip()} {out.stderr.strip()}); "
                f"server log {self.log_file}:\n{self._log_tail()}"
            )

    def _ensure_database(self) -> None:
        """Create the `mdpipeline` database unless it exists."""
        self.ensure_database(DATABASE)

    def ensure_database(self, name: str) -> str:
        """Create database `name` on the running cluster unless it exists; returns its URL."""
        admin_url = f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"
        try:
            with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
                exists = conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone()
                if not exists:
                    conn.execute(psycopg.sql.SQL("create database {}").format(psycopg.sql.Identifier(name)))
        except psycopg.Error as exc:
            raise PostgresError(f"cannot create database {name}: {exc}\n{self._log_tail()}") from exc
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{name}"

    def _pid_file_fields(self) -> list[str]:
        """Lines of postmaster.pid (pid, data dir, start time, port, ...), empty when absent."""
        try:
            return (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return []

    def _running_port(self) -> int | None:
        """The port recorded by a running (or crashed) postmaster."""
        fields = self._pid_file_fields()
        return int(fields[3]) if len(fields) > 3 and fields[3].strip().isdigit() else None

    def _log_tail(self) -> str:
        return tail(self.log_file)


def server_user_can_reach(directory: Path) -> bool:
    """Whether the server's user can traverse into `directory` (always, when we are not root: the
    server then runs as us)."""
    if os.geteuid() != 0:
        return True
    out = subprocess.run(["runuser", "-u", SUPERUSER, "--", "test", "-x", str(directory)], check=False,
                         capture_output=True, text=True, cwd="/", timeout=30)
    return out.returncode == 0


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    """chown -R, skipped when the top already belongs to uid (the usual restart case)."""
    if root.stat().st_uid == uid:
        return
    os.chown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)
