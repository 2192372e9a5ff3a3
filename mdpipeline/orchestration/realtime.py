"""The real-time feed in Dagster: a sensor over the raw stream topics and the job that processes a range.

The sensor compares the offset stored in `ops.stream_offsets` with each raw topic partition's high
watermark and requests a `realtime_ticks` run for the explicit range of new messages (each run materializes
the asset `realtime/ticks` with the range's counts and the lag left behind, and evaluates its `lag` check),
with run_key = `topic:partition:first-last` so a range is requested once. While a run of a partition
is in flight no new range is requested for it; a failed range is requested again (new run_key suffix).

The long-running alternative, `realtime_stream` (launched by `raw_stream_follow_sensor` when no run of it
follows the topic), applies ranges within one run as they land for `run_seconds`: no run launch (a new
process importing the code location) per range, so a tick waits for the poll interval and its range only.

Gap repair is a separate job, `stream_gap_repair`, launched by `stream_gap_sensor` while
`ops.stream_gaps` has open gaps (run_key = the gap ids): REST backfills stay off the low-latency path,
and a provider outage fails repair runs, not tick processing. See `mdpipeline.stream.gap_repair`.
"""

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import psycopg

from mdpipeline.distribute.topics import raw_stream_topic
from mdpipeline.orchestration.resources import DatabaseResource, KafkaResource, ProvidersResource
from mdpipeline.orchestration.run_limits import max_runtime_tags
from mdpipeline.providers.registry import SPECS, STREAM_PROVIDERS
from mdpipeline.stream.gap_repair import TradeSource, open_gaps, repair_gaps
from mdpipeline.stream.lag import LagBounds, stream_lag
from mdpipeline.stream.offsets import next_range, processed, stored_offset
from mdpipeline.stream.process import process_range
from mdpipeline.universe import Universe

JOB_NAME = "realtime_ticks"
TOPIC_TAG, PARTITION_TAG, RANGE_TAG = "mdp/raw-topic", "mdp/raw-partition", "mdp/raw-range"
MAX_MESSAGES_PER_RUN = 50_000
_UNFINISHED = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
               dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


class RawRangeConfig(dg.Config):
    """One explicit raw offset range, inclusive."""

    topic: str
    partition: int = 0
    first: int
    last: int


REALTIME_KEY = dg.AssetKey(["realtime", "ticks"])
REALTIME_GROUP = "realtime"
LAG_CHECK = "lag"


@dg.multi_asset(
    name="process_raw_range",
    specs=[dg.AssetSpec(REALTIME_KEY, group_name=REALTIME_GROUP, kinds={"postgres", "kafka"},
                        description="Trades (md.ticks, md.ticks.v1) and quotes (md.quotes, md.quotes.v1) from the "
                                    "real-time feeds; each run applies one raw offset range and records the lag.")],
    check_specs=[dg.AssetCheckSpec(LAG_CHECK, asset=REALTIME_KEY,
                                   description="Fails when the raw stream is further behind than "
                                               "MDP_REALTIME_MAX_LAG_SECONDS / MDP_REALTIME_MAX_LAG_FRAMES.")],
    description="Parse, validate and normalize one raw offset range into md.ticks, md.quotes and their topics.",
)
def process_raw_range(
    context: dg.AssetExecutionContext, config: RawRangeConfig, db: DatabaseResource, kafka: KafkaResource,
    providers: ProvidersResource,
) -> dg.MaterializeResult:
    universe = providers.universe()
    with db.connection() as conn:
        applied = _apply_range(context.log, conn, kafka.bootstrap_servers, universe, context.run.run_id,
                               config.topic, config.partition, config.first, config.last)
    return dg.MaterializeResult(asset_key=REALTIME_KEY, metadata=applied.metadata,
                                check_results=[applied.check_result()])


@dataclass(frozen=True)
class _Applied:
    """What applying one range reports to Dagster."""

    metadata: dict[str, Any]  # Dagster metadata values
    lag: dict[str, Any]
    exceeded: list[str]

    def check_result(self) -> dg.AssetCheckResult:
        return dg.AssetCheckResult(
            check_name=LAG_CHECK, asset_key=REALTIME_KEY, passed=not self.exceeded, metadata=self.lag,
            severity=dg.AssetCheckSeverity.ERROR,
            description="; ".join(self.exceeded) or "within the configured bounds")


