"""The per-game lock's hard cases, on the real dev server and Redis with stand-in Docker activities.

Each test shortens one of the lock's intervals (the sandbox imports them from `contract.lock` when a
workflow run begins, so a monkeypatched value reaches the runs the test starts) and drives the case
its name states: a busy game's continue-as-new, state carried into a new run, a holder check that
cannot get an answer, a holder reset by an operator, a lock run terminated under its jobs, a job
reset after it published.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis
from temporalio import activity, workflow
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import ResetWorkflowExecutionRequest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

import contract.lock
from contract.lock import (
    ACQUIRE_SIGNAL,
    HOLDER_RUNNING_ACTIVITY,
    HolderCheck,
    LockRequest,
    LockState,
    lock_workflow_id,
)
from contract.models import JobResult, JobStatus
from tests.support.lock_order import until_asked
from tests.support.stand_ins import StandInEngine, job_worker
from tests.support.streams import read_entries
from workflows import RuntimeGameLock, StartRuntimeJob, StopRuntimeJob
from workflows.awaiting import shielded

# Generous bounds for a loaded 2-core machine: a failure here means a job that never ends (the bug
# each test is about), not a slow one.
RESULT_WAIT_S = 90.0

Handle = WorkflowHandle[Any, JobResult]


def game() -> str:
    return f"lk-{uuid.uuid4().hex[:10]}"


async def start(client: Client, task_queue: str, wf: Any, gid: str) -> Handle:
    return await client.start_workflow(
        wf, {"game_id": gid}, id=f"test-job-{uuid.uuid4().hex}", task_queue=task_queue, result_type=JobResult
    )


async def result_of(handle: Handle) -> JobResult:
    return await asyncio.wait_for(handle.result(), RESULT_WAIT_S)


async def until(condition: Any, what: str, within_s: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.05)


def span_of(engine: StandInEngine, workflow_id: str) -> tuple[float, float]:
    [(began, ended)] = [(b, e) for _g, wid, b, e in engine.spans if wid == workflow_id]
    return began, ended


async def reset_to(client: Client, handle: Handle, event_id: int) -> str:
    """`temporal workflow reset` to the given WorkflowTaskCompleted event; the new run's id."""
    desc = await handle.describe()
    response = await client.workflow_service.reset_workflow_execution(
        ResetWorkflowExecutionRequest(
            namespace=client.namespace,
            workflow_execution=WorkflowExecution(workflow_id=handle.id, run_id=desc.run_id),
            reason="test: operator reset",
            workflow_task_finish_event_id=event_id,
            request_id=str(uuid.uuid4()),
        )
    )
    return response.run_id


def completed_task_ids(events: Any) -> list[int]:
    return [e.event_id for e in events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED]


async def test_a_busy_lock_continues_as_new_with_its_waiters(
    client: Client, task_queue: str, redis_url: str, redis: aioredis.Redis, stream: str, monkeypatch: Any
) -> None:
    monkeypatch.setattr(contract.lock, "GRANTS_BEFORE_CONTINUE_AS_NEW", 2)
    gid, engine = game(), StandInEngine(delay_s=0.3)
    # Each started once the one before it asked for the lock: the order asserted is the lock's.
    async with job_worker(client, task_queue, redis_url, stream, engine, order_settle_s=0.0):
        handles = []
        for _ in range(6):
            handles.append(await start(client, task_queue, StartRuntimeJob.run, gid))
            await until_asked(handles[-1])
        results = [await result_of(h) for h in handles]
    assert all(r.outcome == "success" for r in results)
    ids = [h.id for h in handles]
    assert [wid for _g, wid, _b, _e in sorted(engine.spans, key=lambda s: s[2])] == ids, "turns in start order"
    lock_id = lock_workflow_id(gid, task_queue)
    carried: list[int] = []
    async for run in client.list_workflows(f'WorkflowId="{lock_id}"'):
        history = await client.get_workflow_handle(lock_id, run_id=run.run_id).fetch_history()
        [payload] = history.events[0].workflow_execution_started_event_attributes.input.payloads
        state = pydantic_data_converter.payload_converter.from_payload(payload, LockState)
        carried.append(len(state.waiting))
    assert len(carried) >= 3, f"6 turns at 2 per run: expected >= 3 runs, got {carried}"
    assert any(carried), f"no run continued-as-new while jobs waited: waiters per run {carried}"


