#!/usr/bin/env bash
# Set up everything mdpipeline needs on a fresh Debian machine: PostgreSQL server binaries, a Java
# runtime and Maven (for the embedded Apache Kafka broker) and Chromium (for the browser test of the
# Dagster UI), all Debian packages; the TimescaleDB extension when ../shared/timescaledb holds a build
# of it (next to the repository's directory: CI and the development machines); a virtualenv in .venv
# with the project and its dev tools; and the Kafka broker's jars, fetched once by Maven into
# ~/.cache/mdpipeline (or $MDP_KAFKA_HOME).
# Safe to run again: only what is missing gets installed.
set -euo pipefail
cd "$(dirname "$0")/.."

have_postgres() {
  command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ] && return 0
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}

APT_UPDATED=
apt_install() {  # quiet, non-interactive; `apt-get update` at most once per bootstrap
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  if [ -z "$APT_UPDATED" ]; then
    $SUDO apt-get update -qq
    APT_UPDATED=1
  fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! have_postgres; then
  echo "bootstrap: installing PostgreSQL server binaries (Debian package postgresql)"
  apt_install postgresql
fi

# TimescaleDB for the machine's PostgreSQL, from ../shared/timescaledb when that folder exists (its
# install.sh is idempotent and needs root; --check tells whether it is installed). Without it, local
# clusters and the tests use the plain partitioned layout only.
SHARED_TIMESCALEDB=$(cd .. && pwd)/shared/timescaledb
if [ -x "$SHARED_TIMESCALEDB/install.sh" ]; then
  if "$SHARED_TIMESCALEDB/install.sh" --check; then
    echo "bootstrap: TimescaleDB already installed ($SHARED_TIMESCALEDB)"
  else
    echo "bootstrap: installing TimescaleDB from $SHARED_TIMESCALEDB"
    if [ "$(id -u)" -ne 0 ]; then sudo "$SHARED_TIMESCALEDB/install.sh"; else "$SHARED_TIMESCALEDB/install.sh"; fi
  fi
fi

have_java17() {  # Apache Kafka 4 brokers need Java 17+
  command -v java >/dev/null 2>&1 || return 1
  local major
  major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1)
  [ -n "$major" ] && [ "$major" -ge 17 ]
}

if ! have_java17; then
  echo "bootstrap: installing a Java runtime (Debian package default-jre-headless)"
  apt_install default-jre-headless
fi
if ! command -v mvn >/dev/null 2>&1; then
  echo "bootstrap: installing Maven (Debian package maven)"
  apt_install maven
fi

# Headless Chromium for mdpipeline_tests/test_browser.py (Playwright's browser download cannot work here).
if [ ! -x /usr/bin/chromium ]; then
  echo "bootstrap: installing Chromium (Debian package chromium)"
  apt_install chromium
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[dev]'
# The broker's jars (Maven Central, once) and its class-data archive; a no-op when already there.
.venv/bin/mdpipeline dev prepare
echo "bootstrap: ready (.venv)"
