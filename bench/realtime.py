"""Benchmark the real-time path end to end: websocket -> collector -> broker -> sensor-launched runs -> store.

    python bench/realtime.py [--rate 1000] [--symbols 100] [--seconds 60] [--interval 1] [--max-messages 50000]

Starts (unless MDP_KAFKA_BOOTSTRAP_SERVERS / MDP_DATABASE_URL are set) a throwaway Apache Kafka broker and
PostgreSQL cluster (TimescaleDB preloaded when installed; `track_commit_timestamp` on, to know when each
row committed), then:

- a local websocket server speaking Alpaca's market-data v2 protocol (its own process) sends `--rate`
  trades per second spread over `--symbols` symbols, a frame every 10 ms, for `--seconds`;
- the real collector (`mdpipeline stream --provider alpaca`, its own process) lands every frame on
  `raw.stream.alpaca.v1`;
- this process plays the Dagster daemon's part: every `--interval` seconds it evaluates the real
  `raw_stream_sensor` and executes each run it requests (the real `realtime_ticks` job, in process,
  one after the other), until everything landed is applied.

Then it reads back the raw topic (receive time of each frame, `mdp-received-at`), `md.ticks.v1` (each
message's producer timestamp) and `md.ticks` (`pg_xact_commit_timestamp` of each row), and reports,
per trade, latency from frame receipt to the normalized message on the topic and to the committed
row (p50/p99/max; trades of the first `--warmup` seconds left out: they wait for the loop's start-up),
sustained throughput, the largest backlog the sensor saw, and the runs.

Executing runs in process leaves out what a run launched by the daemon also pays: a new Python
process per run (DefaultRunLauncher's run worker) that imports Dagster, polars and the code location
before the step starts. The benchmark measures that separately (`launch_seconds`: the median of three
fresh processes importing `mdpipeline.orchestration.definitions` and building the definitions) and
reports it beside the in-process figures (see docs/performance.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dagster as dg
from bench_services import services

from mdpipeline.distribute.subscriber import end_offsets, read_topic
from mdpipeline.distribute.topics import TICKS, ensure_topics, raw_stream_topic
from mdpipeline.orchestration.definitions import build_definitions
from mdpipeline.orchestration.realtime import RANGE_TAG, raw_stream_sensor
from mdpipeline.orchestration.resources import DatabaseResource, KafkaResource
from mdpipeline.settings import Settings
from mdpipeline.storage.database import connect
from mdpipeline.storage.migrations import migrate
from mdpipeline.stream.offsets import read_messages
from mdpipeline.stream.parse import alpaca_actions

KEY_ID, SECRET = "PKBENCH", "benchsecret"
TOPIC = raw_stream_topic("alpaca")


def write_universe(path: Path, symbols: list[str]) -> None:
    """A universe file of `symbols` (instrument ids 1..n)."""
    lines = ["exchange_calendar: XNYS", "instruments:"]
    for i, symbol in enumerate(symbols, 1):
        lines += [f"  - id: {i}", f"    name: Bench {symbol}", "    mic: XNAS", "    currency: USD",
                  "    asset_class: equity", f"    symbols: [{{symbol: {symbol}, valid_from: 2000-01-01}}]"]
    lines += ["providers:", "  synthetic:", "    enabled: true", f"    symbols: [{', '.join(symbols[:3])}]"]
    path.write_text("\n".join(lines) + "\n")


def serve(port_out: multiprocessing.Queue, rate: float, symbols: list[str], seconds: float,
          started: multiprocessing.Event) -> None:
    """The websocket server process: Alpaca handshake, then `rate` trades/s for `seconds` once a client subscribed."""
    from websockets.asyncio.server import serve as ws_serve

    async def handler(ws: object) -> None:
        await ws.send(json.dumps([{"T": "success", "msg": "connected"}]))  # type: ignore[attr-defined]
        await ws.recv()  # type: ignore[attr-defined]
        await ws.send(json.dumps([{"T": "success", "msg": "authenticated"}]))  # type: ignore[attr-defined]
        sub = json.loads(await ws.recv())  # type: ignore[attr-defined]
        await ws.send(json.dumps([{"T": "subscription", "trades": sub["trades"], "quotes": [],  # type: ignore[attr-defined]
                                   "bars": []}]))
        started.set()
        t0 = time.monotonic()
        sent = 0
        while (elapsed := time.monotonic() - t0) < seconds:
            due = int(rate * elapsed)
            if due > sent:
                now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"
                trades = [{"T": "t", "S": symbols[i % len(symbols)], "i": i + 1, "x": "V", "p": 100.0 + (i % 997) / 100,
                           "s": 100, "c": ["@"], "t": now, "z": "C"} for i in range(sent, due)]
                await ws.send(json.dumps(trades, separators=(",", ":")))  # type: ignore[attr-defined]
                sent = due
            await asyncio.sleep(0.01)
        await asyncio.sleep(3600)  # keep the connection; the parent stops this process

    async def main() -> None:
        async with ws_serve(handler, "127.0.0.1", 0, max_size=2**24) as server:
            port_out.put(server.sockets[0].getsockname()[1])  # type: ignore[index]
            await asyncio.Future()

    asyncio.run(main())


def percentiles(values: pl.Series) -> dict[str, float]:
    """p50, p99, max (seconds)."""
    return {"p50": round(float(values.quantile(0.5) or 0), 3), "p99": round(float(values.quantile(0.99) or 0), 3),
            "max": round(float(values.max() or 0), 3)}  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000.0, help="trades per second")
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the server sends")
    parser.add_argument("--interval", type=float, default=1.0, help="sensor evaluation interval (s)")
    parser.add_argument("--max-messages", type=int, default=50_000, help="raw messages per run at most")
    parser.add_argument("--daemon-sensor", default="raw_stream_sensor",
                        choices=("raw_stream_sensor", "raw_stream_follow_sensor"),
                        help="the sensor --mode daemon starts")
    parser.add_argument("--warmup", type=float, default=5.0,
                        help="trades received in the first seconds are left out of the latency figures (start-up)")
    parser.add_argument("--no-launch", action="store_true", help="skip measuring a run worker's start-up")
    parser.add_argument("--mode", choices=("sensor", "follow", "daemon"), default="sensor",
                        help="sensor: the per-range realtime_ticks runs, in process; follow: one long-running "
                             "realtime_stream run; daemon: dagster-daemon runs raw_stream_sensor and launches the runs")
    args = parser.parse_args()
    symbols = [f"S{i:03d}" for i in range(args.symbols)]
    work = Path(tempfile.mkdtemp(prefix="bench-realtime-"))
    universe = work / "universe.yaml"
    write_universe(universe, symbols)
    with services(commit_timestamps=True) as (bootstrap, url):
        with connect(url) as conn:
            migrate(conn)
        ensure_topics(bootstrap, (TOPIC, TICKS))
        os.environ.update({"MDP_DATABASE_URL": url, "MDP_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                           "MDP_UNIVERSE": str(universe), "ALPACA_API_KEY_ID": KEY_ID,
                           "ALPACA_API_SECRET_KEY": SECRET, "DAGSTER_HOME": str(work)})
        daemon = start_daemon(url, work, args.daemon_sensor) if args.mode == "daemon" else None
        ctx = multiprocessing.get_context("spawn")
        port_q, started = ctx.Queue(), ctx.Event()
        server = ctx.Process(target=serve, args=(port_q, args.rate, symbols, args.seconds, started), daemon=True)
        server.start()
        port = port_q.get(timeout=30)
        collector = subprocess.Popen(
            [str(Path(sys.executable).parent / "mdpipeline"), "stream", "--provider", "alpaca", "--symbols",
             ",".join(symbols), "--url", f"ws://127.0.0.1:{port}/v2/iex", "--topic", TOPIC.name],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            if not started.wait(60):
                raise RuntimeError("the collector did not subscribe within 60 s")
            loops = {"sensor": run_sensor_loop, "follow": run_follow, "daemon": run_daemon}
            report = loops[args.mode](bootstrap, url, args)
        finally:
            collector.terminate()
            collector.wait(30)
            server.terminate()
            if daemon is not None:
                os.killpg(daemon.pid, signal.SIGTERM)
                daemon.wait(60)
        measure(bootstrap, url, args, report)


def run_sensor_loop(bootstrap: str, url: str, args: argparse.Namespace) -> dict[str, object]:
    """Evaluate the sensor every `interval` s and execute each requested run, until the server has sent
    everything and the job applied all of it; returns what the loop saw."""
    settings = Settings.from_env()
    defs = build_definitions(settings)
    job = defs.resolve_job_def("realtime_ticks")
    sensor = raw_stream_sensor((TOPIC.name,), name="bench_raw_stream", max_messages=args.max_messages)
    instance = dg.DagsterInstance.ephemeral()
    resources = {"db": DatabaseResource(url=url), "kafka": KafkaResource(bootstrap_servers=bootstrap)}
    t0 = time.monotonic()
    runs, durations, backlog, idle_after = 0, [], 0, None
    while True:
        tick = time.monotonic()
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            result = sensor(context)
        requests = [] if isinstance(result, dg.SkipReason) else list(result.run_requests or [])
        for request in requests:
            first = int(request.tags[RANGE_TAG].rsplit(":", 1)[1].split("-")[0])
            backlog = max(backlog, end_offsets(bootstrap, TOPIC.name)[0][1] - first)
            started = time.monotonic()
            run = job.execute_in_process(run_config=request.run_config, instance=instance, tags=request.tags)
            durations.append(time.monotonic() - started)
            runs += 1
            if not run.success:
                raise RuntimeError(f"run {run.run_id} failed")
        elapsed = time.monotonic() - t0
        if not requests and elapsed > args.seconds + 5:
            idle_after = idle_after or time.monotonic()
            if time.monotonic() - idle_after > 3:  # nothing new for 3 s after the server stopped sending
                break
        else:
            idle_after = None
        time.sleep(max(0.0, args.interval - (time.monotonic() - tick)))
    return {"runs": runs, "run_seconds": percentiles(pl.Series(durations)), "max_backlog_frames": backlog,
            "wall_seconds": time.monotonic() - t0}


REPO = Path(__file__).resolve().parents[1]


def start_daemon(url: str, work: Path, sensor: str) -> subprocess.Popen:
    """`dagster-daemon` on the project's instance file (run, event and schedule storage in a database `dagster` of
    the bench's PostgreSQL) with `sensor` started; runs are launched as Dagster launches them. Its own process
    group, so that stopping it stops the run workers it launched too."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("create database dagster")
    os.environ["MDP_DAGSTER_DATABASE_URL"] = (url.rsplit("/", 1)[0] + "/dagster").replace(
        "postgresql://", "postgresql+psycopg2://", 1)  # as `dev up` writes it
    (work / "dagster.yaml").write_text((REPO / "mdpipeline" / "devservices" / "dagster.yaml").read_text())
    bindir = Path(sys.executable).parent
    daemon = subprocess.Popen([str(bindir / "dagster-daemon"), "run", "-w", "workspace.yaml"], cwd=REPO,
                              start_new_session=True,
                              stdout=(work / "daemon.out").open("w"), stderr=(work / "daemon.log").open("w"))
    started = subprocess.run([str(bindir / "dagster"), "sensor", "start", sensor, "-w", "workspace.yaml"],
                             check=False, cwd=REPO, capture_output=True, text=True)
    if started.returncode:
        daemon.terminate()
        raise RuntimeError(f"dagster sensor start failed: {started.stderr[-2000:]}")
    return daemon