def _apply_range(log: dg.DagsterLogManager, conn: psycopg.Connection, bootstrap_servers: str, universe: Universe,
                 run_id: str, topic: str, partition: int, first: int, last: int) -> _Applied:
    """Process one raw range, then measure the lag it leaves behind."""
    report = process_range(conn, bootstrap_servers, topic=topic, partition=partition, first=first, last=last,
                           symbology=universe.symbology, run_id=run_id, calendar_name=universe.exchange_calendar)
    next_offset = stored_offset(conn, topic, partition)
    if not report.applied:
        log.info(f"{topic}[{partition}] {first}-{last} was not applied: it was applied before, or it is not where "
                 "processing resumes (see ops.stream_offsets)")
    if report.reset:
        log.warning(f"{report.reset}; the interval is recorded as a gap for repair")
    if report.frames_quarantined:
        log.warning(f"{report.frames_quarantined} frame(s) could not be parsed: quarantined with the reason "
                    "(quality.quarantine, check malformed_frame)")
    lag = stream_lag(bootstrap_servers, topic, partition, next_offset)
    newest = report.last_received_at
    lag_metadata: dict[str, dg.RawMetadataValue] = {
        "frames_behind": lag.frames_behind, "seconds_behind": round(lag.seconds_behind, 3),
        "log_end_offset": lag.log_end, "next_offset": next_offset,
        # how old the range's newest frame was once applied (sensor wait + run launch + processing)
        "seconds_since_newest_frame": round((datetime.now(UTC) - newest).total_seconds(), 3) if newest else None,
    }
    metadata: dict[str, dg.RawMetadataValue] = {
        "raw_range": f"{topic}[{partition}] {first}-{last}",
        "applied": report.applied, "frames": report.frames, "trades": report.trades, "cancels": report.cancels,
        "corrections": report.corrections, "quotes": report.quotes, "stream_bars": report.stream_bars,
        "stream_bars_superseded_by_rest": report.stream_bars_superseded, "quarantined": report.quarantined,
        "frames_quarantined": report.frames_quarantined, "gaps": report.gaps, "published": report.published,
        "reset": report.reset or "", **lag_metadata,
    }
    return _Applied(metadata, lag_metadata, LagBounds.from_env().exceeded(lag))


realtime_ticks_job = dg.define_asset_job(
    JOB_NAME, selection=dg.AssetSelection.assets(REALTIME_KEY),
    description="Real-time ticks and quotes: one explicit raw offset range per run (launched by the sensor).",
    tags=max_runtime_tags("REALTIME"),
)


FOLLOW_JOB_NAME = "realtime_stream"
FOLLOW_TAG = "mdp/raw-topic-follow"


class FollowConfig(dg.Config):
    """A long-running run that applies a raw partition's new ranges as they land, for `run_seconds`."""

    topic: str
    partition: int = 0
    run_seconds: float = 600.0  # then the run ends; its sensor launches the next one
    poll_seconds: float = 0.2  # how often to look for new messages when caught up
    max_messages: int = MAX_MESSAGES_PER_RUN  # per range
    stop_when_idle: bool = False  # end as soon as nothing is left (tests, one-off catch-up)


@dg.op(description="Apply a raw stream partition's new offset ranges as they land, for a while (long-running).")
def follow_raw_stream(
    context: dg.OpExecutionContext, config: FollowConfig, db: DatabaseResource, kafka: KafkaResource,
    providers: ProvidersResource,
) -> dg.Output[int]:
    universe = providers.universe()
    deadline = time.monotonic() + config.run_seconds
    ranges = 0
    with db.connection() as conn:
        while time.monotonic() < deadline:
            found = next_range(kafka.bootstrap_servers, config.topic, config.partition,
                               processed(conn, config.topic, config.partition), max_messages=config.max_messages)
            if found is None:
                if config.stop_when_idle:
                    break
                time.sleep(config.poll_seconds)
                continue
            applied = _apply_range(context.log, conn, kafka.bootstrap_servers, universe, context.run.run_id,
                                   config.topic, config.partition, *found)
            context.log_event(dg.AssetMaterialization(asset_key=REALTIME_KEY, metadata=applied.metadata))
            check = applied.check_result()
            context.log_event(dg.AssetCheckEvaluation(
                asset_key=REALTIME_KEY, check_name=LAG_CHECK, passed=check.passed, metadata=applied.lag,
                severity=check.severity, description=check.description))
            ranges += 1
    return dg.Output(ranges, metadata={"ranges": ranges})


