"""How workflows call the activities: names, timeouts and retry policies.

Kept apart from the activity modules so that workflows import no I/O library (redis, aiodocker) into
their sandbox.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy

from contract.models import ErrorCode

PUBLISH_ACTIVITY = "publish_job_result"
INVALID_JOB_RESULT = "InvalidJobResult"

# Workflows call the publish activity with these. Unlimited attempts: a result is never dropped
# because Redis was away for a while; the idempotency key keeps the retries from doubling it.
PUBLISH_RETRY_POLICY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=0,
    non_retryable_error_types=[INVALID_JOB_RESULT],
)
PUBLISH_START_TO_CLOSE_TIMEOUT = timedelta(seconds=5)


# The error codes these activities raise; all permanent (the retry policy must not retry them).
RAISED_CODES: tuple[ErrorCode, ...] = (
    ErrorCode.INVALID_REQUEST,
    ErrorCode.IMAGE_PULL_FAILED,
    ErrorCode.CONTAINER_CONFLICT,
    ErrorCode.CONTAINER_START_FAILED,
    ErrorCode.CONTAINER_EXITED,
    ErrorCode.ENGINE_UNHEALTHY,
    ErrorCode.CONTAINER_STOP_FAILED,
)

# Workflows call both activities with these. The budget (5 attempts, ~15 s of backoff plus the call
# deadlines) bounds how long an absent Docker engine holds a job before it reports docker_unavailable.
DOCKER_RETRY_POLICY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=5,
    non_retryable_error_types=[code.value for code in RAISED_CODES],
)
# Outer bounds only: the workflow cannot read config, so the activity enforces RTJOBS_START_TIMEOUT_S
# (at most 3600 s) and the pull bound itself; these just exceed the largest configurable values.
ENSURE_RUNNING_START_TO_CLOSE = timedelta(minutes=75)
ENSURE_REMOVED_START_TO_CLOSE = timedelta(minutes=65)
# Liveness: the activities heartbeat every second while they wait; a dead worker is noticed this fast.
DOCKER_HEARTBEAT_TIMEOUT = timedelta(seconds=20)
