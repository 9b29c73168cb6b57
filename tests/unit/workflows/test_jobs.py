"""Branching of the job workflows on the real dev server and real Redis, with stand-in Docker activities
(tests/support/stand_ins.py).

The stand-ins are registered under the real activity names; the real Docker activities are tested
against a real engine in test_docker_*.py and end to end in test_e2e.py.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError

from contract.engine import DOCKER_UNAVAILABLE_TYPE, EngineOutcome
from contract.hosts import ENGINE_CHANGED_SIGNAL
from contract.lock import RELEASE_SIGNAL, LockGrant, lock_workflow_id
from contract.models import JobResult, JobStatus, PublishRequest
from contract.policies import PUBLISH_ACTIVITY
from tests.support.lock_order import until_asked
from tests.support.stand_ins import StandInEngine, job_worker
from tests.support.streams import read_entries
from workflows import StartRuntimeJob, StopRuntimeJob
from workflows.search import GAME_ID, JOB_KIND

# How long a wait may last before the test calls it a hang: no check here is a speed check (those are
# in bench/), so this only has to exceed what a loaded 2-core machine can take, with room to spare.
HANG_S = 120.0


def game() -> str:
    return f"g-{uuid.uuid4().hex[:10]}"


async def start(client: Client, task_queue: str, wf: Any, request: Any) -> WorkflowHandle[Any, JobResult]:
    return await client.start_workflow(
        wf, request, id=f"test-job-{uuid.uuid4().hex}", task_queue=task_queue, result_type=JobResult
    )


async def test_start_success_publishes_and_returns_the_fresh_result(
    client: Client, task_queue: str, redis_url: str, redis: aioredis.Redis, stream: str
) -> None:
    gid, engine = game(), StandInEngine()
    async with job_worker(client, task_queue, redis_url, stream, engine):
        handle = await start(client, task_queue, "StartRuntimeJob", {"game_id": gid, "image": "busybox:1"})
        result = await handle.result()
        status = await handle.query(StartRuntimeJob.status)
    assert result == JobResult.fresh_success(gid, f"cid-{gid}")
    [(entry_id, fields)] = await read_entries(redis, stream)
    assert fields == result.stream_fields()
    assert isinstance(status, JobStatus) and status.entry_id == entry_id
    desc = await handle.describe()
    assert desc.typed_search_attributes.get(GAME_ID) == gid
    assert desc.typed_search_attributes.get(JOB_KIND) == "start"


async def test_replay_outcomes_become_replay_no_op(
    client: Client, task_queue: str, redis_url: str, redis: aioredis.Redis, stream: str
) -> None:
    gid = game()
    engine = StandInEngine(
        start=lambda g: EngineOutcome(container_id=f"cid-{g}", replay=True),
        stop=lambda g: EngineOutcome(container_id="", replay=True),
    )
    async with job_worker(client, task_queue, redis_url, stream, engine):
        started = await (await start(client, task_queue, StartRuntimeJob.run, {"game_id": gid})).result()
        stopped = await (await start(client, task_queue, StopRuntimeJob.run, {"game_id": gid})).result()
    assert started == JobResult.replay(gid, f"cid-{gid}")
    assert stopped == JobResult.replay(gid)
    assert [f for _i, f in await read_entries(redis, stream)] == [started.stream_fields(), stopped.stream_fields()]


@pytest.mark.parametrize(
    ("workflow", "request_fields", "named"),
    [
        ("StartRuntimeJob", {"game_id": "G_1"}, "game_id"),
        ("StartRuntimeJob", {"game_id": "-g"}, "game_id"),
        ("StartRuntimeJob", {"game_id": "g-1", "image": "Not A Ref"}, "image"),
        ("StartRuntimeJob", {"game_id": "g-1", "imgae": "typo"}, "imgae"),
        ("StopRuntimeJob", {"game_id": "g-1", "stop_timeout_s": -5}, "stop_timeout_s"),
        ("StopRuntimeJob", {"game_id": "g-1", "stop_timeout_s": "30"}, "stop_timeout_s"),
        ("StopRuntimeJob", {"game_id": "g-1", "stop_timeout_s": 99999}, "stop_timeout_s"),
    ],
)
async def test_rule_breaking_input_names_the_field(
    client: Client,
    task_queue: str,
    redis_url: str,
    redis: aioredis.Redis,
    stream: str,
    workflow: str,
    request_fields: dict[str, Any],
    named: str,
) -> None:
    """Rule breaking input publishes `invalid_request` naming the field."""
    engine = StandInEngine()
    async with job_worker(client, task_queue, redis_url, stream, engine):
        result = await (await start(client, task_queue, workflow, request_fields)).result(rpc_timeout=None)
    assert (result.outcome, result.error_code, result.container_id) == ("failure", "invalid_request", "")
    assert f"{named}:" in result.error_message
    assert "\n" not in result.error_message
    assert engine.calls == []
    [(_id, fields)] = await read_entries(redis, stream)
    assert fields == result.stream_fields()


@pytest.mark.parametrize("payload", [{"game_id": ""}, {"game_id": "   "}, {}, {"game_id": 7}, "g-1", ["g-1"], None])
async def test_input_without_game_id_fails_the_run(
    client: Client, task_queue: str, redis_url: str, redis: aioredis.Redis, stream: str, payload: Any
) -> None:
    """Input without a usable `game_id` fails the workflow and publishes nothing."""
    async with job_worker(client, task_queue, redis_url, stream, StandInEngine()):
        handle = await start(client, task_queue, "StartRuntimeJob", payload)
        with pytest.raises(WorkflowFailureError) as failure:
            await asyncio.wait_for(handle.result(), timeout=HANG_S)
    assert "game_id" in str(failure.value.cause) or "valid" in str(failure.value.cause).lower()
    history = await handle.fetch_history()
    failed_tasks = [e for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED]
    assert failed_tasks == [], "a bad payload must fail the run at once, not retry its task"
    assert await redis.exists(stream) == 0


@pytest.mark.parametrize(
    ("error", "code", "in_message"),
    [
        (ApplicationError("engine exited with code 3: boom", type="container_exited", non_retryable=True),
         "container_exited", "code 3"),
        (ApplicationError("image x: not found", type="image_pull_failed", non_retryable=True),
         "image_pull_failed", "not found"),
        (ApplicationError("something odd", type="Surprise", non_retryable=True), "internal_error", "something odd"),
        (RuntimeError("kaboom"), "internal_error", "kaboom"),
    ],
)  # fmt: skip
async def test_docker_failures_map_to_their_error_code(
    client: Client,
    task_queue: str,
    redis_url: str,
    redis: aioredis.Redis,
    stream: str,
    error: Exception,
    code: str,
    in_message: str,
) -> None:
    def fail(_game_id: str) -> EngineOutcome:
        raise error

    engine = StandInEngine(start=fail)
    gid = game()
    async with job_worker(client, task_queue, redis_url, stream, engine):
        handle = await start(client, task_queue, StartRuntimeJob.run, {"game_id": gid})
        result = await asyncio.wait_for(handle.result(), timeout=HANG_S)  # retried ones: ~15 s of backoff
    assert (result.outcome, result.error_code) == ("failure", code)
    assert in_message in result.error_message
    assert [f for _i, f in await read_entries(redis, stream)] == [result.stream_fields()]


async def test_unanswering_docker_is_docker_unavailable(
    client: Client, task_queue: str, redis_url: str, redis: aioredis.Redis, stream: str
) -> None:
    """Unanswering Docker becomes `docker_unavailable` after the budget."""

    def unreachable(_game_id: str) -> EngineOutcome:
        raise ApplicationError("cannot connect to unix:///nowhere.sock", type=DOCKER_UNAVAILABLE_TYPE)

    gid, engine = game(), StandInEngine(stop=unreachable)
    async with job_worker(client, task_queue, redis_url, stream, engine):
        # Started first, so that the stop knows the game's host and goes there (a game with no engine
        # anywhere is a stop replay without a Docker call).
        started = await (await start(client, task_queue, StartRuntimeJob.run, {"game_id": gid})).result()
        result = await (await start(client, task_queue, StopRuntimeJob.run, {"game_id": gid})).result()
    assert started.outcome == "success"
    assert result.error_code == "docker_unavailable"
    assert "nowhere.sock" in result.error_message
    assert engine.calls == [f"start:{gid}"] + [f"stop:{gid}"] * 5
    assert len(await read_entries(redis, stream)) == 2


async def test_cancel_mid_start_awaits_docker(
    client: Client, task_queue: str, redis_url: str, redis: aioredis.Redis, stream: str
) -> None:
    """Cancel mid start awaits the Docker cancellation then publishes cancelled."""
    # The stand-in's Docker step lasts far longer than a cancellation takes to reach it (the next
    # heartbeat the SDK sends: at most 16 s here, 0.8 x the 20 s heartbeat timeout), so that a slow
    # machine cannot let it finish first; the waits below only stop a hang, they time nothing.
    gid, engine = game(), StandInEngine(delay_s=HANG_S)
    async with job_worker(client, task_queue, redis_url, stream, engine):
        handle = await start(client, task_queue, StartRuntimeJob.run, {"game_id": gid})
        deadline = asyncio.get_running_loop().time() + HANG_S
        while not engine.calls:
            assert asyncio.get_running_loop().time() < deadline, "the Docker step never started"
            await asyncio.sleep(0.05)
        await handle.cancel()
        result = await asyncio.wait_for(handle.result(), timeout=HANG_S)
    assert (result.outcome, result.error_code) == ("failure", "cancelled")
    assert engine.cancelled == [gid]
    history = await handle.fetch_history()
    kinds = [e.event_type for e in history.events]
    assert kinds.index(EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED) < max(
        i for i, k in enumerate(kinds) if k == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ), "the publish must be scheduled after the Docker activity's cancellation completed"
    assert [f for _i, f in await read_entries(redis, stream)] == [result.stream_fields()]


async def test_jobs_of_one_game_never_overlap_and_publish_in_start_order(
    client: Client, task_queue: str, redis_url: str, redis: aioredis.Redis, stream: str
) -> None:
    games = [game() for _ in range(3)]
    engine = StandInEngine(delay_s=0.3)
    started: dict[str, list[WorkflowHandle[Any, JobResult]]] = {gid: [] for gid in games}
    async with job_worker(client, task_queue, redis_url, stream, engine, order_settle_s=0.0):
        # start, stop, start, stop for each game, interleaved across games, each started once the one
        # before it asked for its game's lock: the order the test starts them is each game's lock order.
        for n in range(4):
            for gid in games:
                wf = StartRuntimeJob.run if n % 2 == 0 else StopRuntimeJob.run
                started[gid].append(await start(client, task_queue, wf, {"game_id": gid}))
                await until_asked(started[gid][-1])
        handles = [h for game_handles in started.values() for h in game_handles]
        await asyncio.gather(*(h.result() for h in handles))
        # Each run's own entry id (from its status query), so an entry is tied to the job that wrote it.
        statuses = await asyncio.gather(*(h.query("status", result_type=JobStatus) for h in handles))
        entry_of = {h.id: s.entry_id for h, s in zip(handles, statuses, strict=True)}
        start_times = {h.id: (await h.describe()).start_time for h in handles}

    entries = await read_entries(redis, stream)
    assert len(entries) == 12
    for gid in games:
        order = [h.id for h in started[gid]]  # the order the test started them
        times = [start_times[job] for job in order]
        assert all(a < b for a, b in itertools.pairwise(times)), f"the server's start times {times} disagree"

        # Published in start order: the game's entries in stream order are the jobs' entries in start order.
        published = [entry_id for entry_id, fields in entries if fields["game_id"] == gid]
        assert published == [entry_of[job] for job in order], (
            f"game {gid}: stream order {published}, start order {[entry_of[job] for job in order]}"
        )

        # Never overlap: each Docker step (stand-in) of the game ended before the next one began, and
        # they ran in start order. (The stand-in records (game, job, began, ended) of every call.)
        spans = sorted((began, ended, job) for g, job, began, ended in engine.spans if g == gid)
        assert [job for _b, _e, job in spans] == order, f"game {gid}: Docker steps ran out of start order"
        for (_b, ended, job), (began, _e, next_job) in itertools.pairwise(spans):
            assert ended <= began, f"game {gid}: {next_job}'s Docker step began before {job}'s ended"


def _events(history: Any, kind: EventType.ValueType) -> list[Any]:
    return [e for e in history.events if e.event_type == kind]


async def test_publish_hands_the_turn_on(
    client: Client, task_queue: str, redis_url: str, redis: aioredis.Redis, stream: str
) -> None:
    """The publish hands the turn on once the result is on the stream.

    JOB_PATCH_V4: a job with nothing to do after its publish leaves the registry's word and the release
    to the publish activity, which sends them after the append; a failed start that must clean up first
    still releases the turn itself, after the clean-up.
    """
    gid, engine = game(), StandInEngine()
    async with job_worker(client, task_queue, redis_url, stream, engine):
        started = await start(client, task_queue, StartRuntimeJob.run, {"game_id": gid})
        await asyncio.wait_for(started.result(), HANG_S)
        lock = client.get_workflow_handle(lock_workflow_id(gid, task_queue))
        after_start = await lock.query("placement", result_type=LockGrant)
        stopped = await start(client, task_queue, StopRuntimeJob.run, {"game_id": gid})
        await asyncio.wait_for(stopped.result(), HANG_S)
        after_stop = await lock.query("placement", result_type=LockGrant)

    assert after_start.placement_known and after_start.placement is not None
    assert after_start.placement.container_id == f"cid-{gid}"
    assert after_stop.placement_known and after_stop.placement is None
    for handle in (started, stopped):  # each made or removed the engine: the registry hears it, then the release
        history = await handle.fetch_history()
        # The job itself signals nobody and ends in the task after its publish.
        assert not _events(history, EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED)
        (scheduled,) = [
            e
            for e in _events(history, EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED)
            if e.activity_task_scheduled_event_attributes.activity_type.name == PUBLISH_ACTIVITY
        ]
        (payload,) = scheduled.activity_task_scheduled_event_attributes.input.payloads
        request = PublishRequest.model_validate_json(payload.data)
        assert [s.signal for s in request.then_signal] == [ENGINE_CHANGED_SIGNAL, RELEASE_SIGNAL]
        assert request.then_signal[-1].workflow_id == lock_workflow_id(gid, task_queue)
    # The game's workflow got both releases, each after its job's entry was on the stream.
    lock_history = await lock.fetch_history()
    releases = [
        e
        for e in _events(lock_history, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED)
        if e.workflow_execution_signaled_event_attributes.signal_name == RELEASE_SIGNAL
    ]
    entries = await read_entries(redis, stream)
    assert len(releases) == 2 and len(entries) == 2
    for (entry_id, _fields), release in zip(entries, releases, strict=True):
        appended_ms = int(entry_id.split("-")[0])
        assert release.event_time.ToMilliseconds() >= appended_ms

    def fail(_game_id: str) -> EngineOutcome:
        raise ApplicationError("no such image", type="image_pull_failed", non_retryable=True)

    failing = game()
    async with job_worker(client, task_queue, redis_url, stream, StandInEngine(start=fail)):
        handle = await start(client, task_queue, StartRuntimeJob.run, {"game_id": failing})
        result = await asyncio.wait_for(handle.result(), HANG_S)
    assert result.error_code == "image_pull_failed"
    history = await handle.fetch_history()
    sent = [
        e.signal_external_workflow_execution_initiated_event_attributes.signal_name
        for e in _events(history, EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED)
    ]
    assert sent == [ENGINE_CHANGED_SIGNAL, RELEASE_SIGNAL]  # the reservation freed, then the turn
