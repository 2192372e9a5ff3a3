"""Benchmark a backfill the way a user runs one: `mdpipeline backfill` on the embedded services.

    python bench/backfill.py SYMBOLS SESSIONS [--start 2024-01-02] [--chunk-rows N] [--no-rollup-refresh] [--keep]

Makes a universe of SYMBOLS synthetic instruments (only the synthetic provider enabled: daily bars,
one-minute bars and corporate actions), starts the embedded PostgreSQL and Kafka with
`mdpipeline dev up` in a fresh directory, runs `mdpipeline backfill` over SESSIONS sessions from
--start as a child process, and prints:

- bars/s end to end (one-minute plus daily bars stored, over the backfill's wall time),
- the backfill process's peak RSS (from wait4, so exactly that process),
- CPU seconds spent during the backfill by the backfill process, the PostgreSQL server and the Kafka
  broker (from /proc: where the cores went),
- where the wall time goes: before the first step, in and between steps, after the last one,
- seconds per step (from the run's Dagster step stats), the highest RSS sampled (every 50 ms)
  while each step ran, so a memory regression names its step, and the cores the whole machine kept
  busy meanwhile (Python, PostgreSQL and Kafka share them: a step well under the core count waits),
- a baseline measured in the same run on the same server: binary COPY of the stored minute bars
  (read back, encoded before the timer) into an unindexed table, and the ratios of the store step
  and of the whole backfill to it.

Nothing here asserts a speed; `docs/performance.md` keeps the measured figures.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import psycopg
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mdpipeline.sessions import session_dates  # noqa: E402
from mdpipeline.storage.storage_config import DEFAULT_STORAGE_CONFIG, STORAGE_CONFIG_ENV  # noqa: E402

BASELINE_MAX_ROWS = 5_000_000  # the COPY baseline reads back at most this many minute bars


def universe(symbols: int) -> dict:
    """A universe of `symbols` synthetic instruments served by the synthetic provider only."""
    names = [f"S{i:04d}" for i in range(1, symbols + 1)]
    return {
        "exchange_calendar": "XNYS",
        "instruments": [{"id": i, "name": f"Synthetic {n}", "mic": "XNAS", "currency": "USD",
                         "asset_class": "equity", "symbols": [{"symbol": n, "valid_from": "1990-01-02"}]}
                        for i, n in enumerate(names, start=1)],
        "providers": {"synthetic": {"enabled": True, "seed": 7, "symbols": names, "corporate_actions": []},
                      "file": {"enabled": False, "symbols": []}},
    }


def cli(workdir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run the project's CLI in `workdir` (where `dev up` wrote .env)."""
    command = [str(ROOT / ".venv" / "bin" / "mdpipeline"), *args]
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, check=True)


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, in clock ticks (/proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def process_cpu(pid: int, *, children: bool = True) -> float:
    """CPU seconds (user + system) of process `pid`, with its reaped children's when `children`."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    ticks = sum(int(v) for v in fields[11:15 if children else 13])  # utime stime [cutime cstime]
    return ticks / os.sysconf("SC_CLK_TCK")


def services_cpu(workdir: Path) -> dict[str, float]:
    """CPU seconds so far of the embedded PostgreSQL (postmaster, live and exited backends, background
    processes) and of the Kafka broker's JVM that `dev up` started in `workdir`."""
    state = workdir / ".mdpipeline"
    pids = {name: int(path.read_text().split()[0]) for name, path in (
        ("PostgreSQL", state / "pg" / "data" / "postmaster.pid"), ("Kafka", state / "kafka" / "broker.pid"))
        if path.exists()}
    used = {name: process_cpu(pid) for name, pid in pids.items()}
    if "PostgreSQL" in pids:  # backends still running count apart (their time joins the postmaster's at exit)
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[1]) == pids["PostgreSQL"]:
                used["PostgreSQL"] += process_cpu(int(stat.parent.name), children=False)
    return used


