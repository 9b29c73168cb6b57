"""The module's own metric names and labels (docs/operations.md, "Metrics").

Shared by the workflows (which record job outcomes through the replay-safe workflow meter), the
worker's activity interceptor and host reporter (`rtjobs/ops/metrics.py`), the alert rules and the dashboard.
Names are given without suffixes: the Prometheus exporter appends `_total` to counters and
`_seconds` to durations (`PrometheusConfig(counters_total_suffix=True, unit_suffix=True,
durations_as_seconds=True)`), so `rtjobs_jobs` is scraped as `rtjobs_jobs_total`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# Counter, labels job_kind (start|stop), outcome (success|failure), error_code ("" | replay_no_op | a code).
JOBS = "rtjobs_jobs"
# Histogram of seconds from the workflow's start to its result on the stream, labels job_kind, outcome.
JOB_DURATION = "rtjobs_job_duration"
# Histogram of seconds of one Docker step attempt on a host's worker, labels job_kind, host.
DOCKER_STEP = "rtjobs_docker_step"
# Counters: every publish attempt; the failed ones by reason (the failure's type, e.g. ConnectionError,
# ResultNotReplicated, InvalidJobResult).
PUBLISH_ATTEMPTS = "rtjobs_publish_attempts"
PUBLISH_FAILURES = "rtjobs_publish_failures"
# Gauges by host: engine containers of ours on the host (any state), and how many it takes.
ENGINES = "rtjobs_engines"
ENGINE_CAPACITY = "rtjobs_engine_capacity"
# Counter, label action (removed | adopted | removed_unknown | cleared): what reconciliation did.
RECONCILE_ACTIONS = "rtjobs_reconcile_actions"

# Buckets in seconds: a start pulls and waits for health (up to RTJOBS_START_TIMEOUT_S, 120 s by
# default); the exporter's default buckets end at 10 s, where slow starts would all look alike.
DURATION_BUCKETS_S: Sequence[float] = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
BUCKET_OVERRIDES: Mapping[str, Sequence[float]] = {JOB_DURATION: DURATION_BUCKETS_S, DOCKER_STEP: DURATION_BUCKETS_S}