async def test_carried_state_dedups_a_request(
    client: Client, task_queue: str, redis_url: str, stream: str, monkeypatch: Any
) -> None:
    """State carried over dedups a request in the new run's first task.

    A request of a run the previous lock run already served, arriving with the new run's start, is
    not served twice (before, the signal was handled before run() restored the served runs).
    """
    monkeypatch.setattr(contract.lock, "IDLE_EXIT", timedelta(seconds=1))
    gid = game()
    async with job_worker(client, task_queue, redis_url, stream, StandInEngine()):
        served = LockRequest(game_id=gid, workflow_id="served-job", run_id="served-run", started_at=datetime.now(UTC))
        handle = await client.start_workflow(
            RuntimeGameLock.run,
            LockState(game_id=gid, recent_runs=["served-run"]),
            id=lock_workflow_id(gid, task_queue),
            task_queue=task_queue,
            start_signal=ACQUIRE_SIGNAL,
            start_signal_args=[served],
        )
        await asyncio.wait_for(handle.result(), RESULT_WAIT_S)
    events = (await handle.fetch_history()).events
    kinds = [e.event_type for e in events]
    assert EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED in kinds
    assert EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED not in kinds, "served twice"


async def test_a_holder_check_that_always_fails_does_not_block_the_game(
    client: Client, task_queue: str, redis_url: str, stream: str, monkeypatch: Any
) -> None:
    monkeypatch.setattr(contract.lock, "HOLDER_CHECK_EVERY", timedelta(seconds=1))
    checks: list[str] = []

    @activity.defn(name=HOLDER_RUNNING_ACTIVITY)
    async def permission_denied(check: HolderCheck) -> bool:
        checks.append(check.workflow_id)
        raise ApplicationError("PermissionDenied: describe is not allowed for this API key")

    gid, engine = game(), StandInEngine(delay_s=4)
    async with job_worker(
        client, task_queue, redis_url, stream, engine, replace={HOLDER_RUNNING_ACTIVITY: permission_denied}
    ):
        first = await start(client, task_queue, StartRuntimeJob.run, gid)
        second = await start(client, task_queue, StopRuntimeJob.run, gid)
        results = [await result_of(first), await result_of(second)]
    assert [r.outcome for r in results] == ["success", "success"]
    assert checks, "the holder check never ran: the test did not exercise it"
    assert span_of(engine, first.id)[1] <= span_of(engine, second.id)[0], "the second job ran during the first"


async def test_reset_holder_keeps_the_turn(
    client: Client, task_queue: str, redis_url: str, redis: aioredis.Redis, stream: str, monkeypatch: Any
) -> None:
    """A holder reset by an operator keeps the turn until its new run releases."""
    monkeypatch.setattr(contract.lock, "HOLDER_CHECK_EVERY", timedelta(seconds=1))
    gid, engine = game(), StandInEngine(delay_s=4)
    async with job_worker(client, task_queue, redis_url, stream, engine):
        first = await start(client, task_queue, StartRuntimeJob.run, gid)
        await until(lambda: any(wid == first.id for wid in engine.running_jobs), "the first job's Docker step")
        second = await start(client, task_queue, StopRuntimeJob.run, gid)
        # Reset to the task that scheduled the Docker step: the new run holds the turn (the grant is
        # before the reset point) and does its Docker step again.
        events = (await first.fetch_history()).events
        scheduled = next(e.event_id for e in events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED)
        await reset_to(client, first, max(i for i in completed_task_ids(events) if i < scheduled))
        first = client.get_workflow_handle(first.id, result_type=JobResult)  # its latest run: the reset one
        results = [await result_of(first), await result_of(second)]
    assert [r.outcome for r in results] == ["success", "success"]
    first_spans = sorted((b, e) for _g, wid, b, e in engine.spans if wid == first.id)
    assert len(first_spans) == 2, f"the reset run did its Docker step again: {first_spans}"
    assert max(e for _b, e in first_spans) <= span_of(engine, second.id)[0], "second job ran during the reset run"
    entries = [f for _i, f in await read_entries(redis, stream)]
    assert entries == [results[0].stream_fields(), results[1].stream_fields()]


