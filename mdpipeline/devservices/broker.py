"""A local Apache Kafka broker (KRaft, broker and controller in one JVM) for `mdpipeline dev up` and the tests.

The broker runs from the jars `kafka_dist` resolved with Maven, with the machine's JVM, a bounded
heap and start-up oriented JVM flags. Its state lives in `home`:

- `data/` the log directory (topics, offsets, the KRaft metadata log): kept across restarts, so
  topics and messages survive `dev down` / `dev up` and a crash;
- `server.properties` written on every start (ports may change between starts);
- `broker.pid` while it runs.

Both listeners are on 127.0.0.1: clients on `port`, the controller on `controller_port`.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from mdpipeline.devservices.kafka_dist import LOG4J_CONFIG, KafkaDist, kafka_dist
from mdpipeline.devservices.postgres import free_port, port_is_free, tail

MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"
DEFAULT_HEAP = "512m"

# Single-node settings: replication factor 1 for the internal topics, no auto-created topics (as in
# the compose stack: the pipeline creates its topics with explicit settings), consumer groups
# that form at once instead of waiting 3 s for more members, a small log-cleaner buffer so the
# 512 MB heap is not spent on it, and a broker session short enough that a restart after a crash
# does not wait out the dead incarnation's registration for long.
SERVER_DEFAULTS: dict[str, str] = {
    "process.roles": "broker,controller",
    "node.id": "1",
    "controller.listener.names": "CONTROLLER",
    "inter.broker.listener.name": "PLAINTEXT",
    "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
    "num.partitions": "1",
    "auto.create.topics.enable": "false",
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "3",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "3",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "group.initial.rebalance.delay.ms": "0",
    "log.cleaner.dedupe.buffer.size": str(8 * 1024 * 1024),
    "broker.heartbeat.interval.ms": "1000",
    "broker.session.timeout.ms": "5000",
    "num.network.threads": "2",
    "num.io.threads": "4",
}

# C1 only, serial GC, no perf-data file: a JVM that starts fast and stays small; the broker's load
# here (development, tests) never needs the peak throughput of the C2 compiler.
JVM_FLAGS = ("-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-XX:-UsePerfData", "-XX:+ExitOnOutOfMemoryError",
             "-Djava.awt.headless=true")


class BrokerError(RuntimeError):
    """The local broker could not be found, started or stopped."""


def _proc_state(pid: int) -> str | None:
    """Linux process state letter (R, S, T, Z, ...), None when the process does not exist."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat_line.rsplit(")", 1)[-1].split()[0]


