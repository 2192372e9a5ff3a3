"""Drive the real-time path in tests: the real sensor requests ranges, the real job applies them."""

from __future__ import annotations

import dagster as dg

from mdpipeline.orchestration.assembly import build_definitions
from mdpipeline.orchestration.realtime import raw_stream_sensor
from mdpipeline.orchestration.resources import DatabaseResource, KafkaResource
from mdpipeline_tests.pipeline_helpers import settings_for


def run_realtime(database_url: str, kafka_bootstrap: str, topic: str,
                 instance: dg.DagsterInstance | None = None) -> list[dg.ExecuteInProcessResult]:
    """Evaluate `raw_stream_sensor` over `topic` and run each requested `realtime_ticks` run until the sensor
    has nothing left to request; returns the runs (each asserted successful)."""
    defs = build_definitions(settings_for(database_url, kafka_bootstrap))
    job = defs.get_job_def("realtime_ticks")
    sensor = raw_stream_sensor((topic,), name="test_raw_stream")
    instance = instance or dg.DagsterInstance.ephemeral()
    resources = {"db": DatabaseResource(url=database_url), "kafka": KafkaResource(bootstrap_servers=kafka_bootstrap)}
    runs: list[dg.ExecuteInProcessResult] = []
    while True:
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            result = sensor(context)
        if isinstance(result, dg.SkipReason):
            return runs
        assert isinstance(result, dg.SensorResult)
        for request in result.run_requests or []:
            run = job.execute_in_process(run_config=request.run_config, instance=instance, tags=request.tags)
            assert run.success
            runs.append(run)
