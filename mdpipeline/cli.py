"""The `mdpipeline` command line: local services, the demo, backfills, replays, reads and tails."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from mdpipeline.output import print_table
from mdpipeline.settings import Settings, load_env

if TYPE_CHECKING:
    from rich.progress import TaskID

    from mdpipeline.chain.progress import ChunkReport
    from mdpipeline.universe import Universe

app = typer.Typer(help="mdpipeline: market data from providers to TimescaleDB and Kafka, orchestrated by Dagster.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
dev_app = typer.Typer(help="Local PostgreSQL and Apache Kafka broker for the embedded default.",
                      no_args_is_help=True)
app.add_typer(dev_app, name="dev")
console = Console()
err_console = Console(stderr=True)

DEMO_START = date(2024, 6, 3)
DEMO_END = date(2024, 6, 21)
Start = Annotated[str, typer.Option("--start", help="First date (YYYY-MM-DD), inclusive.")]
End = Annotated[str, typer.Option("--end", help="Last date (YYYY-MM-DD), inclusive.")]


def _date(value: str, name: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)", param_hint=name) from None


def _universe() -> Universe:
    """The universe file the settings point at."""
    from mdpipeline.universe import load_universe

    return load_universe(Settings.from_env().universe_path)


def _check(problem: str | None, hint: str | None = None) -> None:
    """Exit 2 with `problem` (a bad argument) when there is one."""
    if problem is not None:
        err_console.print(f"[red]{problem}[/]" + (f"\n{hint}" if hint else ""), highlight=False)
        raise typer.Exit(2)


def _check_reading(symbols: list[str], provider: str | None, database_url: str) -> None:
    """Exit 2 unless each symbol was held by an instrument and the provider is enabled, in the universe
    file or in what the database holds (it may have been filled from another universe file)."""
    import psycopg

    from mdpipeline.arguments import unknown_providers, unknown_symbols
    from mdpipeline.storage.database import connect

    universe = _universe()
    stored_symbols: set[str] = set()
    stored = False
    known = set(universe.symbology["symbol"].to_list())
    enabled = provider is None or (provider in universe.providers and universe.providers[provider].enabled)
    if not enabled or not set(symbols) <= known:  # look at what the database holds only when it matters
        try:
            with connect(database_url) as conn:
                stored_symbols = {r[0] for r in conn.execute("select distinct symbol from ref.symbology")}
                stored = provider is not None and conn.execute(
                    "select exists (select 1 from raw.payloads where provider = %s)", (provider,)
                ).fetchone() == (True,)
        except psycopg.OperationalError:
            pass  # unreachable: the universe file alone decides (and the read itself will say why it fails)
    if provider is not None and not stored:
        _check(unknown_providers(universe, [provider]))
    _check(unknown_symbols(universe, [s for s in symbols if s not in stored_symbols], served=False))


def _settings() -> Settings:
    settings = Settings.from_env()
    if not settings.database_url:
        err_console.print("[red]MDP_DATABASE_URL is not set.[/] Run `mdpipeline dev up` (writes .env) or export it.")
        raise typer.Exit(2)
    return settings


@dev_app.command("up")
def dev_up() -> None:
    """Start PostgreSQL and the broker under ./.mdpipeline and write .env."""
    from mdpipeline.devservices import dev_up as up

    stack = up(Path.cwd())
    console.print(f"PostgreSQL  {stack.database_url}\nKafka       {stack.bootstrap_servers}\n"
                  f"DAGSTER_HOME {stack.dagster_home}\nWrote .env")


@dev_app.command("down")
def dev_down() -> None:
    """Stop the local services; their data (database, topics, messages) stays for the next `dev up`."""
    from mdpipeline.devservices import dev_down as down

    down(Path.cwd())
    console.print("stopped")


@dev_app.command("prepare")
def dev_prepare() -> None:
    """Fetch the Apache Kafka jars with Maven (once, into a per-user cache) and build their class archive."""
    from mdpipeline.devservices import BrokerError, KafkaDistError, prepare_kafka

    try:
        dist = prepare_kafka()
    except (BrokerError, KafkaDistError) as exc:
        err_console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    console.print(f"Apache Kafka jars in {dist.libs}")


@dev_app.command("status")
def dev_status(
    fmt: Annotated[str, typer.Option("--format", help="table | json.")] = "table",
) -> None:
    """Show whether the local services run, where, and where they keep their data."""
    from mdpipeline.devservices import dev_status as status

    if fmt not in ("table", "json"):
        err_console.print("[red]--format must be table or json[/]")
        raise typer.Exit(2)
    st = status(Path.cwd())
    services = [
        {"service": "postgresql", "running": st.postgres_running, "address": st.database_url,
         "directory": str(st.data_dir)},
        {"service": "kafka", "running": st.broker_running, "address": st.bootstrap_servers,
         "directory": str(st.broker_dir) if st.broker_dir else None},
    ]
    storage = {"storage_layout": st.storage_layout, "timescaledb_preloaded": st.timescaledb_preloaded}
    if fmt == "json":
        sys.stdout.write(json.dumps({"services": services, **storage}, indent=2) + "\n")
        return
    print_table(console, "local services", ("service", "running", "address", "directory"),
                [(x["service"], "yes" if x["running"] else "no", x["address"] or "", x["directory"] or "")
                 for x in services])
    if st.postgres_running:
        preload = "preloaded" if st.timescaledb_preloaded else "not preloaded"
        console.print(f"storage layout: {st.storage_layout} (TimescaleDB {preload})")


@app.command()
def migrate() -> None:
    """Create or upgrade the database schemas."""
    from mdpipeline.storage.database import connect
    from mdpipeline.storage.migrations import migrate as run_migrations
    from mdpipeline.storage.migrations import storage_layout

    with connect(_settings().database_url) as conn:
        applied = run_migrations(conn)
        console.print(f"applied {applied or 'nothing (up to date)'}; layout: {storage_layout(conn)}")


@app.command()
def backfill(
    start: Start,
    end: End,
    provider: Annotated[list[str] | None, typer.Option("--provider", help="Only this provider (repeatable).")] = None,
    symbols: Annotated[str | None, typer.Option("--symbols", help="Comma-separated symbols (default all).")] = None,
    select: Annotated[str | None, typer.Option("--select", help="Dagster asset selection, e.g. 'group:md'.")] = None,
    allow_deletes: Annotated[bool, typer.Option(
        "--allow-deletes", help="Let stored rows go when the provider no longer sends them.")] = False,
) -> None:
    """Re-materialize the sessions from --start to --end (inclusive) through Dagster in a single run; exits non-zero
    when the run fails."""
    _run_range(_date(start, "--start"), _date(end, "--end"), provider, symbols, select, allow_deletes)


@app.command()
def replay(
    start: Start,
    end: End,
    provider: Annotated[list[str] | None, typer.Option("--provider", help="Only this provider (repeatable).")] = None,
    allow_deletes: Annotated[bool, typer.Option(
        "--allow-deletes", help="Let stored rows go when the stored payloads no longer hold them.")] = False,
) -> None:
    """Re-derive everything downstream of `raw` for --start to --end from stored payloads (no provider calls)."""
    _run_range(_date(start, "--start"), _date(end, "--end"), provider, None, "not group:raw", allow_deletes)


def _run_range(start: date, end: date, providers: list[str] | None, symbols: str | None, select: str | None,
               allow_deletes: bool = False) -> None:
    from mdpipeline.arguments import unknown_providers, unknown_symbols
    from mdpipeline.orchestration.assembly import build_definitions
    from mdpipeline.orchestration.chain import ALLOW_DELETES_TAG
    from mdpipeline.orchestration.progress import listening
    from mdpipeline.orchestration.runner import NoSessionsError, materialize_range

    wanted = [s.strip().upper() for s in symbols.split(",") if s.strip()] if symbols else None
    universe = _universe()
    if providers:
        _check(unknown_providers(universe, providers), "Enable it in the universe file (MDP_UNIVERSE).")
    if wanted:
        _check(unknown_symbols(universe, wanted, providers), "The universe file (MDP_UNIVERSE) lists instruments"
               " and which provider serves which symbols.")
    settings = _settings()
    _prepare(settings)
    defs = build_definitions(settings, symbols=wanted)
    tags = {ALLOW_DELETES_TAG: "true"} if allow_deletes else {}
    try:
        with _chunk_progress() as listener, listening(listener):
            result = materialize_range(defs, start, end, providers=providers, select=select, tags=tags,
                                       log_level="WARNING")
    except NoSessionsError as err:
        err_console.print(f"[red]{err}[/]")
        raise typer.Exit(2) from None
    _print_run(result)
    if not result.success:
        raise typer.Exit(1)


@contextmanager
def _chunk_progress() -> Iterator[Callable[[ChunkReport], None]]:
    """Progress on stderr, chunk by chunk: one rich bar per step on a terminal; elsewhere (a log file,
    a pipe, a scheduler's capture) one line per finished chunk as it finishes, since a live display
    shows nothing there until the run ends."""
    if not err_console.is_terminal:
        def line(report: ChunkReport) -> None:
            err_console.file.write(report.line() + "\n")
            err_console.file.flush()
        yield line
        return

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    tasks: dict[str, TaskID] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[rate]}"), console=err_console, transient=False) as progress:
        def on_chunk(report: ChunkReport) -> None:
            if report.asset not in tasks:
                tasks[report.asset] = progress.add_task(report.asset, total=report.chunks, rate="")
            progress.update(tasks[report.asset], completed=report.done,
                            rate=f"{report.total_rows:,} {report.unit}, {report.rows_per_second:,.0f}/s")
        yield on_chunk


def _prepare(settings: Settings) -> None:
    """Migrate the database and create the topics (both idempotent)."""
    from mdpipeline.distribute.topics import ensure_topics
    from mdpipeline.storage.database import connect
    from mdpipeline.storage.migrations import migrate as run_migrations

    with connect(settings.database_url) as conn:
        run_migrations(conn)
    if settings.kafka_bootstrap_servers:
        ensure_topics(settings.kafka_bootstrap_servers)


def _print_run(result: object) -> None:
    from mdpipeline.orchestration.summary import run_summary

    summary = run_summary(result)  # type: ignore[arg-type]
    print_table(console, f"run {summary.run_id} — {'succeeded' if summary.success else 'FAILED'}",
                ("asset", "rows / messages", "checks"), [(r.asset, r.count, r.checks) for r in summary.assets])
    for failure in summary.failures:
        err_console.print(f"[red]{failure}[/]")


@app.command()
def demo() -> None:
    """The main job end to end on the embedded default: local services, synthetic and file data, offline."""
    from mdpipeline.orchestration.demo import run_demo

    ok = run_demo(Path.cwd(), DEMO_START, DEMO_END, console)
    if not ok:
        raise typer.Exit(1)


@app.command()
def bars(
    symbol: Annotated[str, typer.Argument(help="Ticker, e.g. AAPL (comma-separated for several).")],
    start: Start,
    end: End,
    interval: Annotated[str, typer.Option("--interval", help="1d | 1m | 5m | 15m | 1h (roll-ups of 1m).")] = "1d",
    adjust: Annotated[str, typer.Option("--adjust", help="none | split | total (back-adjusted).")] = "none",
    as_of: Annotated[str | None, typer.Option("--as-of", help="Only what was known at this time (ISO 8601).")] = None,
    provider: Annotated[str | None, typer.Option("--provider", help="Only this provider.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table | csv | json.")] = "table",
) -> None:
    """Print stored bars of SYMBOL, raw or adjusted, optionally as known at a past time."""
    from mdpipeline.enrich.adjustments import ADJUST_MODES
    from mdpipeline.read import INTERVALS, parse_as_of, read_bars
    from mdpipeline.storage.database import connect

    if interval not in INTERVALS:
        err_console.print(f"[red]--interval must be one of {', '.join(INTERVALS)}[/]")
        raise typer.Exit(2)
    if adjust not in ADJUST_MODES:
        err_console.print(f"[red]--adjust must be one of {', '.join(ADJUST_MODES)}[/]")
        raise typer.Exit(2)
    try:
        cutoff = parse_as_of(as_of)
    except ValueError:
        err_console.print(f"[red]--as-of {as_of!r} is not an ISO 8601 time[/]")
        raise typer.Exit(2) from None
    if fmt not in ("table", "csv", "json"):
        err_console.print("[red]--format must be table, csv or json[/]")
        raise typer.Exit(2)
    symbols = [s.strip().upper() for s in symbol.split(",") if s.strip()]
    _check_reading(symbols, provider, _settings().database_url)
    with connect(_settings().database_url) as conn:
        frame = read_bars(conn, symbols, _date(start, "--start"), _date(end, "--end"),
                          adjust=adjust, as_of=cutoff, provider=provider, interval=interval)  # type: ignore[arg-type]
    if fmt == "csv":
        sys.stdout.write(frame.write_csv())
    elif fmt == "json":
        sys.stdout.write(frame.write_json() + "\n")
    else:
        print_table(console, f"{', '.join(symbols)} {interval} bars ({adjust})", frame.columns,
                    frame.rows(), right=[c for c, t in frame.schema.items() if t.is_numeric()])


@app.command()
def tail(
    topic: Annotated[str, typer.Argument(help="Topic, e.g. md.bars.1d.v1.")],
    from_beginning: Annotated[bool, typer.Option("--from-beginning", help="Start at the earliest offset.")] = False,
    limit: Annotated[int | None, typer.Option("--limit", help="Stop after N messages.")] = None,
    idle: Annotated[float, typer.Option("--idle", help="Stop after this many idle seconds.")] = 10.0,
) -> None:
    """Subscribe to TOPIC and print one JSON line per message."""
    from mdpipeline.distribute.subscriber import consume

    settings = Settings.from_env()
    if not settings.kafka_bootstrap_servers:
        err_console.print("[red]MDP_KAFKA_BOOTSTRAP_SERVERS is not set[/]")
        raise typer.Exit(2)
    for event in consume(settings.kafka_bootstrap_servers, topic, from_beginning=from_beginning, limit=limit,
                         idle_timeout=idle):
        sys.stdout.write(json.dumps({"partition": event.partition, "offset": event.offset, "key": event.key,
                                     "headers": event.headers, "value": json.loads(event.value)}) + "\n")
        sys.stdout.flush()


@app.command()
def stream(
    provider: Annotated[str, typer.Option("--provider", help="alpaca | finnhub | synthetic.")],
    symbols: Annotated[str | None, typer.Option("--symbols", help="Comma-separated (default: universe).")] = None,
    url: Annotated[str | None, typer.Option("--url", help="Websocket URL (default from MDP_<P>_STREAM_URL).")] = None,
    quotes: Annotated[bool, typer.Option("--quotes", help="Alpaca: also subscribe to quotes.")] = False,
    minute_bars: Annotated[bool, typer.Option("--bars", help="Alpaca: also subscribe to minute bars.")] = False,
    max_frames: Annotated[int | None, typer.Option("--max-frames", help="Stop after N data frames.")] = None,
    rate: Annotated[float, typer.Option("--rate", help="Synthetic: frames per second.")] = 50.0,
    topic_name: Annotated[str | None, typer.Option("--topic", help="Raw topic (default raw.stream.<provider>.v1).")]
    = None,
    name: Annotated[str | None, typer.Option("--name", help="Collector name for its stored coverage "
                                             "(default: the topic).")] = None,
) -> None:
    """Collect a real-time feed and land raw frames on raw.stream.<provider>.v1 (Ctrl-C or SIGTERM stops).

    With MDP_DATABASE_URL set, the collector stores until when its frames are landed
    (ops.stream_collectors); the next start of a collector of the same name records the time in between
    as a gap, which gap repair backfills. Timeouts: MDP_STREAM_OPEN_TIMEOUT, MDP_STREAM_HANDSHAKE_TIMEOUT,
    MDP_STREAM_READ_TIMEOUT, MDP_STREAM_PING_INTERVAL, MDP_STREAM_PING_TIMEOUT (seconds).
    """
    import asyncio
    import signal

    from mdpipeline.distribute.topics import TopicSpec, ensure_topics, raw_stream_topic
    from mdpipeline.providers.registry import SPECS, STREAM_PROVIDERS
    from mdpipeline.stream.collector import CollectReport, Timeouts, collect
    from mdpipeline.stream.collector_state import CollectorState
    from mdpipeline.stream.feeds import FeedError
    from mdpipeline.stream.landing import RawLanding
    from mdpipeline.stream.synthetic import run_synthetic
    from mdpipeline.universe import load_universe

    settings = Settings.from_env()
    if not settings.kafka_bootstrap_servers:
        err_console.print("[red]MDP_KAFKA_BOOTSTRAP_SERVERS is not set[/]")
        raise typer.Exit(2)
    if provider not in STREAM_PROVIDERS:
        raise typer.BadParameter(f"one of {', '.join(STREAM_PROVIDERS)}", param_hint="--provider")
    universe = load_universe(settings.universe_path)
    wanted = ([s.strip().upper() for s in symbols.split(",") if s.strip()] if symbols
              else sorted(universe.symbology["symbol"].unique().to_list()))
    default = raw_stream_topic(provider)
    topic = TopicSpec(topic_name, default.partitions, config=default.config) if topic_name else default
    ensure_topics(settings.kafka_bootstrap_servers, (topic,))
    landing = RawLanding(settings.kafka_bootstrap_servers, topic.name, provider)
    console.print(f"landing {provider} frames for {', '.join(wanted)} on {topic.name}")
    state = None
    if provider != "synthetic":
        if settings.database_url:
            state = CollectorState(settings.database_url, name or topic.name, provider, topic.name)
        else:
            err_console.print("[yellow]MDP_DATABASE_URL is not set: a restart of this collector cannot record the "
                              "time no collector ran as a gap[/]")

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if provider == "synthetic":
            return await run_synthetic(landing, wanted, frames=max_frames or 10**9, rate=rate, stop=stop)
        feed = SPECS[provider].feed_class().from_env(wanted, quotes=quotes, bars=minute_bars, url=url)
        report: CollectReport = await collect(feed, landing, stop=stop, max_frames=max_frames,
                                              timeouts=Timeouts.from_env(), state=state)
        return report.frames

    try:
        landed = asyncio.run(run())
    except FeedError as err:
        err_console.print(f"[red]{err}[/]")
        raise typer.Exit(1) from None
    console.print(f"landed {landed} frames ({len(landing.failed)} failed deliveries, {landing.lost_total} frames "
                  f"lost from the topic and recorded as gaps)")
    if landing.failed:
        raise typer.Exit(1)


@app.command()
def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8080,
) -> None:
    """HTTP read API: /v1/bars/1d and /v1/quality as JSON, Arrow IPC or Parquet; OpenAPI at /openapi.json.

    Limits (MDP_SERVE_MAX_SYMBOLS, _MAX_DAYS, _MAX_ROWS), the statement timeout and the connection pool
    (MDP_SERVE_STATEMENT_TIMEOUT, _POOL_SIZE, _POOL_TIMEOUT) come from the environment; see docs/events.md.
    """
    from mdpipeline.serve.limits import ApiLimits
    from mdpipeline.serve.server import run

    try:
        limits = ApiLimits.from_env()
    except ValueError as err:
        err_console.print(f"[red]{err}[/]")
        raise typer.Exit(2) from None
    console.print(f"serving on http://{host}:{port} (OpenAPI: /openapi.json, /docs)")
    run(_settings().database_url, host, port, limits)


@app.callback()
def _options(debug: Annotated[bool, typer.Option(
        "--debug", help="Show the full traceback of an error instead of one line and a hint.")] = False) -> None:
    """mdpipeline: market data from providers to TimescaleDB and Kafka, orchestrated by Dagster."""
    _state["debug"] = debug


_state = {"debug": False}


def _expected_errors() -> dict[type[BaseException], str]:
    """Errors a user can meet in normal operation, each with what to try next."""
    import psycopg
    from confluent_kafka import KafkaException

    from mdpipeline.devservices.broker import BrokerError
    from mdpipeline.devservices.kafka_dist import KafkaDistError
    from mdpipeline.devservices.postgres import PostgresError
    from mdpipeline.distribute.publisher import PublishError
    from mdpipeline.providers.base import ProviderError
    from mdpipeline.stream.feeds import FeedError

    return {
        PostgresError: "`mdpipeline dev status` shows the local services; the server log is under .mdpipeline/logs",
        BrokerError: "`mdpipeline dev status` shows the local services; the broker log is under .mdpipeline/logs",
        KafkaDistError: "run ./scripts/bootstrap.sh (or `mdpipeline dev prepare`) to fetch the broker's jars",
        psycopg.OperationalError: "is the database up? `mdpipeline dev up` starts the local one (MDP_DATABASE_URL)",
        KafkaException: "is the broker up? `mdpipeline dev up` starts the local one (MDP_KAFKA_BOOTSTRAP_SERVERS)",
        PublishError: "the messages stay in the outbox; run the publish step again once the broker answers",
        ProviderError: "see docs/providers.md for the provider's credentials, limits and base URL",
        FeedError: "see docs/providers.md for the real-time feeds",
    }


def main() -> None:
    """Entry point of the `mdpipeline` script: expected errors are one line and a hint (`--debug`: traceback)."""
    load_env()
    try:
        app(standalone_mode=True)
    except Exception as err:
        hints = _expected_errors()
        hint = next((h for kind, h in hints.items() if isinstance(err, kind)), None)
        if hint is None or _state["debug"] or "--debug" in sys.argv:
            raise
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        err_console.print(f"[red]error:[/] {first}", highlight=False, soft_wrap=True)
        err_console.print(f"hint: {hint} (--debug shows the details)", highlight=False, soft_wrap=True)
        raise SystemExit(1) from None



@app.command()
def lineage(
    symbol: Annotated[str, typer.Argument(help="Ticker, e.g. NVDA (or any ticker the instrument held that day).")],
    ts: Annotated[str, typer.Argument(help="Session date, YYYY-MM-DD (a timestamp is read as its session date).")],
    provider: Annotated[str | None, typer.Option("--provider", help="Only this provider.")] = None,
    scan_topic: Annotated[bool, typer.Option("--scan-topic", help="Also find the messages on the topic "
                                             "(reads it from the beginning).")] = False,
    fmt: Annotated[str, typer.Option("--format", help="text | json.")] = "text",
) -> None:
    """Walk from a stored bar to its raw payload, the run that stored it, quarantine entries and its events."""
    from datetime import datetime

    from mdpipeline.lineage import bar_lineage, deliveries, describe
    from mdpipeline.storage.database import connect

    try:
        session = date.fromisoformat(ts)
    except ValueError:
        try:
            session = datetime.fromisoformat(ts).date()
        except ValueError:
            raise typer.BadParameter(f"{ts!r} is not a date or timestamp", param_hint="TS") from None
    _check_reading([symbol.strip().upper()], provider, _settings().database_url)
    settings = _settings()
    with connect(settings.database_url) as conn:
        found = bar_lineage(conn, symbol, session, provider)
    if not found:
        err_console.print(f"[red]no stored or quarantined bar of {symbol.upper()} on {session}[/]")
        raise typer.Exit(1)
    on_topic: dict[str, list] = {}
    if scan_topic:
        if not settings.kafka_bootstrap_servers:
            err_console.print("[red]MDP_KAFKA_BOOTSTRAP_SERVERS is not set[/]")
            raise typer.Exit(2)
        for d in deliveries(settings.kafka_bootstrap_servers, [x.event for x in found if x.event]):
            on_topic.setdefault(d.event_id, []).append(d)
    if fmt == "json":
        docs = [x.to_json() for x in found]
        if scan_topic:
            for doc in docs:
                event_id = (doc["event"] or {}).get("event_id")
                doc["deliveries"] = [vars(d) for d in on_topic.get(event_id, [])]
        sys.stdout.write(json.dumps(docs, indent=2) + "\n")
        return
    for x in found:
        console.rule(f"{x.symbol} {x.session_date} · provider {x.provider}")
        for line in describe(x, on_topic.get(x.event.event_id, []) if x.event else []):
            console.print(line, markup=False, highlight=False)



@app.command()
def quality(
    start: Start,
    end: End,
    provider: Annotated[str | None, typer.Option("--provider", help="Only this provider.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table | json.")] = "table",
) -> None:
    """Quality of --start to --end per provider and dataset: rows stored, quarantined by check, latest check results."""
    from mdpipeline.arguments import unknown_providers
    from mdpipeline.quality.report import quality_report, report_json
    from mdpipeline.storage.database import connect

    first, last = _date(start, "--start"), _date(end, "--end")
    if first > last:
        err_console.print(f"[red]--start {first} is after --end {last}[/]")
        raise typer.Exit(2)
    if fmt not in ("table", "json"):
        err_console.print("[red]--format must be table or json[/]")
        raise typer.Exit(2)
    if provider is not None:
        _check(unknown_providers(_universe(), [provider]))
    with connect(_settings().database_url) as conn:
        found = quality_report(conn, first, last, provider)
    if fmt == "json":
        sys.stdout.write(json.dumps(report_json(first, last, provider, found), indent=2) + "\n")
        return
    if not found:
        console.print(f"no stored rows, quarantined rows or check results between {first} and {last}")
        return
    rows = []
    for q in found:
        complete = q.completeness
        diverged = q.divergence
        rows.append((
            q.provider, q.dataset, "" if q.rows_stored is None else str(q.rows_stored),
            _counts(q.rows_quarantined, q.quarantined_by_check),
            f"{complete['completeness_pct']:.2f}% ({complete['missing']} missing)" if complete else "",
            ", ".join(f"{k} {v}" for k, v in q.flags_by_kind.items()) or "none",
            f"{diverged['pairs_flagged']}/{diverged['pairs_compared']} pairs over {diverged['threshold_bps']:g} bps"
            if diverged else "",
        ))
    print_table(console, f"quality {first} .. {last}",
                ("provider", "dataset", "stored", "quarantined", "completeness", "flags", "divergence"), rows,
                right=("stored", "completeness"))
    print_table(console, "latest check results",
                ("asset", "check", "results", "failed", "severity", "last checked (UTC)"),
                [(c.asset, c.check, str(c.results), f"[red]{c.failed}[/]" if c.failed else "0", c.severity,
                  f"{c.last_checked_at:%Y-%m-%d %H:%M:%S}" if c.last_checked_at else "")
                 for q in found for c in q.checks], right=("results", "failed"))


def _counts(total: int, by_name: dict[str, int]) -> str:
    """`3 (ohlc_consistency 2, value_range 1)`, or `0`."""
    return f"{total} ({', '.join(f'{k} {v}' for k, v in by_name.items())})" if total else "0"
