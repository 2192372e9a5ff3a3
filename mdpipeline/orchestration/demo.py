"""`mdpipeline demo`: the whole pipeline on the embedded default, offline, step by step with progress."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import dagster as dg
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from mdpipeline.devservices import dev_up
from mdpipeline.distribute.topics import BARS_1D, BARS_1M, ensure_topics
from mdpipeline.orchestration.assembly import build_definitions
from mdpipeline.orchestration.runner import materialize_range
from mdpipeline.orchestration.summary import RunSummary, run_summary
from mdpipeline.output import print_table
from mdpipeline.settings import Settings
from mdpipeline.storage.counts import layer_counts, published_messages
from mdpipeline.storage.database import connect
from mdpipeline.storage.migrations import migrate, storage_layout

# The six steps as Dagster asset groups, run in dependency order over the demo range. Enrichment
# has two halves: reference data and corporate actions before storing, adjustment factors after.
STEPS = (
    ("ingest", "group:raw"),
    ("validate", "group:validated"),
    ("normalize", "group:normalized"),
    ("enrich: reference data, corporate actions", "group:reference"),
    ("store", "group:md"),
    ("enrich: adjustment factors, adjusted bars", "group:adjusted"),
    ("distribute", "group:published"),
)


def run_demo(root: Path, start: date, end: date, console: Console) -> bool:
    """Start local services, migrate, and materialize every step; print a summary. True on success."""
    console.print("[bold]mdpipeline demo[/]: synthetic and file providers, offline, "
                  f"sessions {start} .. {end}")
    stack = dev_up(root)
    os.environ.update({"MDP_DATABASE_URL": stack.database_url,
                       "MDP_KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap_servers,
                       "DAGSTER_HOME": str(stack.dagster_home)})
    settings = Settings.from_env()
    with connect(settings.database_url) as conn:
        migrate(conn)
    ensure_topics(settings.kafka_bootstrap_servers)
    defs = build_definitions(settings)
    instance = dg.DagsterInstance.get()
    summaries: list[RunSummary] = []
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        task = progress.add_task("starting", total=len(STEPS))
        for label, selection in STEPS:
            progress.update(task, description=label)
            result = materialize_range(defs, start, end, select=selection, instance=instance, log_level="ERROR")
            summaries.append(run_summary(result))
            progress.advance(task)
            if not result.success:
                break
    _print_summary(console, settings, summaries, start, end)
    return all(s.success for s in summaries) and len(summaries) == len(STEPS)


def _print_summary(console: Console, settings: Settings, summaries: list[RunSummary], start: date, end: date) -> None:
    with connect(settings.database_url) as conn:
        run_ids = [s.run_id for s in summaries]
        counts = {**layer_counts(conn, start, end),
                  **{f"messages published to {topic.name}": published_messages(conn, topic.name, run_ids)
                     for topic in (BARS_1D, BARS_1M)}}
        layout = storage_layout(conn)
    rows = [("storage layout", layout)] + [(name, str(count)) for name, count in counts.items()]
    rows += [("checks passed", str(sum(s.checks_passed for s in summaries))),
             ("checks failed", str(sum(s.checks_failed for s in summaries)))]
    print_table(console, "demo summary", ("layer", "count"), rows, right=("count",))
    for s in summaries:
        for failure in s.failures:
            console.print(f"[red]{failure}[/]")
    ok = all(s.success for s in summaries)
    console.print("[green]demo succeeded[/]" if ok else "[red]demo failed[/]")
    console.print("Next: `dagster dev -w workspace.yaml` to see the assets and runs, "
                  f"`mdpipeline tail {BARS_1D.name} --from-beginning --limit 5`, "
                  "`mdpipeline bars NVDA --start 2024-06-03 --end 2024-06-21 --adjust split`.")