@dg.job(name=FOLLOW_JOB_NAME, tags=max_runtime_tags("REALTIME"),
        description="Real-time ticks and quotes, long-running: one run follows a raw partition for run_seconds "
                    "(no run launch per range; launched by raw_stream_follow_sensor).")
def realtime_stream_job() -> None:
    follow_raw_stream()


def raw_stream_follow_sensor(
    topics: tuple[str, ...] | None = None, *, name: str = "raw_stream_follow_sensor", interval: int = 30,
    run_seconds: float = 600.0,
) -> dg.SensorDefinition:
    """Keeps one `realtime_stream` run following each raw topic: requests a new one when none is in flight.

    An alternative to `raw_stream_sensor` for low latency (turn on one of the two): ranges are applied within
    a run as they land, without a run launch (a new process importing the code location) per range.
    """
    watched = topics or tuple(raw_stream_topic(p).name for p in STREAM_PROVIDERS)

    @dg.sensor(name=name, job_name=FOLLOW_JOB_NAME, minimum_interval_seconds=interval,
               description="Requests a long-running realtime_stream run per raw topic when none is in flight.")
    def _sensor(context: dg.SensorEvaluationContext, kafka: KafkaResource) -> dg.SensorResult | dg.SkipReason:
        existing = set(kafka.admin().list_topics(timeout=10).topics)
        requests = [
            dg.RunRequest(run_key=f"follow:{topic}:{int(time.time())}", tags={FOLLOW_TAG: topic},
                          run_config=dg.RunConfig(ops={"follow_raw_stream": FollowConfig(
                              topic=topic, run_seconds=run_seconds)}))
            for topic in watched if topic in existing and not context.instance.get_runs_count(
                dg.RunsFilter(tags={FOLLOW_TAG: topic}, statuses=_UNFINISHED))]
        return dg.SensorResult(run_requests=requests) if requests else dg.SkipReason("every raw topic is followed")

    return _sensor


def range_run_request(context: dg.SensorEvaluationContext, topic: str, partition: int, first: int,
                      last: int) -> dg.RunRequest:
    """The run request of a range; retried ranges get a `#retryN` run_key suffix."""
    span = f"{topic}:{partition}:{first}-{last}"
    failed = context.instance.get_runs_count(dg.RunsFilter(tags={RANGE_TAG: span},
                                                           statuses=[dg.DagsterRunStatus.FAILURE]))
    return dg.RunRequest(
        run_key=span if not failed else f"{span}#retry{failed}",
        run_config=dg.RunConfig(ops={"process_raw_range": RawRangeConfig(topic=topic, partition=partition,
                                                                          first=first, last=last)}),
        tags={TOPIC_TAG: topic, PARTITION_TAG: str(partition), RANGE_TAG: span},
    )


def raw_stream_sensor(
    topics: tuple[str, ...] | None = None, *, name: str = "raw_stream_sensor", interval: int = 5,
    max_messages: int = MAX_MESSAGES_PER_RUN,
) -> dg.SensorDefinition:
    """A sensor over raw stream topics (one partition each; default: every stream provider's)."""
    watched = topics or tuple(raw_stream_topic(p).name for p in STREAM_PROVIDERS)

    @dg.sensor(name=name, job_name=JOB_NAME, minimum_interval_seconds=interval,
               description="Requests a realtime_ticks run per new raw offset range (run_key = the range).")
    def _sensor(context: dg.SensorEvaluationContext, db: DatabaseResource,
                kafka: KafkaResource) -> dg.SensorResult | dg.SkipReason:
        requests: list[dg.RunRequest] = []
        existing = set(kafka.admin().list_topics(timeout=10).topics)
        with db.connection() as conn:
            for topic in (t for t in watched if t in existing):
                partition = 0
                busy = context.instance.get_runs_count(dg.RunsFilter(
                    tags={TOPIC_TAG: topic, PARTITION_TAG: str(partition)}, statuses=_UNFINISHED))
                if busy:
                    continue
                found = next_range(kafka.bootstrap_servers, topic, partition, processed(conn, topic, partition),
                                   max_messages=max_messages)
                if found is not None:
                    requests.append(range_run_request(context, topic, partition, *found))
        if not requests:
            return dg.SkipReason("no new raw messages")
        return dg.SensorResult(run_requests=requests)

    return _sensor


