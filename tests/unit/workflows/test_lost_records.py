"""A game whose workflow lost track of its engine is looked for on the hosts: on the real dev server,
Redis, the real per-game and per-host workflows and placement, with stand-in Docker activities
(tests/support/stand_ins.py).

Each test then stops the game: a stop that took the game for one without an engine would answer
`replay_no_op` and leave the engine running; the stop must find it on its host and remove it.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import redis.asyncio as aioredis
from temporalio.client import Client, WorkflowHandle
from temporalio.exceptions import ApplicationError

from contract.engine import DOCKER_UNAVAILABLE_TYPE, EngineOutcome
from contract.lock import LockGrant, lock_workflow_id
from contract.models import JobResult
from tests.support.stand_ins import StandInEngine, job_worker

HANG_S = 120.0


def engine_that_remembers() -> StandInEngine:
    """A stand-in whose second start of a game finds its engine (a replay), as Docker would."""
    made: set[str] = set()

    def start(game_id: str) -> EngineOutcome:
        replay = game_id in made
        made.add(game_id)
        return EngineOutcome(container_id=f"cid-{game_id}", replay=replay)

    return StandInEngine(start=start)


async def run(client: Client, task_queue: str, kind: str, game_id: str) -> JobResult:
    handle: WorkflowHandle[Any, JobResult] = await client.start_workflow(
        kind, {"game_id": game_id}, id=f"test-job-{uuid.uuid4().hex}", task_queue=task_queue, result_type=JobResult
    )
    return await asyncio.wait_for(handle.result(), HANG_S)


async def test_stop_after_lock_terminated_finds_engine(
    client: Client, task_queue: str, redis_url: str, redis: aioredis.Redis, stream: str
) -> None:
    """A stop after its game's workflow was terminated finds the engine on its host."""
    engine = engine_that_remembers()
    gid = f"g-{uuid.uuid4().hex[:10]}"
    async with job_worker(client, task_queue, redis_url, stream, engine):
        assert (await run(client, task_queue, "StartRuntimeJob", gid)).error_code == ""
        # An operator terminates the game's workflow: its record of the engine goes with it.
        lock = client.get_workflow_handle(lock_workflow_id(gid, task_queue))
        await lock.terminate(reason="test: the record is lost")

        stopped = await run(client, task_queue, "StopRuntimeJob", gid)
        record = await lock.query("placement", result_type=LockGrant)
    assert stopped == JobResult.fresh_success(gid, f"cid-{gid}"), stopped
    assert engine.calls == [f"start:{gid}", f"stop:{gid}"]
    assert (record.placement_known, record.placement, record.placement_lost) == (True, None, False)


async def test_unsure_job_leaves_record_lost(
    client: Client, task_queue: str, redis_url: str, redis: aioredis.Redis, stream: str
) -> None:
    """A job that could not tell what it did leaves the record lost and the next stop finds it."""
    engine = engine_that_remembers()

    def failing_stop(game_id: str) -> EngineOutcome:
        raise ApplicationError("the engine did not answer", type=DOCKER_UNAVAILABLE_TYPE, non_retryable=True)

    working_stop = engine.stop
    engine.stop = failing_stop
    gid = f"g-{uuid.uuid4().hex[:10]}"
    async with job_worker(client, task_queue, redis_url, stream, engine):
        assert (await run(client, task_queue, "StartRuntimeJob", gid)).error_code == ""
        failed = await run(client, task_queue, "StopRuntimeJob", gid)
        assert failed.error_code == "docker_unavailable", failed
        lock = client.get_workflow_handle(lock_workflow_id(gid, task_queue))
        record = await lock.query("placement", result_type=LockGrant)
        assert (record.placement_known, record.placement_lost) == (False, True), record

        engine.stop = working_stop
        stopped = await run(client, task_queue, "StopRuntimeJob", gid)
        record = await lock.query("placement", result_type=LockGrant)
    assert stopped == JobResult.fresh_success(gid, f"cid-{gid}"), stopped
    assert engine.calls == [f"start:{gid}", f"stop:{gid}", f"stop:{gid}"]
    assert (record.placement_known, record.placement, record.placement_lost) == (True, None, False)