def run_daemon(bootstrap: str, url: str, args: argparse.Namespace) -> dict[str, object]:
    """Wait while the daemon's sensor launches `realtime_ticks` runs, until everything landed is applied."""
    t0 = time.monotonic()
    deadline = t0 + args.seconds + 300
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            time.sleep(1.0)
            high = end_offsets(bootstrap, TOPIC.name)[0][1]
            row = conn.execute("select next_offset from ops.stream_offsets where topic = %s", (TOPIC.name,)).fetchone()
            if time.monotonic() - t0 > args.seconds + 5 and row is not None and row[0] >= high:
                break
    with psycopg.connect(url.rsplit("/", 1)[0] + "/dagster") as conn:
        runs = conn.execute("select count(*) from runs where pipeline_name in ('realtime_ticks', 'realtime_stream')"
                            ).fetchone()
    return {"runs": int(runs[0]) if runs else 0, "wall_seconds": time.monotonic() - t0}


def run_follow(bootstrap: str, url: str, args: argparse.Namespace) -> dict[str, object]:
    """One long-running `realtime_stream` run (in process) following the raw topic while the server sends, then
    one that catches up with whatever is left and stops when idle."""
    from mdpipeline.orchestration.realtime import FollowConfig

    defs = build_definitions(Settings.from_env())
    job = defs.resolve_job_def("realtime_stream")
    instance = dg.DagsterInstance.ephemeral()
    t0 = time.monotonic()
    ages, behind = [], [0]
    for config in (FollowConfig(topic=TOPIC.name, run_seconds=args.seconds + 2, poll_seconds=args.interval,
                                max_messages=args.max_messages),
                   FollowConfig(topic=TOPIC.name, poll_seconds=args.interval, max_messages=args.max_messages,
                                stop_when_idle=True)):
        run = job.execute_in_process(run_config=dg.RunConfig(ops={"follow_raw_stream": config}), instance=instance)
        if not run.success:
            raise RuntimeError(f"run {run.run_id} failed")
        for m in run.asset_materializations_for_node("follow_raw_stream"):
            ages.append(float(m.metadata["seconds_since_newest_frame"].value or 0))
            behind.append(int(m.metadata["frames_behind"].value))
    return {"runs": 2, "ranges": len(ages), "range_newest_frame_age_s": percentiles(pl.Series(ages or [0.0])),
            "max_backlog_frames": max(behind), "wall_seconds": time.monotonic() - t0}


