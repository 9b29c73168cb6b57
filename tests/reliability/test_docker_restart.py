"""Scenario 5: the Docker daemon restarts, or hangs, while an engine is starting (the test's own dockerd,
never the shared one).

What happens, as measured (Debian's dockerd 20.10): on SIGTERM the daemon closes its listener at once,
stops its containers (the slow-healthy engine traps TERM and exits 0) while still answering on
connections already open, then exits. The start's readiness wait sees its engine `exited`; a new
connection is refused, so that attempt fails as retryable DockerUnavailable, and so does every attempt
while the daemon is away. What the job ends in depends only on whether the daemon is back within the
start's retry budget; a failed job's containers are removed by the workflow's clean-up.

A hung daemon (SIGSTOP) is another outage: connections are still accepted, nothing answers, every call
runs into its deadline, and once thawed the daemon serves every request that was queued, including
those whose client gave up long ago. So a start that hangs in its readiness wait does not leave its
container: its own clean-up's DELETE is queued and served on the thaw. What does outlive the start is a
create that the daemon receives just as it hangs: the start never learns of the container, which the
daemon makes only once it is back, after the job has spent its budget; only the workflow's clean-up
(`remove_failed_start`) can remove it, and the job must not complete before it has.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiodocker
import pytest
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.testing import WorkflowEnvironment

from contract.engine import (
    DOCKER_UNAVAILABLE_TYPE,
    ENSURE_RUNNING_ACTIVITY,
    REMOVE_FAILED_START_ACTIVITY,
    FailedStartRemoved,
)
from contract.models import LABEL_JOB_RUN
from contract.policies import DOCKER_RETRY_POLICY, PUBLISH_ACTIVITY
from tests.reliability.test_worker_kill import until_containers_exist
from tests.support.docker_engine import TEST_IMAGES, build_test_images
from tests.support.docker_relay import DockerRelay
from tests.support.processes import Process, start_ready_worker
from tests.support.redis_server import RedisServer
from tests.support.restartable_dockerd import RestartableDockerd, own_dockerd
from tests.support.runs import (
    ActivityRun,
    Handle,
    activity_runs,
    assert_no_orphans,
    assert_one_entry_per_run,
    containers_of,
    results,
    start_runs,
    until_pending,
)
from tests.support.stack import WorkerEnv

POSSIBLE = frozenset(
    {
        # The daemon came back within the retry budget: the next attempt finds its own engine (stopped
        # by the daemon; the `galaxy.job-run` label says it is this job's), removes it, makes it anew
        # and it becomes healthy within RTJOBS_START_TIMEOUT_S.
        ("success", ""),
        # The daemon was away longer than the budget (5 attempts, 1+2+4+8 = 15 s of backoff): its stop,
        # the down time and its start on a loaded 2-core machine can together exceed that.
        ("failure", "docker_unavailable"),
        # Not container_exited: an engine the daemon stopped while shutting down is no verdict on the
        # engine. Not container_start_failed: a create or start that the going-away daemon fails with a
        # 5xx is unavailability too (the same new-connection probe), and once it is back the same
        # create and start succeed.
    }
)
# A hung daemon outlasts the budget by construction (it is thawed only once the failure is published).
BUDGET_SPENT = frozenset({("failure", "docker_unavailable")})
# The worker's Docker call deadline while the daemon hangs: every call runs into it, so it sets the pace
# of the 5 attempts (each ends on its first call, ~2 s) plus their 15 s of backoff: ~25 s in all.
HUNG_CALL_DEADLINE_S = 2
# How long the clean-up's next attempt must still be away when the daemon is thawed (see the test).
THAW_BEFORE_NEXT_ATTEMPT_S = 0.5
# Generous: the daemon's stop and start, the retries, the engine's readiness and the clean-up of a
# failed start, on a loaded 2-core machine.
JOBS_FINISH_S = 240


@pytest.fixture
async def dockerd() -> AsyncIterator[RestartableDockerd]:
    """A dockerd of this test's own, with the test images; stopped and cleaned up whatever happens."""
    async with own_dockerd(build_test_images) as daemon:
        yield daemon