GAP_JOB_NAME = "stream_gap_repair"
GAPS_TAG = "mdp/stream-gaps"


@dg.op(description="Backfill open stream gaps from the providers' REST history and reconcile them with md.ticks.")
def repair_stream_gaps(
    context: dg.OpExecutionContext, db: DatabaseResource, kafka: KafkaResource, providers: ProvidersResource,
) -> dg.Output[int]:
    universe = providers.universe()
    sources: dict[str, TradeSource] = {
        name: repairer.from_env(base_url=providers.base_urls.get(name),
                                options=setup.options if (setup := universe.providers.get(name)) else {})
        for name, spec in SPECS.items() if (repairer := spec.repairer_class()) is not None}
    symbols = {name: list(setup.symbols) for name, setup in universe.providers.items() if setup.symbols}
    with db.connection() as conn:
        report = repair_gaps(conn, kafka.bootstrap_servers, sources=sources, symbology=universe.symbology,
                             run_id=context.run.run_id, calendar_name=universe.exchange_calendar, symbols=symbols)
    for repair in report.repairs:
        context.log.info(f"gap {repair.gap_id} ({repair.provider}): {repair.status} {repair.counts or ''}"
                         f" {repair.note or ''}".rstrip())
    metadata: dict[str, dg.RawMetadataValue] = {
        "gaps": len(report.repairs), "published": report.published,
        **{status: sum(r.status == status for r in report.repairs) for status in ("repaired", "unrepairable",
                                                                                  "failed", "skipped")},
        **{count: report.total(count) for count in ("fetched", "inserted", "duplicates", "corrected", "cancelled",
                                                    "quarantined")},
    }
    if report.failed:
        raise dg.Failure(description="; ".join(f"gap {r.gap_id}: {r.note}" for r in report.failed), metadata=metadata)
    return dg.Output(report.total("inserted"), metadata=metadata)


@dg.job(name=GAP_JOB_NAME, description="Gap repair: backfill and reconcile the intervals raw streams missed.",
        tags=max_runtime_tags("GAP_REPAIR"))
def stream_gap_repair_job() -> None:
    repair_stream_gaps()


def stream_gap_sensor(*, name: str = "stream_gap_sensor", interval: int = 60) -> dg.SensorDefinition:
    """Requests a `stream_gap_repair` run while open gaps exist (one run at a time; failed ones retried)."""

    @dg.sensor(name=name, job_name=GAP_JOB_NAME, minimum_interval_seconds=interval,
               description="Requests a stream_gap_repair run when ops.stream_gaps has open gaps.")
    def _sensor(context: dg.SensorEvaluationContext, db: DatabaseResource) -> dg.RunRequest | dg.SkipReason:
        with db.connection() as conn:
            gaps = open_gaps(conn)
        if not gaps:
            return dg.SkipReason("no open stream gaps")
        if context.instance.get_runs_count(dg.RunsFilter(job_name=GAP_JOB_NAME, statuses=_UNFINISHED)):
            return dg.SkipReason("a gap repair run is in flight")
        span = "gaps:" + ",".join(str(g.gap_id) for g in gaps)
        failed = context.instance.get_runs_count(dg.RunsFilter(tags={GAPS_TAG: span},
                                                               statuses=[dg.DagsterRunStatus.FAILURE]))
        return dg.RunRequest(run_key=span if not failed else f"{span}#retry{failed}", tags={GAPS_TAG: span})

    return _sensor