def measure(bootstrap: str, url: str, args: argparse.Namespace, loop: dict[str, object]) -> None:
    """Per trade: receipt (raw header) -> md.ticks.v1 producer timestamp, and -> commit of its md.ticks row."""
    high = end_offsets(bootstrap, TOPIC.name)[0][1]
    raw = read_messages(bootstrap, TOPIC.name, 0, 0, last=high - 1, timeout=120)
    received = alpaca_actions(raw.filter(pl.col("kind") == "data").select("offset", "provider", "value")).select(
        "sequence", "offset").join(raw.select("offset", "received_at"), on="offset")
    events = read_topic(bootstrap, TICKS.name, timeout=120)
    published = pl.DataFrame({
        "sequence": [json.loads(e.value)["data"]["sequence"] for e in events],
        "on_topic": [datetime.fromtimestamp((e.timestamp or 0) / 1000, UTC) for e in events],
    }).group_by("sequence").agg(pl.col("on_topic").min())
    with psycopg.connect(url) as conn:
        rows = conn.execute("select sequence, pg_xact_commit_timestamp(xmin) from md.ticks").fetchall()
    committed = pl.DataFrame(rows, schema={"sequence": pl.Int64(), "committed": pl.Datetime("us", "UTC")},
                             orient="row")
    joined = received.join(published, on="sequence", how="left").join(committed, on="sequence", how="left")
    steady = joined.filter(pl.col("received_at") >= joined["received_at"].min() + timedelta(seconds=args.warmup))
    to_topic = (steady["on_topic"] - steady["received_at"]).dt.total_microseconds() / 1e6
    to_row = (steady["committed"] - steady["received_at"]).dt.total_microseconds() / 1e6
    span = (joined["received_at"].max() - joined["received_at"].min()).total_seconds()  # type: ignore[operator]
    applying = (joined["committed"].max() - joined["received_at"].min()).total_seconds()  # type: ignore[operator]
    result = {
        "rate": args.rate, "symbols": args.symbols, "seconds": args.seconds, "interval": args.interval,
        "max_messages": args.max_messages, "cpus": os.cpu_count(),
        "trades_received": joined.height, "trades_on_topic": int(joined["on_topic"].is_not_null().sum()),
        "trades_stored": int(joined["committed"].is_not_null().sum()),
        "received_per_second": round(joined.height / span, 1) if span else None,
        "warmup_s": args.warmup, "trades_measured": steady.height,
        "receipt_to_topic_s": percentiles(to_topic.drop_nulls()),
        "receipt_to_committed_row_s": percentiles(to_row.drop_nulls()),
        "mode": args.mode, **{k: v for k, v in loop.items() if k != "wall_seconds"},
        "applied_per_second": round(int(joined["committed"].is_not_null().sum()) / applying, 1) if applying else None,
    }
    if not args.no_launch:
        result["launch_seconds"] = launch_seconds()
    print(json.dumps(result, indent=2))


def launch_seconds(times: int = 3) -> float:
    """Median wall time of a fresh Python process importing the code location and building its definitions:
    what a daemon-launched run worker pays before its step starts."""
    code = "import mdpipeline.orchestration.definitions as d; d.build_definitions()"
    spent = []
    for _ in range(times):
        started = time.monotonic()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        spent.append(time.monotonic() - started)
    return round(sorted(spent)[len(spent) // 2], 2)


if __name__ == "__main__":
    main()