@pytest.mark.slow
@pytest.mark.docker
@pytest.mark.parametrize("down_s", [0.0, 6.0], ids=["restart", "down-6s"])
async def test_docker_restart_during_start(
    down_s: float,
    processes: list[Process],
    worker_env_for: WorkerEnv,
    dockerd: RestartableDockerd,
    own_redis: RedisServer,
    temporal_env: WorkflowEnvironment,
    task_queue: str,
    results_stream: str,
) -> None:
    await start_ready_worker(processes, worker_env_for(DOCKER_HOST=dockerd.url))
    prefix = f"dr{uuid.uuid4().hex[:8]}"
    games = [f"{prefix}-{i}" for i in range(2)]
    runs = await start_runs(
        temporal_env.client, task_queue, games, image="rtjobs-test/engine:slow-healthy", accepted=POSSIBLE
    )
    await until_pending(runs, ENSURE_RUNNING_ACTIVITY)
    health = await until_containers_exist(dockerd.url, games)
    began = time.monotonic()
    await asyncio.to_thread(dockerd.stop_daemon)
    await asyncio.sleep(down_s)
    await asyncio.to_thread(dockerd.start)
    restart_s = time.monotonic() - began
    assert "healthy" not in health.values(), f"the restart came after readiness: {health}"
    back = await containers_of(dockerd.url, games)
    left = {
        g: [(c["Id"][:12], c["State"]["Status"], c["Config"]["Labels"].get(LABEL_JOB_RUN)) for c in cs]
        for g, cs in back.items()
    }

    # Completion includes the workflow's clean-up of a failed start, so leftovers are final now.
    finished = await results(runs, JOBS_FINISH_S)
    took = time.monotonic() - began
    starts = [await activity_runs(run.handle, ENSURE_RUNNING_ACTIVITY) for run in runs]
    shown = [
        (r.outcome, r.error_code, r.error_message[:160], [a.attempt for a in s])
        for r, s in zip(finished, starts, strict=True)
    ]
    print(
        f"\n[docker restart] {len(runs)} starts; dockerd down {down_s:g}s, restart took {restart_s:.1f}s; "
        f"jobs finished {took:.1f}s after it began; containers when it was back {left}; "
        f"(outcome, code, message, attempts) {shown}"
    )
    for run, result, (start,) in zip(runs, finished, starts, strict=True):
        # The outage hit the start: an attempt failed, retryably, and a later one ended the activity.
        assert start.attempt > 1 and start.last_failure == DOCKER_UNAVAILABLE_TYPE, (run.game_id, start, result)
        if result.outcome == "success":
            assert start.completed, (run.game_id, start)
        else:  # the budget was spent on the outage
            assert start.failure == DOCKER_UNAVAILABLE_TYPE, (run.game_id, start, result)
            assert start.attempt == DOCKER_RETRY_POLICY.maximum_attempts, (run.game_id, start)
    await assert_no_orphans(dockerd.url, runs, finished)
    await assert_one_entry_per_run(own_redis.url, results_stream, runs)


@pytest.mark.slow
@pytest.mark.docker
async def test_docker_hangs_past_the_start_budget(
    processes: list[Process],
    worker_env_for: WorkerEnv,
    dockerd: RestartableDockerd,
    own_redis: RedisServer,
    temporal_env: WorkflowEnvironment,
    task_queue: str,
    results_stream: str,
) -> None:
    """The daemon hangs (SIGSTOP) just as the start's create reaches it and stays hung until the job has
    spent its budget and published `docker_unavailable`; thawed, it makes the container. The job must
    complete only after its clean-up removed that container, and leave nothing of it.
    """
    async with DockerRelay(dockerd.socket, dockerd.dir / "relay.sock") as relay:
        env = worker_env_for(DOCKER_HOST=relay.url, RTJOBS_DOCKER_CALL_TIMEOUT_S=str(HUNG_CALL_DEADLINE_S))
        await start_ready_worker(processes, env)
        game = f"dh{uuid.uuid4().hex[:8]}-0"
        with dockerd.thawed_at_exit():  # SIGCONT whatever happens from the moment the freeze is armed
            relay.before(b"/containers/create", dockerd.freeze)
            began = time.monotonic()
            (run,) = await start_runs(
                temporal_env.client, task_queue, [game], image=TEST_IMAGES.healthy, accepted=BUDGET_SPENT
            )
            await asyncio.wait_for(relay.fired.wait(), 60)
            assert relay.hook_error is None, relay.hook_error
            frozen_at = time.monotonic()
            # Event-driven, not a fixed sleep: hung until the history shows the failure published...
            (publish,) = await until_closed(run.handle, PUBLISH_ACTIVITY, JOBS_FINISH_S)
            published_at = time.monotonic()
            # ...and then until the clean-up waits out a backoff between attempts. Thawed while one of its
            # attempts is in flight, the daemon serves that attempt's list (queued) together with the
            # queued create, may answer the list before the create is done, and the clean-up then ends
            # with nothing removed while the container appears after it: that window is the product's,
            # and this test is about the clean-up finding what a late daemon made.
            cleanup_attempt = await until_between_attempts(run.handle, REMOVE_FAILED_START_ACTIVITY, 60)
        thawed_wall = datetime.now(UTC)
        thawed_at = time.monotonic()

        finished = await results([run], JOBS_FINISH_S)
        closed_at = time.monotonic()
    (result,) = finished
    job_run = await run_label(run.handle)
    closed = (await run.handle.describe()).close_time
    assert closed is not None
    events = await container_events(dockerd.url, job_run)
    (start,) = await activity_runs(run.handle, ENSURE_RUNNING_ACTIVITY)
    (cleanup,) = await activity_runs(run.handle, REMOVE_FAILED_START_ACTIVITY)
    removed = FailedStartRemoved.model_validate_json(cleanup.result).removed if cleanup.completed else []
    print(
        f"\n[docker hang] frozen {frozen_at - began:.1f}s after the job began, at its create; "
        f"start attempts {start.attempt} ({start.failure}) took {_span(start):.1f}s; "
        f"published {publish.result.decode()} {published_at - began:.1f}s after it began; thawed "
        f"{thawed_at - began:.1f}s after it began (hung {thawed_at - frozen_at:.1f}s), before clean-up attempt "
        f"{cleanup_attempt}; clean-up ended in attempt {cleanup.attempt} after {_span(cleanup):.1f}s, removed "
        f"{[c[:12] for c in removed]}; job closed {closed_at - began:.1f}s after it began; "
        f"container events {[(a, i[:12], f'{(t - thawed_wall).total_seconds():+.3f}s') for t, a, i in events]} "
        f"(time from the thaw); ({result.outcome}, {result.error_code}, {result.error_message[:120]})"
    )

    # The start spent its budget on the hang, every attempt running into the call deadline.
    assert (result.outcome, result.error_code) == ("failure", "docker_unavailable"), result
    assert start.attempt == DOCKER_RETRY_POLICY.maximum_attempts, start
    assert start.failure == start.last_failure == DOCKER_UNAVAILABLE_TYPE, start
    # The container: made by the daemon only once it was thawed (the start never knew of it), removed by
    # the clean-up, and gone before the job completed.
    made = [cid for _t, action, cid in events if action == "create"]
    assert len(made) == 1, events
    (container_id,) = made
    assert removed == [container_id], (removed, events)
    assert cleanup.completed and cleanup.attempt > 1 and cleanup.last_failure == DOCKER_UNAVAILABLE_TYPE, cleanup
    created_at = next(t for t, action, _cid in events if action == "create")
    destroyed = [t for t, action, cid in events if action == "destroy" and cid == container_id]
    assert created_at >= thawed_wall, (created_at, thawed_wall)
    assert destroyed and destroyed[0] <= closed, (destroyed, closed)
    assert cleanup.closed_at is not None and cleanup.closed_at <= closed, (cleanup, closed)
    async with aiodocker.Docker(url=dockerd.url) as docker:
        left = await docker.containers.list(all=True, filters={"label": [f"{LABEL_JOB_RUN}={job_run}"]})
    assert left == [], [c.id for c in left]
    await assert_no_orphans(dockerd.url, [run], finished)
    await assert_one_entry_per_run(own_redis.url, results_stream, [run])


