#!/usr/bin/env bash
# Set up everything mdpipeline needs on a fresh Debian machine: PostgreSQL server binaries and
# Chromium (for the browser test of the Dagster UI), both Debian packages, and a virtualenv in .venv
# with the project and its dev tools. Safe to run again: only what is missing gets installed.
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
echo "bootstrap: ready (.venv)"
