"""How workflows call the activities: names, timeouts and retry policies.

Kept apart from the activity modules so that workflows import no I/O library (redis, aiodocker) into
their sandbox.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy

from contract.models import MAX_STOP_TIMEOUT_S, ErrorCode

PUBLISH_ACTIVITY = "publish_job_result"
INVALID_JOB_RESULT = "InvalidJobResult"
# Retryable: the entry is on the primary but fewer than RTJOBS_REDIS_MIN_REPLICAS replicas acknowledged it
# in time. The retry finds the entry by its idempotency key (no second entry) and waits again.
RESULT_NOT_REPLICATED = "ResultNotReplicated"

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
# Outer bounds only: the workflow cannot read config, so the activities enforce their own limits and
# these exceed the longest attempt the largest configurable values allow (contract.settings uses the
# maxima below). A start attempt is at most: the pull (RTJOBS_DOCKER_PULL_TIMEOUT_S), the readiness
# wait (RTJOBS_START_TIMEOUT_S, from after the pull), and Engine API calls, each bounded by
# RTJOBS_DOCKER_CALL_TIMEOUT_S: at most START_ATTEMPT_CALLS of them outside those two windows
# (inspect and removal of a stopped container: 4; up to 4 create rounds of network check 4, create 1,
# inspect and image inspect after a 409: 28; image inspect after the pull 1; start 1; the readiness
# wait's overshoot by its last inspect, the liveness probe and the log tail 3; removal of a failed
# start 3). A stop attempt: inspect 1, stop (grace + call deadline + 1 s), removal 3.
MAX_START_TIMEOUT_S = 3600
MAX_PULL_TIMEOUT_S = 3600
MAX_DOCKER_CALL_TIMEOUT_S = 120
START_ATTEMPT_CALLS = 40
ENSURE_RUNNING_START_TO_CLOSE = timedelta(
    seconds=MAX_PULL_TIMEOUT_S + MAX_START_TIMEOUT_S + START_ATTEMPT_CALLS * MAX_DOCKER_CALL_TIMEOUT_S
)  # 3 h 20 min
ENSURE_REMOVED_START_TO_CLOSE = timedelta(seconds=MAX_STOP_TIMEOUT_S + 5 * MAX_DOCKER_CALL_TIMEOUT_S + 60)  # 71 min
# The compensating clean-up of a failed or cancelled start: it must outlast a Docker outage longer than
# the start's own budget (the container the first attempt made stays otherwise), so it retries
# without an attempt limit, bounded by the schedule-to-close time; the game's lock is held meanwhile.
REMOVE_FAILED_START_RETRY_POLICY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=15),
    maximum_attempts=0,
    non_retryable_error_types=[code.value for code in RAISED_CODES],
)
# An attempt lists the run's containers and removes each (3 call deadlines apiece): 2 min covers one
# container at the default 30 s deadline; a longer attempt (a hung daemon with a larger deadline) is
# cut and retried, which is harmless: the clean-up is idempotent.
REMOVE_FAILED_START_START_TO_CLOSE = timedelta(minutes=2)
REMOVE_FAILED_START_SCHEDULE_TO_CLOSE = timedelta(minutes=15)
# Liveness: the activities heartbeat every second while they wait; a dead worker is noticed this fast.
DOCKER_HEARTBEAT_TIMEOUT = timedelta(seconds=20)