async def until_closed(handle: Handle, activity_type: str, timeout_s: float) -> list[ActivityRun]:
    """Poll the run's history until every `activity_type` it scheduled (at least one) has ended."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = await activity_runs(handle, activity_type)
        if found and all(a.closed_at is not None for a in found):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{activity_type} not ended within {timeout_s}s: {found}")
        await asyncio.sleep(0.1)


async def until_between_attempts(handle: Handle, activity_type: str, timeout_s: float) -> int:
    """Wait until `activity_type` has failed an attempt and its next one is at least
    THAW_BEFORE_NEXT_ATTEMPT_S away; returns the number of that next attempt.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        desc = await handle.describe()
        now = datetime.now(UTC)
        for pending in desc.raw_description.pending_activities:
            if pending.activity_type.name != activity_type or pending.attempt < 2:
                continue
            if pending.state != PendingActivityState.PENDING_ACTIVITY_STATE_SCHEDULED:
                continue
            if not pending.HasField("next_attempt_schedule_time"):
                continue
            next_at = pending.next_attempt_schedule_time.ToDatetime(tzinfo=UTC)
            if (next_at - now).total_seconds() >= THAW_BEFORE_NEXT_ATTEMPT_S:
                return int(pending.attempt)
        if time.monotonic() > deadline:
            raise AssertionError(f"{activity_type} never between attempts: {desc.raw_description.pending_activities}")
        await asyncio.sleep(0.05)


async def run_label(handle: Handle) -> str:
    """The run's `galaxy.job-run` label value: "{workflow_id}/{run_id}"."""
    desc = await handle.describe()
    return f"{desc.id}/{desc.run_id}"


async def container_events(docker_url: str, job_run: str) -> list[tuple[datetime, str, str]]:
    """The daemon's container events (time, action, id) so far for containers labelled with the run."""
    filters = {"type": ["container"], "label": [f"{LABEL_JOB_RUN}={job_run}"]}
    params = {"since": "0", "until": str(int(time.time()) + 1), "filters": json.dumps(filters)}
    async with aiodocker.Docker(url=docker_url) as docker, docker._query("events", params=params) as response:
        text = await response.text()
    events: list[dict[str, Any]] = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [(datetime.fromtimestamp(e["timeNano"] / 1e9, UTC), str(e["Action"]), str(e["id"])) for e in events]


def _span(activity: ActivityRun) -> float:
    if activity.scheduled_at is None or activity.closed_at is None:
        return float("nan")
    return (activity.closed_at - activity.scheduled_at).total_seconds()
