"""How long a run may take before the daemon's run monitoring ends it (`dagster/max_runtime`, seconds).

Runs that hold a provider pool (a provider's daily-bar job, from its schedule, the freshness sensor or
the UI) would otherwise keep that pool, and every run queued behind it, forever when a call hangs; the
real-time jobs would keep their raw partition busy. Each job carries a limit; the instance files also set
a ceiling for every other run (`run_monitoring.max_runtime_seconds`). Seconds, from the environment:

- `MDP_PROVIDER_RUN_MAX_RUNTIME` (14400, 4 h): provider jobs (`bars_1d_<provider>`);
- `MDP_REALTIME_RUN_MAX_RUNTIME` (1800): `realtime_ticks` (one raw offset range);
- `MDP_GAP_REPAIR_RUN_MAX_RUNTIME` (3600): `stream_gap_repair`.

The limit is enforced by `dagster-daemon` (run monitoring must be enabled, as both instance files do);
runs executed in-process (`mdpipeline backfill`, tests) carry the tag but nothing enforces it.
"""

from __future__ import annotations

from mdpipeline.env_numbers import env_number

MAX_RUNTIME_TAG = "dagster/max_runtime"
DEFAULTS = {"PROVIDER": 14_400, "REALTIME": 1_800, "GAP_REPAIR": 3_600}


def max_runtime_seconds(kind: str) -> int:
    """The limit of `kind` (PROVIDER, REALTIME, GAP_REPAIR) from MDP_<KIND>_RUN_MAX_RUNTIME or its default."""
    seconds = env_number(f"MDP_{kind}_RUN_MAX_RUNTIME")  # positive: a run without a limit can hold its pool forever
    return DEFAULTS[kind] if seconds is None else int(seconds)


def max_runtime_tags(kind: str) -> dict[str, str]:
    """Run tags that limit a job's runs to `max_runtime_seconds(kind)`."""
    return {MAX_RUNTIME_TAG: str(max_runtime_seconds(kind))}