def _cmdline(pid: int) -> list[str]:
    """argv of a process (empty when unknown)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _pid_alive(pid: int) -> bool:
    """True for a live (non-zombie) process."""
    if Path("/proc").is_dir():
        return _proc_state(pid) not in (None, "Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _accepts_tcp(port: int, timeout: float = 0.5) -> bool:
    """True when 127.0.0.1:port accepts a TCP connection."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def new_cluster_id() -> str:
    """A random KRaft cluster id: 16 bytes, URL-safe base64 without padding, never starting with '-'."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


class LocalBroker:
    """One Apache Kafka node on 127.0.0.1, detached from our session so it outlives `dev up`."""

    def __init__(
        self,
        home: Path,
        port: int | None = None,
        log_file: Path | None = None,
        pid_file: Path | None = None,
        *,
        controller_port: int | None = None,
        heap: str = DEFAULT_HEAP,
        timeout: float = 60.0,
    ) -> None:
        self.home = Path(home).absolute()
        self._port = port
        self._controller_port = controller_port
        self.log_file = Path(log_file).absolute() if log_file else self.home / "broker.log"
        self.pid_file = Path(pid_file).absolute() if pid_file else self.home / "broker.pid"
        self.heap = heap
        self.timeout = timeout
        self._proc: subprocess.Popen[bytes] | None = None

    # -- public API --------------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        """The log directory (topics and the KRaft metadata log)."""
        return self.home / "data"

    @property
    def config_file(self) -> Path:
        """The server.properties of the current (or last) start."""
        return self.home / "server.properties"

    @property
    def port(self) -> int | None:
        """The client port the broker listens on (or will), None before one is chosen."""
        return self._listener_port("PLAINTEXT", self._port)

    @property
    def controller_port(self) -> int | None:
        """The KRaft controller's port (or the one it will use)."""
        return self._listener_port("CONTROLLER", self._controller_port)

    @property
    def bootstrap_servers(self) -> str:
        """Kafka `bootstrap.servers` for clients."""
        if self.port is None:
            raise BrokerError("no port chosen yet: call start() first")
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """Pid of the running broker, from this object or the pid file; None when not running."""
        if self._proc is not None:
            return self._proc.pid if self._proc.poll() is None else None
        pid = self._read_pid_file()
        if pid is None or not _pid_alive(pid):
            return None
        argv = _cmdline(pid)
        if argv and argv != [""] and not (MAIN_CLASS in argv and str(self.config_file) in argv):
            return None  # the pid was reused by another program
        return pid

    def start(self) -> str:
        """Start the broker (no-op when running), wait until it answers metadata; return the servers.

        Formats the log directory on the first start (a new cluster id); later starts reuse it,
        with whatever topics and messages it holds.
        """
        if self.is_running():
            return self.bootstrap_servers
        self._start(kafka_dist())
        return self.bootstrap_servers

    def stop(self) -> None:
        """Shut the broker down cleanly (SIGTERM), SIGKILL after the timeout; no-op when not running."""
        pid = self.pid
        if pid is not None:
            self._signal(pid, signal.SIGCONT)  # a stopped (SIGSTOP) JVM cannot act on SIGTERM
            self._signal(pid, signal.SIGTERM)
            if not self._wait_exit(pid, min(self.timeout, 30.0)):
                self._signal(pid, signal.SIGKILL)
                self._wait_exit(pid, 10.0)
        self._proc = None
        self.pid_file.unlink(missing_ok=True)

    def is_running(self) -> bool:
        """True when the broker process is alive."""
        return self.pid is not None

    def wait_ready(self) -> None:
        """Wait until a metadata request lists the broker (it serves clients only once unfenced).

        BrokerError when the broker process exits or the timeout passes first.
        """
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        port = self.port
        if port is None:
            raise BrokerError("no port chosen yet: call start() first")
        deadline = time.monotonic() + self.timeout
        while not _accepts_tcp(port):
            self._check_alive()
            if time.monotonic() > deadline:
                raise self._error(f"the broker did not open 127.0.0.1:{port} within {self.timeout}s")
            time.sleep(0.05)
        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, "log_level": 0})
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                if admin.list_topics(timeout=max(0.5, min(5.0, deadline - time.monotonic()))).brokers:
                    return
            except KafkaException as exc:
                last_error = exc
            time.sleep(0.05)
        raise self._error(f"the broker did not answer metadata requests within {self.timeout}s: {last_error}")

    # -- helpers ----------------------------------------------------------------------------------

    def _start(self, dist: KafkaDist, dump_archive: Path | None = None) -> None:
        """Choose ports, write the config, format a new log directory, spawn and wait until ready."""
        self._choose_ports()
        self.home.mkdir(parents=True, exist_ok=True)
        self._write_config()
        if not (self.data_dir / "meta.properties").exists():
            self._format(dist)
        self._spawn(dist, dump_archive)
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def _choose_ports(self) -> None:
        """Keep given ports (failing when taken), pick free ones for the rest."""
        for name, port in (("broker", self._port), ("controller", self._controller_port)):
            if port is not None and not port_is_free(port):
                raise BrokerError(f"cannot start the {name}: 127.0.0.1:{port} is already in use")
        if self._port is None:
            self._port = free_port()
        while self._controller_port is None or self._controller_port == self._port:
            self._controller_port = free_port()

    def _write_config(self) -> None:
        settings = {
            **SERVER_DEFAULTS,
            "listeners": f"PLAINTEXT://127.0.0.1:{self._port},CONTROLLER://127.0.0.1:{self._controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self._port},CONTROLLER://127.0.0.1:{self._controller_port}",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{self._controller_port}",
            "log.dirs": str(self.data_dir),
        }
        text = "# written by mdpipeline.devservices.broker on each start\n"
        text += "".join(f"{key}={value}\n" for key, value in settings.items())
        self.config_file.write_text(text)

    def _listener_port(self, listener: str, chosen: int | None) -> int | None:
        """A running broker's listener port (from its server.properties), else the chosen one."""
        if self.pid is None:
            return chosen
        try:
            text = self.config_file.read_text()
        except OSError:
            return chosen
        match = re.search(rf"^listeners=.*\b{listener}://[^:,]+:(\d+)", text, re.MULTILINE)
        return int(match.group(1)) if match else chosen

    def _java(self, dist: KafkaDist, main: str, *args: str, heap: str | None = None,
              dump_archive: Path | None = None) -> list[str]:
        """The JVM command line running `main` from the Kafka jars."""
        cmd = [dist.java, f"-Xmx{heap or self.heap}", *JVM_FLAGS, f"-Dlog4j2.configurationFile={LOG4J_CONFIG}"]
        if dump_archive is not None:
            cmd += [f"-XX:ArchiveClassesAtExit={dump_archive}", "-Xlog:cds=off", "-Xlog:cds+dynamic=off"]
        elif dist.class_archive.is_file():
            cmd += ["-Xshare:auto", f"-XX:SharedArchiveFile={dist.class_archive}", "-Xlog:cds=off",
                    "-Xlog:cds+dynamic=off"]
        return [*cmd, "-cp", dist.classpath(), main, *args]

    def _format(self, dist: KafkaDist) -> None:
        """Format the log directory as a new single-voter (standalone) KRaft cluster."""
        cmd = self._java(dist, STORAGE_TOOL, "format", "--standalone", "--cluster-id", new_cluster_id(),
                         "--config", str(self.config_file), heap="256m")
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=self.timeout, cwd=self.home)
        if out.returncode != 0:
            raise BrokerError(f"formatting {self.data_dir} failed:\n{out.stdout}{out.stderr}")

    def _spawn(self, dist: KafkaDist, dump_archive: Path | None = None) -> None:
        """Launch the JVM in its own session, output appended to the log file, and record its pid."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            self._proc = subprocess.Popen(
                self._java(dist, MAIN_CLASS, str(self.config_file), dump_archive=dump_archive),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.home,
            )
        self.pid_file.write_text(f"{self._proc.pid}\n")

    def _check_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise self._error(f"the broker exited with status {self._proc.returncode}")

    def _error(self, message: str) -> BrokerError:
        return BrokerError(f"{message}; log {self.log_file}:\n{tail(self.log_file)}")

    def _read_pid_file(self) -> int | None:
        try:
            text = self.pid_file.read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def _signal(self, pid: int, sig: signal.Signals) -> None:
        """Signal the broker's process group (it leads its own session), else just the pid."""
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        """Wait until pid is gone (reaping it when it is our child); True when it exited."""
        if self._proc is not None and self._proc.pid == pid:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout
        while _pid_alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True


def prepare_kafka() -> KafkaDist:
    """Resolve the jars (Maven, once) and write the class-data archive that speeds up every start.

    The archive is recorded by a throwaway broker started, made ready and shut down in a temporary
    directory; it is renamed into place only when complete. Idempotent.
    """
    dist = kafka_dist()
    if dist.class_archive.is_file():
        return dist
    root = Path(tempfile.mkdtemp(prefix="mdp-kafka-cds-"))
    staging = dist.home / f".{dist.class_archive.name}.{os.getpid()}.tmp"
    broker = LocalBroker(root)
    try:
        broker._start(dist, dump_archive=staging)
        broker.stop()  # the JVM writes the archive while it exits
        if staging.is_file() and staging.stat().st_size:
            staging.rename(dist.class_archive)
    finally:
        broker.stop()
        staging.unlink(missing_ok=True)
        shutil.rmtree(root, ignore_errors=True)
    return dist
