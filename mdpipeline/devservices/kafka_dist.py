"""The Apache Kafka jars the embedded broker runs from: resolved once by Maven, then used offline.

`devservices/kafka/pom.xml` pins the release. `kafka_dist()` copies its runtime jars from Maven
Central into a per-user cache (`$MDP_KAFKA_HOME`, else `$XDG_CACHE_HOME/mdpipeline/kafka-<version>`,
else `~/.cache/mdpipeline/kafka-<version>`) the first time, with `mvn dependency:copy-dependencies`;
every later start finds them there and needs no network. The cache can also hold a class-data
sharing archive of the broker's classes (`class_archive`), which makes each JVM start faster.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

POM = Path(__file__).parent / "kafka" / "pom.xml"
LOG4J_CONFIG = Path(__file__).parent / "kafka" / "log4j2.properties"
ENV_KAFKA_HOME = "MDP_KAFKA_HOME"
MIN_JAVA = 17  # Apache Kafka 4 brokers need Java 17+
_POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}
_INSTALL_HINT = ("install a JRE 17+ and Maven (e.g. apt-get install default-jre-headless maven), "
                 "or run ./scripts/bootstrap.sh")


class KafkaDistError(RuntimeError):
    """Java or the Kafka jars are missing and cannot be had."""


def kafka_version() -> str:
    """The Apache Kafka release pinned in the pom (`kafka.version`)."""
    root = ET.parse(POM).getroot()
    version = root.findtext("m:properties/m:kafka.version", namespaces=_POM_NS)
    if not version:
        raise KafkaDistError(f"{POM} does not set kafka.version")
    return version.strip()


def cache_dir() -> Path:
    """Where the jars of the pinned release live (created on resolution)."""
    given = os.environ.get(ENV_KAFKA_HOME)
    if given:
        return Path(given).expanduser().absolute()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "mdpipeline" / f"kafka-{kafka_version()}"


@dataclass(frozen=True)
class KafkaDist:
    """A resolved Kafka: its jars and the JVM that runs them."""

    home: Path
    java: str
    java_version: str

    @property
    def libs(self) -> Path:
        """The directory of runtime jars."""
        return self.home / "libs"

    def classpath(self) -> str:
        """Every jar, sorted: a fixed order, as a class-data archive requires."""
        return os.pathsep.join(str(p) for p in sorted(self.libs.glob("*.jar")))

    @property
    def class_archive(self) -> Path:
        """The class-data sharing archive for this JVM (valid only for the JVM that wrote it)."""
        digest = hashlib.sha256(self.java_version.encode()).hexdigest()[:12]
        return self.home / f"classes-{digest}.jsa"


def find_java() -> tuple[str, str]:
    """The `java` to run (JAVA_HOME's, else PATH's) and its `-version` text; 17+ or KafkaDistError."""
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java or not os.access(java, os.X_OK):
        raise KafkaDistError(f"java not found: {_INSTALL_HINT}")
    return java, _java_version(java)


@cache
def _java_version(java: str) -> str:
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False, timeout=30)
    text = (out.stderr or out.stdout).strip()
    match = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    major = int(match.group(1)) if match else 0
    if major == 1 and match and match.group(2):  # "1.8.0_x"
        major = int(match.group(2))
    if major < MIN_JAVA:
        raise KafkaDistError(f"{java} is Java {major or '?'}; Apache Kafka {kafka_version()} needs {MIN_JAVA}+: "
                             f"{_INSTALL_HINT}")
    return text


def kafka_dist(*, resolve: bool = True) -> KafkaDist:
    """The pinned Kafka with its jars in the cache, resolving them with Maven first when missing.

    Resolution writes into a temporary directory renamed into place, under a file lock, so
    concurrent callers (parallel test workers) neither resolve twice nor see half a directory.
    """
    java, version = find_java()
    dist = KafkaDist(cache_dir(), java, version)
    if _complete(dist.libs):
        return dist
    if not resolve:
        raise KafkaDistError(f"the Kafka {kafka_version()} jars are not in {dist.libs}: run `mdpipeline dev prepare`")
    dist.home.mkdir(parents=True, exist_ok=True)
    with _locked(dist.home / ".lock"):
        if not _complete(dist.libs):
            _resolve(dist.libs)
    return dist


def _complete(libs: Path) -> bool:
    return (libs / ".complete").is_file()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _resolve(libs: Path) -> None:
    """`mvn dependency:copy-dependencies` of the pom into `libs` (replacing an incomplete one)."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaDistError(f"Maven (mvn) not found, needed once to fetch Apache Kafka {kafka_version()}: "
                             f"{_INSTALL_HINT}")
    staging = Path(tempfile.mkdtemp(prefix=".libs-", dir=libs.parent))
    cmd = [mvn, "-B", "-q", "-f", str(POM), "dependency:copy-dependencies", "-DincludeScope=runtime",
           f"-DoutputDirectory={staging}"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=900, cwd=staging)
        if out.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
            raise KafkaDistError(f"`{' '.join(cmd)}` failed ({out.returncode}):\n{(out.stdout + out.stderr)[-3000:]}")
        (staging / ".complete").write_text(kafka_version() + "\n")
        shutil.rmtree(libs, ignore_errors=True)
        for archive in libs.parent.glob("classes-*.jsa"):  # recorded from the jars being replaced
            archive.unlink(missing_ok=True)
        staging.rename(libs)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
