"""`dagster dev` as a user runs it, for the UI tests: the process, its GraphQL API, and shared fixtures.

Test modules load this as a plugin (`pytest_plugins = ["mdpipeline_tests.ui_helpers"]`) so the
session fixtures below exist once: the GraphQL test and the browser test share one `dagster dev`
(webserver + daemon) and one completed backfill.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from psycopg import sql

from mdpipeline.devservices.stack import LOCAL_INSTANCE
from mdpipeline.sessions import session_dates

REPO_ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO_ROOT / "test-artifacts"
LOCATION = "mdpipeline"
PROVIDER = "synthetic"
LAYERS = ("raw", "validated", "normalized", "md", "published")
UI_START, UI_END = date(2024, 6, 3), date(2024, 6, 7)  # 5 sessions
STARTUP_TIMEOUT = 180.0
BACKFILL_TIMEOUT = 300.0

# The mutation the UI sends from the asset graph's "Materialize" -> "Launch backfill" dialog
# (ui-core/src/instance/backfill/BackfillUtils.tsx, with the error fragment inlined).
LAUNCH_PARTITION_BACKFILL = """
mutation LaunchPartitionBackfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PartitionSetNotFoundError { message }
    ... on PartitionKeysNotFoundError { message }
    ... on InvalidStepError { invalidStepKey }
    ... on InvalidOutputError { stepKey invalidOutputName }
    ... on UnauthorizedError { message }
    ... on PipelineNotFoundError { message }
    ... on RunConflict { message }
    ... on ConflictingExecutionParamsError { message }
    ... on PresetNotFoundError { message }
    ... on RunConfigValidationInvalid { pipelineName errors { message path reason } }
    ... on PythonError { message stack }
  }
}
"""

BACKFILL_STATUS = """
query BackfillStatus($backfillId: String!) {
  partitionBackfillOrError(backfillId: $backfillId) {
    __typename
    ... on PartitionBackfill {
      id status isAssetBackfill numPartitions
      error { message }
      runs { runId status tags { key value } }
    }
    ... on PythonError { message }
  }
}
"""

WORKSPACE_STATUS = """
query WorkspaceStatus {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name loadStatus
        locationOrLoadError { __typename ... on PythonError { message } }
      }
    }
  }
  instance { daemonHealth { allDaemonStatuses { daemonType healthy required } } }
}
"""

# Config a user can add in the launch dialog: run every step in the run worker's process instead of
# one subprocess per step (each of which imports the code location again, ~10 s on a small machine).
IN_PROCESS = "execution:\n  config:\n    in_process: {}\n"

TERMINAL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def asset_paths(provider: str = PROVIDER) -> list[list[str]]:
    """Key paths of one provider's daily-bar chain, raw -> published."""
    return [[layer, provider, "bars_1d"] for layer in LAYERS]


def session_keys(start: date = UI_START, end: date = UI_END) -> list[str]:
    """Partition keys (session dates) in [start, end]."""
    return [d.isoformat() for d in session_dates(start, end)]


