"""Database faults under a real backfill: the server restarted mid-load, the loading session terminated,
two overlapping backfills at once. Each ends in the state a clean run leaves (rows, quarantine, events),
with every outbox row confirmed by the broker. (A `kill -9` of the backfill itself:
`test_chunking.py::test_a_backfill_killed_with_sigkill_leaves_whole_chunks_and_a_rerun_converges`.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import psycopg
import pytest

from mdpipeline.chunks import CHUNK_ROWS_ENV
from mdpipeline.devservices import LocalPostgres
from mdpipeline.storage.database import connect
from mdpipeline.storage.migrations import migrate
from mdpipeline_tests.faults.invariants import assert_outbox_drained
from mdpipeline_tests.pipeline_helpers import universe_with
from mdpipeline_tests.test_chunking import ANOMALIES, CLI, END, START, _run, state

pytestmark = pytest.mark.faults
CHUNK = 6 * 390  # one session of the six symbols' minute bars per chunk
LOAD_LOCK = "mdpipeline.load:md.bars_1m:synthetic"  # the advisory lock a minute-bar chunk's load holds


@pytest.fixture
def own_postgres() -> Iterator[LocalPostgres]:
    """A PostgreSQL server of this test alone (restarting it never touches the session's), migrated."""
    root = Path(tempfile.mkdtemp(prefix="mdp-pg-fault-"))
    root.chmod(0o755)  # the server runs as the postgres user when the tests run as root
    server = LocalPostgres(root / "data", log_file=root / "postgres.log", fast=True, background_jobs=False)
    with connect(server.start()) as conn:
        migrate(conn)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def _backfill(database_url: str, kafka_bootstrap: str, universe: Path, workdir: Path, start: date, end: date,
              log: Path) -> subprocess.Popen[bytes]:
    """`mdpipeline backfill` of the synthetic provider as a process of its own, output into `log`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MDP_", "DAGSTER_HOME"))}
    env |= {"MDP_DATABASE_URL": database_url, "MDP_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "MDP_UNIVERSE": str(universe), "MDP_FRAMES_DIR": str(workdir / "frames"), CHUNK_ROWS_ENV: str(CHUNK)}
    command = [CLI, "backfill", "--start", start.isoformat(), "--end", end.isoformat(), "--provider", "synthetic"]
    with log.open("wb") as out:
        return subprocess.Popen(command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)


def _wait_until(condition: Callable[[], bool], child: subprocess.Popen[bytes], what: str,
                timeout: float = 240) -> None:
    """Poll `condition` while the backfill runs; fail if it ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and child.poll() is None:
        if condition():
            return
        time.sleep(0.01)
    pytest.fail(f"the backfill ended (or {timeout}s passed) before {what}")


def _finished(child: subprocess.Popen[bytes], log: Path) -> None:
    code = child.wait(300)
    assert code == 0, f"backfill exited {code}:\n{log.read_text()[-4000:]}"


def _assert_converged(database_url: str, reference_url: str, kafka_bootstrap: str) -> None:
    """The database holds what a clean run holds, and every outbox row was confirmed by the broker."""
    got, expected = state(database_url), state(reference_url)
    for name in ("bars_1d", "bars_1m", "actions", "quarantine"):
        assert got[name].equals(expected[name]), name
    assert set(got["events"]["event_id"]) == set(expected["events"]["event_id"])
    with connect(database_url) as conn:
        pending = conn.execute("select count(*) from ops.outbox").fetchone()
        assert pending == (0,), "the backfill's publish steps left outbox rows unconfirmed"
        assert_outbox_drained(conn, kafka_bootstrap)


def _sessions_stored(database_url: str) -> int:
    with connect(database_url) as conn:
        row = conn.execute("select count(distinct session_date) from md.bars_1m").fetchone()
    return int(row[0]) if row else 0


def _reference(new_database: Callable[[], str], kafka_bootstrap: str, universe: Path, tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> str:
    url = new_database()
    assert _run(url, kafka_bootstrap, universe, tmp_path / "reference", monkeypatch, None).success
    return url


def test_postgres_restarted_in_the_middle_of_a_backfill(own_postgres: LocalPostgres, new_database: Callable[[], str],
                                                        kafka_bootstrap: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    universe = universe_with(tmp_path, anomalies=ANOMALIES)
    url, log = own_postgres.url, tmp_path / "backfill.log"
    child = _backfill(url, kafka_bootstrap, universe, tmp_path, START, END, log)
    _wait_until(lambda: _sessions_stored(url) >= 1, child, "a chunk of minute bars was stored")
    own_postgres.stop()  # fast shutdown: every session of the backfill is terminated mid-flight
    assert child.poll() is None, "the restart did not happen during the backfill"
    time.sleep(1.0)  # connections are refused meanwhile
    own_postgres.start()
    _finished(child, log)  # the failed step was retried once the server was back
    _assert_converged(url, _reference(new_database, kafka_bootstrap, universe, tmp_path, monkeypatch),
                      kafka_bootstrap)


def test_the_loading_session_terminated(database_url: str, new_database: Callable[[], str], kafka_bootstrap: str,
                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    universe = universe_with(tmp_path, anomalies=ANOMALIES)
    log = tmp_path / "backfill.log"
    terminated: list[int] = []
    with connect(database_url) as admin:
        def terminate_the_loader() -> bool:
            # The session holding a minute-bar chunk's load lock is in the middle of that chunk's transaction.
            rows = admin.execute(
                "select pid, pg_terminate_backend(pid) from pg_locks where locktype = 'advisory' and granted"
                " and database = (select oid from pg_database where datname = current_database())"
                " and objid = (hashtext(%s)::bigint & 4294967295)::oid and pid <> pg_backend_pid()",
                (LOAD_LOCK,)).fetchall()
            terminated.extend(pid for pid, done in rows if done)
            return bool(terminated)

        child = _backfill(database_url, kafka_bootstrap, universe, tmp_path, START, END, log)
        _wait_until(terminate_the_loader, child, "a minute-bar load was caught")
        stored = admin.execute("select session_date, count(distinct symbol) from md.bars_1m group by 1").fetchall()
    assert all(symbols == 6 for _, symbols in stored)  # the terminated chunk left nothing; the others are whole
    _finished(child, log)
    _assert_converged(database_url, _reference(new_database, kafka_bootstrap, universe, tmp_path, monkeypatch),
                      kafka_bootstrap)


def test_two_overlapping_backfills_at_once(database_url: str, new_database: Callable[[], str], kafka_bootstrap: str,
                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    universe = universe_with(tmp_path, anomalies=ANOMALIES)
    early, late = tmp_path / "early", tmp_path / "late"
    early.mkdir()
    late.mkdir()
    # 06-03..06-06 and 06-04..06-07: three sessions in common, each run loading its own chunks of them.
    first = _backfill(database_url, kafka_bootstrap, universe, early, START, date(2024, 6, 6), early / "log")
    second = _backfill(database_url, kafka_bootstrap, universe, late, date(2024, 6, 4), END, late / "log")
    _finished(first, early / "log")
    _finished(second, late / "log")
    with psycopg.connect(database_url) as conn:  # no quarantine row twice, however the runs interleaved
        dupes = conn.execute("select dataset, stage, session_date, symbol, check_name, count(*) from quality.quarantine"
                             " group by 1, 2, 3, 4, 5, row_data::text having count(*) > 1").fetchall()
    assert dupes == []
    _assert_converged(database_url, _reference(new_database, kafka_bootstrap, universe, tmp_path, monkeypatch),
                      kafka_bootstrap)
