"""Metrics: the SDK's Prometheus endpoint (RTJOBS_METRICS_ADDRESS) and the module's own instruments on it.

One endpoint for both: the SDK's runtime serves its own metrics (task latencies, pollers, slots) and
whatever is recorded through its metric meters, so the module's metrics need no second HTTP server
and no second library. Workflows record job outcomes through the replay-safe workflow meter
(`workflows/job_metrics.py`); what happens in activities (the Docker step, publish attempts) is
recorded here by a worker interceptor, so the activities themselves stay free of bookkeeping.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.runtime import LoggingConfig, PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from contract import metrics as names
from contract.engine import ENSURE_REMOVED_ACTIVITY, ENSURE_RUNNING_ACTIVITY
from contract.models import JobKind
from contract.policies import PUBLISH_ACTIVITY

DOCKER_STEPS = {ENSURE_RUNNING_ACTIVITY: JobKind.START.value, ENSURE_REMOVED_ACTIVITY: JobKind.STOP.value}


def prometheus_runtime(bind_address: str, *, core_logs: LoggingConfig = LoggingConfig.default) -> Runtime:
    """A runtime serving `http://<bind_address>/metrics`, with units and suffixes as Prometheus expects
    them (`_seconds`, `_total`), so standard queries and the SDK's dashboards work unchanged; `core_logs`:
    where the SDK Core's own log lines go.
    """
    return Runtime(
        telemetry=TelemetryConfig(
            logging=core_logs,
            metrics=PrometheusConfig(
                bind_address=bind_address,
                counters_total_suffix=True,
                unit_suffix=True,
                durations_as_seconds=True,
                histogram_bucket_overrides=names.BUCKET_OVERRIDES,
            ),
        )
    )


class ActivityMetrics(Interceptor):
    """Times each Docker step attempt (labelled with this worker's host) and counts publish attempts and
    failures by reason.
    """

    def __init__(self, host: str) -> None:
        self._host = host

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ActivityMetricsInbound(next, self._host)


class _ActivityMetricsInbound(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, host: str) -> None:
        super().__init__(next)
        self._host = host

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        kind = activity.info().activity_type
        if kind in DOCKER_STEPS:
            return await self._docker_step(input, DOCKER_STEPS[kind])
        if kind == PUBLISH_ACTIVITY:
            return await self._publish(input)
        return await super().execute_activity(input)

    async def _docker_step(self, input: ExecuteActivityInput, job_kind: str) -> Any:
        began = time.monotonic()
        try:
            return await super().execute_activity(input)
        finally:
            histogram = activity.metric_meter().create_histogram_timedelta(
                names.DOCKER_STEP, "Duration of one Docker step attempt on this worker's host"
            )
            histogram.record(timedelta(seconds=time.monotonic() - began), {"job_kind": job_kind, "host": self._host})

    async def _publish(self, input: ExecuteActivityInput) -> Any:
        meter = activity.metric_meter()
        meter.create_counter(names.PUBLISH_ATTEMPTS, "Attempts to publish a job result").add(1)
        try:
            return await super().execute_activity(input)
        except BaseException as err:
            reason = err.type if isinstance(err, ApplicationError) and err.type else type(err).__name__
            failures = meter.create_counter(names.PUBLISH_FAILURES, "Failed attempts to publish a job result")
            failures.add(1, {"reason": reason})
            raise


def record_engines(client: Client, host: str, engines: int, capacity: int) -> None:
    """The host's engine count as its reporter just saw it, and its capacity (for a near-capacity alert)."""
    runtime = client.service_client.config.runtime or Runtime.default()
    meter = runtime.metric_meter.with_additional_attributes({"host": host})
    meter.create_gauge(names.ENGINES, "Engine containers of ours on the host, any state").set(engines)
    meter.create_gauge(names.ENGINE_CAPACITY, "Engines the host takes at most").set(capacity)