@dataclass
class DagsterDev:
    """A `dagster dev -w workspace.yaml` process (webserver + daemon) on a loopback port."""

    home: Path
    env: dict[str, str]
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL of the webserver."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        """stdout and stderr of `dagster dev`."""
        return self.home / "dagster-dev.log"

    def start(self) -> None:
        """Start the process in its own process group (so teardown can end every child)."""
        with self.log_file.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml",
                 "-p", str(self.port), "-h", "127.0.0.1"],
                cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def log_tail(self, lines: int = 60) -> str:
        """The end of the process log, for failure messages."""
        text = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """POST a GraphQL document to /graphql; raise on transport or GraphQL errors."""
        response = requests.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}},
                                 timeout=30)
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise AssertionError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def wait_until_ready(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Until the code location is loaded and the daemon's backfill loop reports healthy."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"dagster dev exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                data = self.graphql(WORKSPACE_STATUS)
            except (requests.RequestException, AssertionError) as err:
                last = err
                time.sleep(0.5)
                continue
            entries = data["workspaceOrError"].get("locationEntries", [])
            loaded = [e for e in entries if e["name"] == LOCATION and e["loadStatus"] == "LOADED"]
            if loaded and loaded[0]["locationOrLoadError"]["__typename"] == "PythonError":
                raise AssertionError(f"code location failed to load: {loaded[0]['locationOrLoadError']}")
            daemons = {d["daemonType"]: d["healthy"] for d in data["instance"]["daemonHealth"]["allDaemonStatuses"]}
            if loaded and daemons.get("BACKFILL") and daemons.get("QUEUED_RUN_COORDINATOR"):
                return
            last = (entries, daemons)
            time.sleep(0.5)
        raise AssertionError(f"dagster dev not ready after {timeout}s ({last}):\n{self.log_tail()}")

    def stop(self) -> None:
        """End the whole process group: webserver, daemon, code server and any run worker."""
        if self.process is None or self.process.poll() is not None:
            return
        pgid = os.getpgid(self.process.pid)
        os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)  # stragglers that ignored SIGTERM
        self.process.wait(timeout=10)


def launch_backfill(ui: DagsterDev, paths: Sequence[Sequence[str]], partition_names: Sequence[str],
                    run_config_yaml: str | None = IN_PROCESS) -> str:
    """Launch a partition backfill of assets exactly as the UI's asset graph does; returns its id.

    `run_config_yaml` is what the dialog's "Config" section sends (YAML text, for every run).
    """
    params: dict[str, Any] = {
        "tags": [{"key": "dagster/from_ui", "value": "true"}],
        "assetSelection": [{"path": list(p)} for p in paths],
        "partitionNames": list(partition_names),
        "fromFailure": False,
    }
    if run_config_yaml:
        params["runConfigData"] = run_config_yaml
    result = ui.graphql(LAUNCH_PARTITION_BACKFILL, {"backfillParams": params})["launchPartitionBackfill"]
    assert result["__typename"] == "LaunchBackfillSuccess", result
    return str(result["backfillId"])


def wait_for_backfill(ui: DagsterDev, backfill_id: str, timeout: float = BACKFILL_TIMEOUT) -> dict[str, Any]:
    """Poll the backfill until it reaches a terminal status (the daemon runs it); returns it with its runs."""
    deadline = time.monotonic() + timeout
    backfill: dict[str, Any] = {}
    while time.monotonic() < deadline:
        backfill = ui.graphql(BACKFILL_STATUS, {"backfillId": backfill_id})["partitionBackfillOrError"]
        assert backfill["__typename"] == "PartitionBackfill", backfill
        if backfill["status"] in TERMINAL:
            return backfill
        time.sleep(1.0)
    raise AssertionError(f"backfill {backfill_id} still {backfill.get('status')} after {timeout}s:\n{ui.log_tail()}")


@pytest.fixture(scope="session")
def ui_database_url(pg_server_url: str, template_db: str) -> Iterator[str]:
    """A migrated database of its own for the `dagster dev` session."""
    name = f"ui_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {} template {}").format(sql.Identifier(name),
                                                                       sql.Identifier(template_db)))
    yield pg_server_url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def dagster_ui(ui_database_url: str, kafka_bootstrap: str, pg_server_url: str,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterDev]:
    """`dagster dev` (webserver + daemon) against the test database and broker, with the local instance
    config `dev up` installs (Dagster's storage in a database of its own on the test server)."""
    home = tmp_path_factory.mktemp("dagster-home")
    shutil.copy(LOCAL_INSTANCE, home / "dagster.yaml")
    storage = f"dagster_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(storage)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MDP_", "DAGSTER_"))}
    env.update({
        "DAGSTER_HOME": str(home),
        "MDP_DATABASE_URL": ui_database_url,
        "MDP_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "MDP_FRAMES_DIR": str(home / "frames"),
        "MDP_DAGSTER_DATABASE_URL": pg_server_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg2://")
        + "/" + storage,
        "DAGSTER_EVENT_BATCH_SIZE": "1000",
        "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "1",
        "PYTHONUNBUFFERED": "1",
    })
    ui = DagsterDev(home=home, env=env, port=free_port())
    ui.start()
    try:
        ui.wait_until_ready()
        # What clicking "Skip" on the first-visit "Join the Dagster community" dialog records, so the
        # browser test sees the pages, not the dialog.
        ui.graphql("mutation SetNuxSeen { setNuxSeen }")
        yield ui
    finally:
        ui.stop()


@pytest.fixture(scope="session")
def ui_backfill(dagster_ui: DagsterDev) -> dict[str, Any]:
    """The synthetic chain backfilled over UI_START..UI_END from the UI's GraphQL call, completed."""
    backfill_id = launch_backfill(dagster_ui, asset_paths(), session_keys())
    backfill = wait_for_backfill(dagster_ui, backfill_id)
    assert backfill["status"] == "COMPLETED_SUCCESS", (backfill, dagster_ui.log_tail())
    return backfill