async def test_jobs_survive_their_lock_run_being_terminated(
    client: Client, task_queue: str, redis_url: str, redis: aioredis.Redis, stream: str, monkeypatch: Any
) -> None:
    """The holder still completes with its published result (its release finds no lock); a waiter sends its
    request again, gets a turn from a new lock run, and a cancelled waiter reports `cancelled`.
    """
    monkeypatch.setattr(contract.lock, "REQUEST_AGAIN_EVERY", timedelta(seconds=1))
    gid, engine = game(), StandInEngine(delay_s=3)
    async with job_worker(client, task_queue, redis_url, stream, engine):
        holder = await start(client, task_queue, StartRuntimeJob.run, gid)
        await until(lambda: holder.id in engine.running_jobs, "the holder's Docker step")
        waiter = await start(client, task_queue, StopRuntimeJob.run, gid)
        cancelled = await start(client, task_queue, StartRuntimeJob.run, gid)
        for handle in (waiter, cancelled):
            await until_step(handle, "waiting for the game's earlier jobs")
        await client.get_workflow_handle(lock_workflow_id(gid, task_queue)).terminate("test: operator")
        await cancelled.cancel()
        results = [await result_of(h) for h in (holder, waiter, cancelled)]
    assert [(r.outcome, r.error_code) for r in results] == [("success", ""), ("success", ""), ("failure", "cancelled")]
    assert len(await read_entries(redis, stream)) == 3


async def test_a_reset_of_a_job_that_published_appends_nothing(
    client: Client, task_queue: str, redis_url: str, redis: aioredis.Redis, stream: str
) -> None:
    """A reset run is the same job (same first run id): the stream keeps the job's one entry."""
    gid, engine = game(), StandInEngine()
    async with job_worker(client, task_queue, redis_url, stream, engine):
        handle = await start(client, task_queue, StartRuntimeJob.run, gid)
        first = await result_of(handle)
        [(entry_id, fields)] = await read_entries(redis, stream)
        events = (await handle.fetch_history()).events
        new_run = await reset_to(client, handle, completed_task_ids(events)[0])
        reset_handle: Handle = client.get_workflow_handle(handle.id, run_id=new_run, result_type=JobResult)
        again = await result_of(reset_handle)
        status = await reset_handle.query(StartRuntimeJob.status)
    assert engine.calls == [f"start:{gid}", f"start:{gid}"], "the reset run did not run the job again"
    assert again == first
    assert await read_entries(redis, stream) == [(entry_id, fields)]
    assert isinstance(status, JobStatus) and status.entry_id == entry_id


async def until_step(handle: Handle, text: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while True:
        status = await handle.query(StartRuntimeJob.status)
        if text in status.step:
            return
        if loop.time() > deadline:
            raise AssertionError(f"{handle.id} never reached {text!r}: {status.step}")
        await asyncio.sleep(0.1)


# --- the shielding helper the jobs use around their last steps ----------------------------------


@workflow.defn(name="ShieldedStep", sandboxed=False)
class ShieldedStep:
    """A step awaited with `shielded`: a cancellation during it must not end the run CANCELED."""

    def __init__(self) -> None:
        self.cancels = 0

    @workflow.run
    async def run(self) -> str:
        await shielded(workflow.sleep(3), self._count)
        return f"finished after {self.cancels} cancellation(s)"

    def _count(self) -> None:
        self.cancels += 1


async def test_cancel_during_shielded_step(client: Client, task_queue: str) -> None:
    """A cancellation during a shielded step is noted and the step finishes."""
    async with Worker(
        client, task_queue=task_queue, workflows=[ShieldedStep], workflow_runner=UnsandboxedWorkflowRunner()
    ):
        handle = await client.start_workflow(ShieldedStep.run, id=f"shield-{uuid.uuid4().hex}", task_queue=task_queue)
        await asyncio.sleep(1)
        await handle.cancel()
        result = await asyncio.wait_for(handle.result(), RESULT_WAIT_S)
        desc = await handle.describe()
    assert result == "finished after 1 cancellation(s)"
    assert desc.status == WorkflowExecutionStatus.COMPLETED


@pytest.fixture(autouse=True)
def _no_leftover_patch() -> None:
    """The interval constants are read when a run begins; assert the tests start from the defaults."""
    assert contract.lock.GRANTS_BEFORE_CONTINUE_AS_NEW == 1000