def sample_rss(pid: int, into: list[tuple[float, int]], interval: float = 0.05,
               cpu: list[tuple[float, int, int]] | None = None) -> None:
    """Append (epoch seconds, RSS bytes) of process `pid` every `interval` seconds until it exits, and
    the machine's CPU counters to `cpu` (the server and the broker count: they share the cores)."""
    status = Path(f"/proc/{pid}/status")
    while True:
        if cpu is not None:
            cpu.append((time.time(), *cpu_jiffies()))
        try:
            text = status.read_text()
        except (FileNotFoundError, ProcessLookupError):
            return
        match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
        if match is None:  # a zombie has no memory left to measure
            return
        into.append((time.time(), int(match.group(1)) * 1024))
        time.sleep(interval)


def run_backfill(workdir: Path, env: dict[str, str], start: date, end: date,
                 samples: list[tuple[float, int]],
                 cpu: list[tuple[float, int, int]] | None = None) -> tuple[float, float, int, str, dict[str, float]]:
    """Epoch start, wall seconds, peak RSS (bytes), output and CPU seconds (of the backfill process, the
    server and the broker) of `mdpipeline backfill` as a child process; RSS samples over time go to
    `samples` (to tell which step holds the peak)."""
    command = [str(ROOT / ".venv" / "bin" / "mdpipeline"), "backfill", "--start", start.isoformat(),
               "--end", end.isoformat()]
    log = workdir / "backfill.log"
    services_before = services_cpu(workdir)
    started, epoch = time.perf_counter(), time.time()
    with log.open("w") as out:
        child = subprocess.Popen(command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
        sampler = threading.Thread(target=sample_rss, args=(child.pid, samples, 0.05, cpu), daemon=True)
        sampler.start()
        _, status, usage = os.wait4(child.pid, 0)
        sampler.join()
    seconds = time.perf_counter() - started
    used = {"backfill process": usage.ru_utime + usage.ru_stime,
            **{k: v - services_before.get(k, 0.0) for k, v in services_cpu(workdir).items()}}
    child.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text()
    if child.returncode != 0:
        raise SystemExit(f"backfill failed (exit {child.returncode}):\n{text[-4000:]}")
    return epoch, seconds, usage.ru_maxrss * 1024, text, used


def step_times(dotenv: dict[str, str]) -> dict[str, tuple[float, float]]:
    """(start, end) epoch seconds per step of the newest run in the instance `dev up` configured."""
    for name in ("DAGSTER_HOME", "MDP_DAGSTER_DATABASE_URL"):
        os.environ[name] = dotenv[name]
    import dagster as dg

    instance = dg.DagsterInstance.get()
    run = instance.get_runs(limit=1)[0]
    return {s.step_key: (s.start_time or 0.0, s.end_time or 0.0) for s in instance.get_run_step_stats(run.run_id)}


def step_cores(times: dict[str, tuple[float, float]], cpu: list[tuple[float, int, int]]) -> dict[str, float]:
    """Cores busy on average while each step ran (the whole machine: Python, PostgreSQL, Kafka)."""
    cores = os.cpu_count() or 1
    busy: dict[str, float] = {}
    for key, (start, end) in times.items():
        inside = [c for c in cpu if start <= c[0] <= end]
        if len(inside) >= 2 and inside[-1][2] > inside[0][2]:
            busy[key] = cores * (inside[-1][1] - inside[0][1]) / (inside[-1][2] - inside[0][2])
    return busy


def step_peaks(times: dict[str, tuple[float, float]], samples: list[tuple[float, int]]) -> dict[str, int]:
    """Highest RSS sampled while each step ran (steps of the in-process executor run one at a time)."""
    return {key: max((rss for t, rss in samples if start <= t <= end), default=0)
            for key, (start, end) in times.items()}


def copy_baseline(url: str, start: date, end: date, indexed: bool = False) -> tuple[int, float]:
    """(rows, rows/s) of a binary COPY of stored minute bars, bytes encoded before: into an unindexed
    table, or (`indexed`) into a table with md.bars_1m's primary key, in key order, as a first load is."""
    with psycopg.connect(url, autocommit=True) as conn:
        columns = [r[0] for r in conn.execute(
            "select column_name from information_schema.columns where table_schema = 'md'"
            " and table_name = 'bars_1m' order by ordinal_position")]
        names = ", ".join(columns)
        buf = bytearray()
        order = " order by instrument_id, provider, session_date, ts" if indexed else ""
        query = (f"copy (select {names} from md.bars_1m where session_date between '{start}' and '{end}'{order}"
                 f" limit {BASELINE_MAX_ROWS}) to stdout (format binary)")
        with conn.cursor() as cur, cur.copy(query) as copy:
            for chunk in copy:
                buf += chunk
        rows = conn.execute(f"select count(*) from (select 1 from md.bars_1m where session_date between '{start}'"
                            f" and '{end}' limit {BASELINE_MAX_ROWS}) s").fetchone()[0]  # type: ignore[index]
        conn.execute("drop table if exists public.bench_copy_target")
        keyed = " including indexes" if indexed else ""
        conn.execute(f"create table public.bench_copy_target (like md.bars_1m{keyed})")
        started = time.perf_counter()
        with conn.transaction(), conn.cursor() as cur, cur.copy(
                f"copy public.bench_copy_target ({names}) from stdin (format binary)") as copy:
            view = memoryview(buf)
            for offset in range(0, len(view), 1 << 20):
                copy.write(view[offset:offset + (1 << 20)])
        seconds = time.perf_counter() - started
        conn.execute("drop table public.bench_copy_target")
    return rows, rows / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("symbols", type=int)
    parser.add_argument("sessions", type=int)
    parser.add_argument("--start", type=date.fromisoformat, default=date(2024, 1, 2))
    parser.add_argument("--chunk-rows", type=int, default=None, help="MDP_CHUNK_ROWS for the backfill")
    parser.add_argument("--keep", action="store_true", help="leave the services and the directory")
    parser.add_argument("--no-rollup-refresh", action="store_true",
                        help="rollups.refresh_after_load: false (TimescaleDB's policy refreshes them later)")
    args = parser.parse_args()

    sessions = session_dates(args.start, date(args.start.year + 3, 12, 31))[: args.sessions]
    start, end = sessions[0], sessions[-1]
    workdir = Path(tempfile.mkdtemp(prefix="mdp-bench-backfill-"))
    workdir.chmod(0o755)
    (workdir / "universe.yaml").write_text(yaml.safe_dump(universe(args.symbols)))
    env = {**os.environ, "MDP_UNIVERSE": str(workdir / "universe.yaml")}
    for name in ("MDP_DATABASE_URL", "MDP_KAFKA_BOOTSTRAP_SERVERS", "DAGSTER_HOME", "MDP_FRAMES_DIR",
                 "MDP_DAGSTER_DATABASE_URL", "DAGSTER_EVENT_BATCH_SIZE"):
        env.pop(name, None)
    if args.chunk_rows:
        env["MDP_CHUNK_ROWS"] = str(args.chunk_rows)
    if args.no_rollup_refresh:
        config = yaml.safe_load(DEFAULT_STORAGE_CONFIG.read_text())
        config.setdefault("rollups", {})["refresh_after_load"] = False
        (workdir / "storage.yaml").write_text(yaml.safe_dump(config))
        env[STORAGE_CONFIG_ENV] = str(workdir / "storage.yaml")
    try:
        cli(workdir, env, "dev", "up")
        migrated = cli(workdir, env, "migrate")
        dotenv = {k: v.strip('"') for k, v in (line.split("=", 1) for line in
                                                (workdir / ".env").read_text().splitlines() if "=" in line)}
        url = dotenv["MDP_DATABASE_URL"]
        samples: list[tuple[float, int]] = []
        cpu: list[tuple[float, int, int]] = []
        launched, seconds, peak, output, used = run_backfill(workdir, env, start, end, samples, cpu)
        with psycopg.connect(url) as conn:
            minute = conn.execute("select count(*) from md.bars_1m").fetchone()[0]  # type: ignore[index]
            daily = conn.execute("select count(*) from md.bars_1d").fetchone()[0]  # type: ignore[index]
            messages = conn.execute("select topic, sum(messages) from ops.publications group by 1"
                                    " order by 1").fetchall()
        times = step_times(dotenv)
        steps = {key: end_ - start_ for key, (start_, end_) in times.items()}
        peaks = step_peaks(times, samples)
        cores = step_cores(times, cpu)
        copied, copy_rate = copy_baseline(url, start, end)
        _, indexed_rate = copy_baseline(url, start, end, indexed=True)
    finally:
        if not args.keep:
            subprocess.run([str(ROOT / ".venv" / "bin" / "mdpipeline"), "dev", "down"], cwd=workdir, env=env,
                           capture_output=True, check=False)
            shutil.rmtree(workdir, ignore_errors=True)
    bars = minute + daily
    store = steps.get("md__synthetic__bars_1m", 0.0)
    print(f"backfill: {args.symbols} symbols x {len(sessions)} sessions ({start} .. {end}),"
          f" chunk budget {args.chunk_rows or 'default'} rows"
          f"{', roll-ups left to the refresh policy' if args.no_rollup_refresh else ''}")
    print(f"  storage                {migrated.stdout.strip().rsplit('layout: ', 1)[-1]:>14}")
    print(f"  bars stored            {bars:>14,} ({minute:,} one-minute, {daily:,} daily)")
    print(f"  wall time              {seconds:>14.1f} s")
    print(f"  end to end             {bars / seconds:>14,.0f} bars/s")
    print(f"  peak RSS (backfill)    {peak / 2**20:>14,.0f} MiB")
    for topic, count in messages:
        print(f"  published              {int(count):>14,} messages on {topic}")
    first, last = min(s for s, _ in times.values()), max(e for _, e in times.values())
    in_steps = sum(steps.values())
    print(f"  before the first step  {first - launched:>14.1f} s (process start, imports, instance, run launch)")
    print(f"  first to last step     {last - first:>14.1f} s ({in_steps:.1f} s in steps,"
          f" {last - first - in_steps:.1f} s between them)")
    print(f"  after the last step    {launched + seconds - last:>14.1f} s")
    print(f"  CPU seconds during the backfill ({os.cpu_count()} cores x {seconds:.1f} s ="
          f" {(os.cpu_count() or 1) * seconds:.1f}): " + ", ".join(f"{k} {v:.1f}" for k, v in used.items()))
    print(f"  seconds, peak RSS and cores busy (of {os.cpu_count()}, whole machine) sampled per step:")
    for key, value in sorted(steps.items(), key=lambda kv: -kv[1]):
        busy = f"{cores[key]:5.1f}" if key in cores else "    -"
        print(f"    {key:<45} {value:8.1f} s {peaks.get(key, 0) / 2**20:8,.0f} MiB {busy}")
    print(f"  baseline: binary COPY of {copied:,} stored minute bars into an unindexed table:"
          f" {copy_rate:,.0f} rows/s")
    print(f"  baseline: the same into a table with md.bars_1m's primary key, in key order:"
          f" {indexed_rate:,.0f} rows/s")
    if store:
        print(f"  store step (md/synthetic/bars_1m)  {minute / store:,.0f} rows/s = {minute / store / copy_rate:.2f}"
              f" x the COPY baseline, {minute / store / indexed_rate:.2f} x the keyed COPY")
    print(f"  whole backfill                     {bars / seconds:,.0f} bars/s = {bars / seconds / copy_rate:.2f}"
          " x the COPY baseline")
    if args.keep:
        print(f"  kept: {workdir}")
    _ = output


if __name__ == "__main__":
    main()
