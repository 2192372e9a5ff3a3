"""README's demo command and the CLI, run as a user would: real processes in a fresh directory."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from mdpipeline.devservices import timescaledb_installed
from mdpipeline.distribute.subscriber import end_offsets
from mdpipeline.distribute.topics import BARS_1D

CLI = str(Path(sys.executable).parent / "mdpipeline")
# Where `dev up` puts the cluster of a project the postgres user cannot reach (instead of /var/lib/mdpipeline).
PG_ROOT = Path(tempfile.gettempdir()) / f"mdp-pgroot-{os.getpid()}"


def _cli(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MDP_", "DAGSTER_HOME"))}  # only what the directory's .env says
    env["MDP_DEV_PG_ROOT"] = str(PG_ROOT)
    return subprocess.run([CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


@pytest.fixture(scope="module")
def demo_dir() -> Iterator[Path]:
    """A fresh working directory in which `mdpipeline demo` has run; services stopped afterwards.

    As in root's home: the directory is inside a 0700 one, which the postgres user cannot traverse.
    """
    home = Path(tempfile.mkdtemp(prefix="mdp-home-"))  # mkdtemp makes it 0700
    root = home / "project"
    root.mkdir()
    demo = _cli(root, "demo", timeout=600)
    try:
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert "demo succeeded" in demo.stdout
        # Its own clean sample data raises no alarm: NVDA's split is known before the bars are checked.
        assert re.search(r"checks failed\s*[│|]?\s*0\b", demo.stdout), demo.stdout
        (root / "demo.out").write_text(demo.stdout)
        assert home.stat().st_mode & 0o777 == 0o700  # nothing changed the user's directory
        if os.geteuid() == 0:  # the cluster went to a per-project directory the postgres user can reach
            status = json.loads(_cli(root, "dev", "status", "--format", "json").stdout)
            data_dir = Path(next(s["directory"] for s in status["services"] if s["service"] == "postgresql"))
            assert data_dir.is_relative_to(PG_ROOT)
            assert (data_dir / "PG_VERSION").exists()
        yield root
    finally:
        _cli(root, "dev", "down")
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(PG_ROOT, ignore_errors=True)


def test_demo_leaves_bars_payloads_and_messages(demo_dir: Path) -> None:
    env = dict(line.split("=", 1) for line in (demo_dir / ".env").read_text().splitlines() if "=" in line)
    assert {"MDP_DATABASE_URL", "MDP_KAFKA_BOOTSTRAP_SERVERS", "DAGSTER_HOME"} <= set(env)

    bars = _cli(demo_dir, "bars", "NVDA", "--start", "2024-06-07", "--end", "2024-06-10", "--provider", "file",
                "--format", "json")
    assert bars.returncode == 0, bars.stderr
    rows = json.loads(bars.stdout)
    assert [r["session_date"] for r in rows] == ["2024-06-07", "2024-06-10"]
    assert rows[0]["close"] > 5 * rows[1]["close"]  # raw prices: the 10-for-1 split is not adjusted away

    layout = "timescaledb" if timescaledb_installed() else "postgres-partitioned"
    assert re.search(rf"storage layout\s*[│|]?\s*{layout}\b", (demo_dir / "demo.out").read_text())
    status = _cli(demo_dir, "dev", "status")
    preloaded = "preloaded" if layout == "timescaledb" else "not preloaded"
    assert f"storage layout: {layout} (TimescaleDB {preloaded})" in status.stdout

    tail = _cli(demo_dir, "tail", "md.bars.1d.v1", "--from-beginning", "--limit", "3")
    assert tail.returncode == 0, tail.stderr
    messages = [json.loads(line) for line in tail.stdout.splitlines()]
    assert len(messages) == 3
    assert all(m["value"]["schema"] == "mdpipeline.bars_1d" and m["key"] for m in messages)


def test_demo_messages_survive_dev_down_and_dev_up(demo_dir: Path) -> None:
    env = dict(line.split("=", 1) for line in (demo_dir / ".env").read_text().splitlines() if "=" in line)
    with psycopg.connect(env["MDP_DATABASE_URL"]) as conn:
        published = {r[0] for r in conn.execute(
            "select event_id from ops.outbox_sent where topic = %s", (BARS_1D.name,))}
    servers = env["MDP_KAFKA_BOOTSTRAP_SERVERS"]
    ends = end_offsets(servers, BARS_1D.name)
    assert published
    assert sum(high for _, high in ends.values()) == len(published)  # the demo sent each event once

    assert _cli(demo_dir, "dev", "down").returncode == 0
    status = _cli(demo_dir, "dev", "status", "--format", "json")
    services = json.loads(status.stdout)["services"]
    assert {x["service"]: x["running"] for x in services} == {"postgresql": False, "kafka": False}
    up = _cli(demo_dir, "dev", "up")
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"MDP_KAFKA_BOOTSTRAP_SERVERS={servers}" in (demo_dir / ".env").read_text()  # same port again

    assert end_offsets(servers, BARS_1D.name) == ends
    tail = _cli(demo_dir, "tail", BARS_1D.name, "--from-beginning", "--limit", str(len(published)), "--idle", "3")
    assert tail.returncode == 0, tail.stderr
    assert {json.loads(line)["value"]["event_id"] for line in tail.stdout.splitlines()} == published


def test_backfill_through_the_cli_is_idempotent(demo_dir: Path) -> None:
    def count() -> int:
        out = _cli(demo_dir, "bars", "AAPL", "--start", "2024-06-03", "--end", "2024-06-21", "--format", "csv")
        assert out.returncode == 0, out.stderr
        return len(out.stdout.splitlines()) - 1

    before = count()
    run = _cli(demo_dir, "backfill", "--start", "2024-06-10", "--end", "2024-06-12", "--provider", "synthetic")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "succeeded" in run.stdout
    assert count() == before == 2 * 14  # two providers, 14 sessions (Juneteenth closed)

    # stderr is not a terminal here: progress comes as one line per finished chunk of each step.
    done = {asset: (int(count.replace(",", "")), unit) for asset, count, unit in re.findall(
        r"^(\S+): chunk 1/1 \(2024-06-10\.\.2024-06-12 x \d+ symbols\) ([\d,]+) (rows|payloads);", run.stderr, re.M)}
    for layer in ("raw", "validated", "normalized", "md"):
        for dataset in ("bars_1d", "bars_1m", "corporate_actions"):
            if (layer, dataset) != ("md", "corporate_actions"):  # actions are stored as reference data
                assert f"{layer}/synthetic/{dataset}" in done, run.stderr
    assert {unit for asset, (_, unit) in done.items() if asset.startswith("raw/")} == {"payloads"}
    daily, daily_unit = done["md/synthetic/bars_1d"]
    assert daily_unit == "rows"
    assert daily > 0
    assert daily % 3 == 0  # symbols x 3 sessions
    assert done["md/synthetic/bars_1m"] == (390 * daily, "rows")  # a full session of minutes each
    assert done["ref/synthetic/corporate_actions"][0] >= 1


def test_backfill_of_a_holiday_is_a_clear_error(demo_dir: Path) -> None:
    run = _cli(demo_dir, "backfill", "--start", "2024-06-19", "--end", "2024-06-19")
    assert run.returncode == 2
    assert "no XNYS trading session" in run.stderr


def test_missing_database_url_is_a_clear_error(tmp_path: Path) -> None:
    run = _cli(tmp_path, "bars", "AAPL", "--start", "2024-06-03", "--end", "2024-06-04")
    assert run.returncode == 2
    assert "MDP_DATABASE_URL is not set" in run.stderr


@pytest.mark.parametrize(("args", "names"), [
    (["backfill", "--start", "2024-06-03", "--end", "2024-06-04", "--provider", "alphavantage"],
     ["alphavantage", "not enabled", "enabled: synthetic, file"]),
    (["backfill", "--start", "2024-06-03", "--end", "2024-06-04", "--provider", "bloomberg"],
     ["unknown provider bloomberg"]),
    (["backfill", "--start", "2024-06-03", "--end", "2024-06-04", "--symbols", "IBM"],
     ["no instrument holds symbol IBM", "AAPL"]),
    (["backfill", "--start", "2024-06-03", "--end", "2024-06-04", "--provider", "file", "--symbols", "TSLA"],
     ["symbol TSLA is not served by file", "AAPL, MSFT, NVDA"]),
    (["replay", "--start", "2024-06-03", "--end", "2024-06-04", "--provider", "polygon"], ["polygon"]),
    (["bars", "ZZZZ", "--start", "2024-06-03", "--end", "2024-06-04"], ["no instrument holds symbol ZZZZ"]),
    (["bars", "AAPL", "--start", "2024-06-03", "--end", "2024-06-04", "--provider", "iexcloud"], ["iexcloud"]),
    (["lineage", "ZZZZ", "2024-06-03"], ["ZZZZ"]),
    (["quality", "--start", "2024-06-03", "--end", "2024-06-04", "--provider", "finnhub"], ["finnhub"]),
])
def test_providers_and_symbols_the_universe_does_not_have_exit_2_naming_them(
        tmp_path: Path, args: list[str], names: list[str]) -> None:
    (tmp_path / ".env").write_text("MDP_DATABASE_URL=postgresql://nobody@127.0.0.1:1/none\n")
    run = _cli(tmp_path, *args)
    assert run.returncode == 2, run.stdout + run.stderr
    message = " ".join(run.stderr.split())
    for name in names:
        assert name in message


def test_tables_piped_keep_every_identifier_whole(demo_dir: Path) -> None:
    run = _cli(demo_dir, "quality", "--start", "2024-06-03", "--end", "2024-06-21")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert "…" not in run.stdout
    header = lines.index("asset\tcheck\tresults\tfailed\tseverity\tlast checked (UTC)")
    assets = {line.split("\t")[0] for line in lines[header + 1:]}
    assert {"validated/synthetic/bars_1m", "md/synthetic/bars_1d", "validated/file/corporate_actions"} <= assets
    bars = _cli(demo_dir, "bars", "NVDA", "--start", "2024-06-07", "--end", "2024-06-10", "--provider", "file")
    assert bars.returncode == 0, bars.stderr
    assert bars.stdout.splitlines()[1].split("\t")[:3] == ["instrument_id", "symbol", "session_date"]
