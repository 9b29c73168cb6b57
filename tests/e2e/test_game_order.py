"""End to end, one game and several jobs: they run one at a time, in the order they were started, also
when an earlier job's first workflow task comes late within the settle window.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import aiodocker
import pytest
import redis.asyncio as aioredis
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle

from contract.models import JobResult
from rtjobs.client import start_job, stop_job
from tests.e2e.outputs import (
    result_of,
    stream_results,
)
from tests.support.docker_engine import EngineImages
from tests.support.job_worker import (
    MakeSettings,
    activity_events,
    game_containers,
    real_worker,
)
from tests.support.lock_order import until_asked

pytestmark = pytest.mark.docker


# --- one game, several jobs -------------------------------------------------------------------------


@pytest.mark.parametrize("kinds", [["start", "stop"], ["stop", "start", "stop"]], ids=["start-stop", "stop-start-stop"])
async def test_jobs_of_one_game_run_in_start_order(
    client: Client,
    make_settings: MakeSettings,
    docker: aiodocker.Docker,
    redis: aioredis.Redis,
    stream: str,
    games: Callable[[], str],
    images: EngineImages,
    kinds: list[str],
) -> None:
    """Jobs of one game queued at its lock run one at a time, in the order they asked."""
    gid = games()
    handles: list[WorkflowHandle[Any, JobResult]] = []
    settings = make_settings(order_settle_s=0.0)
    async with real_worker(client, settings):
        for kind in kinds:  # each started once the one before it asked for the lock, before it finished
            if kind == "start":
                handles.append(await start_job(client, gid, image=images.slow_healthy, task_queue=settings.task_queue))
            else:
                handles.append(await stop_job(client, gid, stop_timeout_s=1, task_queue=settings.task_queue))
            await until_asked(handles[-1])
        results = await asyncio.gather(*(result_of(h) for h in handles))

    started_at = [(await h.describe()).start_time for h in handles]
    assert started_at == sorted(started_at)

    # Docker steps never overlap (each is scheduled only after the one before it completed), and
    # they run in the order the jobs were started. A stop that comes first, when the game has no
    # engine anywhere (the host registry knows of none), makes no Docker call at all.
    steps = [
        await activity_events(h, "ensure_engine_running" if kind == "start" else "ensure_engine_removed")
        for kind, h in zip(kinds, handles, strict=True)
    ]
    if kinds[0] == "stop":
        assert steps[0] == {}, "a stop of a game without an engine called Docker"
        steps, kinds = steps[1:], kinds[1:]
    ran = sorted(range(len(steps)), key=lambda i: steps[i]["scheduled"].event_time.ToDatetime())
    for earlier, later in itertools.pairwise(ran):
        assert steps[earlier]["completed"].event_time.ToDatetime() <= steps[later]["scheduled"].event_time.ToDatetime()
    assert ran == list(range(len(kinds))), (
        f"jobs started as {kinds} ran their Docker steps as {[kinds[i] for i in ran]}"
    )

    # Results on the stream in start order, each what the state left by the previous job implies.
    assert await stream_results(redis, stream) == results
    container_id = ""
    all_kinds = ["stop", *kinds] if len(kinds) < len(results) else kinds
    for kind, result in zip(all_kinds, results, strict=True):
        assert result.outcome == "success", result
        if kind == "start":
            assert (result.error_code, bool(result.container_id)) == ("", True)
            container_id = result.container_id
        elif container_id:
            assert (result.error_code, result.container_id) == ("", container_id)
            container_id = ""
        else:
            assert (result.error_code, result.container_id) == ("replay_no_op", "")
    assert await game_containers(docker, gid) == [], "the last job was a stop"


async def test_late_first_task_still_runs_first(
    client: Client,
    make_settings: MakeSettings,
    docker: aiodocker.Docker,
    redis: aioredis.Redis,
    stream: str,
    games: Callable[[], str],
) -> None:
    """A job whose first task is late within the settle window still runs first.

    Start order is the order the server started the jobs, not the order their first workflow tasks
    happened to run (task-queue dispatch, a backlog): the stop started first must run first, so the
    start started 0.5 s after it leaves the engine running. A job asks for its turn no earlier than
    RTJOBS_ORDER_SETTLE_S after its start, which bounds how late a first task may be; without that,
    the start (whose first task runs at once) would go first.

    The times leave room for a slow machine (the server fires a start delay with about 1 s
    granularity): the stop's first task comes 2-3 s after its start, so the start's first task has
    1.5-2.5 s to run before it; the window is the largest allowed (5 s), so the stop's late task
    still has 2-3 s to ask for its turn before the start asks.
    """
    settings = make_settings(order_settle_s=5.0)
    gid = games()
    async with real_worker(client, settings):
        # The delay stands in for the first job's workflow task being late (by about 2 s).
        stop = await client.start_workflow(
            "StopRuntimeJob",
            {"game_id": gid},
            id=f"runtime-stop-{gid}-late",
            task_queue=settings.task_queue,
            result_type=JobResult,
            start_delay=timedelta(seconds=2),
        )
        await asyncio.sleep(0.5)
        start = await start_job(client, gid, task_queue=settings.task_queue)
        assert (await stop.describe()).start_time < (await start.describe()).start_time
        stopped, started = await asyncio.gather(result_of(stop), result_of(start))
    first_tasks = {}
    for name, handle in (("stop", stop), ("start", start)):
        events = (await handle.fetch_history()).events
        task = next(e for e in events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED)
        first_tasks[name] = task.event_time.ToDatetime()
    assert first_tasks["start"] < first_tasks["stop"], "the start's first task must have run first"
    assert [r.error_code for r in await stream_results(redis, stream)] == ["replay_no_op", ""], (
        "the stop started first must be published first (a replay: there was no engine yet)"
    )
    assert (stopped.error_code, started.error_code) == ("replay_no_op", "")
    [container] = await game_containers(docker, gid)
    assert container["State"] == "running", "the last job started was a start"
