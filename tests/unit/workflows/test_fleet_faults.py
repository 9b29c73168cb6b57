"""What the jobs do when the fleet misbehaves, on the real dev server and Redis with stand-in Docker
activities (tests/support/stand_ins.py): a busy host is not a dead one, a silent host's start is
given up and cleaned up before the game's next job, a grant for another game or job opens nothing,
a cancellation reports `cancelled` however the step then ends, a starter's timeout is refused, and
the game's workflow keeps serving when the server refuses it more updates.

The same behaviours on real Docker engines and real worker processes: tests/reliability/test_fleet*.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from datetime import timedelta
from typing import Any

import redis.asyncio as aioredis
from temporalio import activity
from temporalio.client import Client, WorkflowExecution, WorkflowExecutionStatus, WorkflowHandle

from activities.fleet import Fleet, send_report
from contract.engine import ENSURE_RUNNING_ACTIVITY, EngineOutcome, EnsureEngineRunning
from contract.hosts import (
    DRAIN_UPDATE,
    FORGET_UPDATE,
    UNDRAIN_UPDATE,
    HostRef,
    HostReport,
    host_queue,
)
from contract.lock import GRANT_SIGNAL, LockGrant, lock_workflow_id
from contract.models import JobResult, JobStatus
from tests.support.stand_ins import STAND_IN_HOST, StandInEngine, job_worker
from tests.support.streams import read_entries
from tests.support.temporal_server import start_dev_server

# Not a speed bound: how long a wait may last before the test calls it a hang.
HANG_S = 180.0


def game() -> str:
    return f"g-{uuid.uuid4().hex[:10]}"


async def start(
    client: Client, task_queue: str, wf: str, request: dict[str, Any], **options: Any
) -> WorkflowHandle[Any, JobResult]:
    return await client.start_workflow(
        wf, request, id=f"test-job-{uuid.uuid4().hex}", task_queue=task_queue, result_type=JobResult, **options
    )


async def until(check: Any, what: str, timeout_s: float = HANG_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"not within {timeout_s:g} s: {what}"
        await asyncio.sleep(0.2)


async def status(handle: WorkflowHandle[Any, JobResult]) -> JobStatus:
    result: JobStatus = await handle.query("status", result_type=JobStatus)
    return result


async def test_a_busy_host_is_waited_for_past_the_host_wait(
    client: Client, task_queue: str, redis_url: str, redis: aioredis.Redis, stream: str
) -> None:
    """One Docker-step slot, two starts: the second waits on the host's queue far longer than
    RTJOBS_HOST_WAIT_S (2 s) behind the first, and succeeds: the host reports, so it is busy, not dead.
    """
    engine = StandInEngine(delay_s=15.0)
    first, second = game(), game()
    async with job_worker(client, task_queue, redis_url, stream, engine, host_wait_s=2.0, host_concurrency=1):
        a = await start(client, task_queue, "StartRuntimeJob", {"game_id": first})
        await until(lambda: _calls(engine, 1), "the first start's step began")
        b = await start(client, task_queue, "StartRuntimeJob", {"game_id": second})
        results = await asyncio.wait_for(asyncio.gather(a.result(), b.result()), HANG_S)
    assert [r.outcome for r in results] == ["success", "success"], results
    (_g1, _j1, _b1, end_first), (_g2, _j2, begin_second, _e2) = sorted(engine.spans, key=lambda s: s[2])
    assert begin_second >= end_first - 0.1  # the second really queued behind the first (one slot)
    assert len(await read_entries(redis, stream)) == 2


async def _calls(engine: StandInEngine, n: int) -> bool:
    return len(engine.calls) >= n


async def test_silent_hosts_start_is_given_up(
    client: Client, task_queue: str, redis_url: str, redis: aioredis.Redis, stream: str
) -> None:
    """A silent host's start is given up and cleaned up before the game's next job.

    A start placed on a host that reported once and fell silent: after RTJOBS_HOST_WAIT_S its step
    is given up (`docker_unavailable` naming the host) and published; the job keeps the game's turn
    while its clean-up waits for that host, so the game's next job waits too; once the host is
    forgotten the clean-up ends, the turn passes and the next start runs on a live host.
    """
    engine = StandInEngine()
    gid = game()
    async with job_worker(client, task_queue, redis_url, stream, engine, host_wait_s=2.0):
        hosts = Fleet(client, task_queue)
        ghost = HostRef(host_id=f"ghost-{uuid.uuid4().hex[:6]}", name="ghost", queue="")
        ghost = ghost.model_copy(update={"queue": host_queue(task_queue, ghost.host_id)})
        await hosts.command(DRAIN_UPDATE, STAND_IN_HOST)
        # The ghost reports (every 0.5 s, its live window 9 s) from before the start asks for a host (else
        # the start finds no host with room and fails at once) until the start's step is on its queue;
        # then it falls silent.
        report = HostReport(host=ghost, worker="ghost-1", capacity=5, report_every_s=3.0)

        async def reporting() -> None:
            while True:
                await send_report(client, task_queue, report)
                await asyncio.sleep(0.5)

        reporter = asyncio.create_task(reporting())
        try:
            await until(lambda: _live(hosts, ghost.host_id), "the ghost host is live")
            silent = await start(client, task_queue, "StartRuntimeJob", {"game_id": gid})
            await until(lambda: _on_ghost(silent), "the start's step is on the ghost host's queue")
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
        await until(lambda: _published(redis, stream, 1), "the silent host's start published its failure")
        [(_id, fields)] = await read_entries(redis, stream)
        assert (fields["outcome"], fields["error_code"]) == ("failure", "docker_unavailable"), fields
        assert f"the workers of host ghost ({ghost.host_id}) have not reported for" in fields["error_message"]
        await hosts.command(UNDRAIN_UPDATE, STAND_IN_HOST)

        following = await start(client, task_queue, "StartRuntimeJob", {"game_id": gid})
        await asyncio.sleep(3.0)  # (time for it to run, were the turn free: it must not be)
        assert "remove what the failed start left" in (await status(silent)).step
        assert "waiting for the game's earlier jobs" in (await status(following)).step
        assert engine.calls == [] and await _published(redis, stream, 1, exactly=True)

        await hosts.command(FORGET_UPDATE, ghost.host_id)
        failed = await asyncio.wait_for(silent.result(), HANG_S)
        started = await asyncio.wait_for(following.result(), HANG_S)
    assert failed.error_code == "docker_unavailable"
    assert started == JobResult.fresh_success(gid, f"cid-{gid}")
    assert engine.calls == [f"start:{gid}"] and engine.removed == []


async def _on_ghost(handle: WorkflowHandle[Any, JobResult]) -> bool:
    step = (await status(handle)).step
    assert "failure" not in step, step  # (given up before it was placed: the test's set-up went wrong)
    return "on host ghost" in step


async def _live(hosts: Fleet, host_id: str) -> bool:
    view = await hosts.view(host_id)
    return view is not None and view.live


async def _published(redis: aioredis.Redis, stream: str, n: int, *, exactly: bool = False) -> bool:
    count = len(await read_entries(redis, stream))
    return count == n if exactly else count >= n


async def test_a_grant_naming_another_game_or_job_is_ignored(
    client: Client, task_queue: str, redis_url: str, redis: aioredis.Redis, stream: str
) -> None:
    """A job waiting behind another of its game gets forged grants (another game's; its game's, for
    another job): neither opens its turn, it runs only after the holder is done.
    """
    engine = StandInEngine(delay_s=8.0)
    gid = game()
    async with job_worker(client, task_queue, redis_url, stream, engine):
        holder = await start(client, task_queue, "StartRuntimeJob", {"game_id": gid})
        await until(lambda: _calls(engine, 1), "the holder's step began")
        waiting = await start(client, task_queue, "StopRuntimeJob", {"game_id": gid})
        await until(lambda: _waiting_in_lock(client, task_queue, gid, waiting.id), "the stop queued")
        first_run = (await waiting.describe()).run_id or ""
        for forged in (
            LockGrant(granted=True, game_id=game(), holder=first_run),
            LockGrant(granted=True, game_id=gid, holder="another-job"),
        ):
            await waiting.signal(GRANT_SIGNAL, forged)
        results = await asyncio.wait_for(asyncio.gather(holder.result(), waiting.result()), HANG_S)
    assert [r.outcome for r in results] == ["success", "success"], results
    assert engine.max_parallel_per_game == 1
    (_g1, _j1, _b1, end_start), (_g2, _j2, begin_stop, _e2) = sorted(engine.spans, key=lambda s: s[2])
    assert begin_stop >= end_start - 0.1, "the stop's step began while the start held the turn"


async def _waiting_in_lock(client: Client, task_queue: str, gid: str, job_id: str) -> bool:
    queue: list[str] = await client.get_workflow_handle(lock_workflow_id(gid, task_queue)).query(
        "queue", result_type=list[str]
    )
    return f"waiting {job_id}" in queue


async def test_a_job_started_with_a_timeout_is_refused_at_once(
    client: Client, task_queue: str, redis_url: str, redis: aioredis.Redis, stream: str
) -> None:
    """A starter's execution or run timeout would end the job without its result: the job publishes
    `invalid_request` saying so, before any turn or Docker step.
    """
    engine = StandInEngine()
    gids = [game(), game()]
    async with job_worker(client, task_queue, redis_url, stream, engine):
        handles = [
            await start(
                client, task_queue, "StartRuntimeJob", {"game_id": gids[0]}, execution_timeout=timedelta(hours=1)
            ),
            await start(client, task_queue, "StopRuntimeJob", {"game_id": gids[1]}, run_timeout=timedelta(minutes=5)),
        ]
        results = [await asyncio.wait_for(h.result(), HANG_S) for h in handles]
    assert [(r.outcome, r.error_code) for r in results] == [("failure", "invalid_request")] * 2
    assert "workflow execution timeout of 3600 s" in results[0].error_message
    assert "workflow run timeout of 300 s" in results[1].error_message
    assert engine.calls == []
    # One entry each; two games' jobs started together publish in either order (seen under load).
    entries = [f for _i, f in await read_entries(redis, stream)]
    assert sorted(entries, key=lambda f: f["game_id"]) == sorted(
        (r.stream_fields() for r in results), key=lambda f: f["game_id"]
    )


class _DeafStart:
    """A start step that does not hear its cancellation and stops heartbeating: the server times it out
    (heartbeat) instead of the step acknowledging the cancel.
    """

    def __init__(self) -> None:
        self.began = asyncio.Event()

    @activity.defn(name=ENSURE_RUNNING_ACTIVITY)
    async def ensure_engine_running(self, request: EnsureEngineRunning) -> EngineOutcome:
        self.began.set()
        # Longer than the 20 s heartbeat timeout; without a heartbeat the SDK never learns of the cancel.
        with contextlib.suppress(asyncio.CancelledError):  # (the worker shutting down at the test's end)
            await asyncio.sleep(30.0)
        return EngineOutcome(container_id=f"cid-{request.game_id}", replay=False)


async def test_cancelled_job_whose_step_times_out(
    client: Client, task_queue: str, redis_url: str, redis: aioredis.Redis, stream: str
) -> None:
    """A cancelled job reports cancelled when its step then times out."""
    deaf, engine, gid = _DeafStart(), StandInEngine(), game()
    async with job_worker(
        client, task_queue, redis_url, stream, engine, replace={ENSURE_RUNNING_ACTIVITY: deaf.ensure_engine_running}
    ):
        handle = await start(client, task_queue, "StartRuntimeJob", {"game_id": gid})
        await asyncio.wait_for(deaf.began.wait(), HANG_S)
        await handle.cancel()
        result = await asyncio.wait_for(handle.result(), HANG_S)
    assert (result.outcome, result.error_code) == ("failure", "cancelled"), result
    assert engine.removed == [gid]  # and what the step may have made is removed


async def runs_through(client: Client, handle: WorkflowHandle[Any, Any]) -> list[WorkflowExecution]:
    """Every run of the workflow up to its current one. Visibility is written after the run changes
    (seen in CI: two continued-as-new runs listed, the running one not yet), so the listing is asked
    until it holds the run that `describe` calls current.
    """
    deadline = asyncio.get_running_loop().time() + 30.0
    while True:
        current = (await handle.describe()).run_id
        runs = [w async for w in client.list_workflows(f"WorkflowId = '{handle.id}'")]
        if any(w.run_id == current for w in runs) or asyncio.get_running_loop().time() > deadline:
            return runs
        await asyncio.sleep(0.2)


async def test_lock_continues_as_new_in_time(redis_url: str, redis: aioredis.Redis, stream: str) -> None:
    """The game's workflow continues as new before it runs out of updates.

    With `history.maxTotalUpdates` at 3 the server suggests continuing as new as a run's updates near
    the limit; the game's workflow does so between turns, so six jobs in a row are all served (each
    take_turn is an update).
    """
    env = await start_dev_server(["history.maxTotalUpdates=3"])
    task_queue, gid, engine = f"tq-{uuid.uuid4().hex[:8]}", game(), StandInEngine()
    try:
        async with job_worker(env.client, task_queue, redis_url, stream, engine):
            results = []
            for i in range(6):
                kind = "StartRuntimeJob" if i % 2 == 0 else "StopRuntimeJob"
                handle = await start(env.client, task_queue, kind, {"game_id": gid})
                results.append(await asyncio.wait_for(handle.result(), 60.0))
            lock = env.client.get_workflow_handle(lock_workflow_id(gid, task_queue))
            runs = await runs_through(env.client, lock)
    finally:
        await env.shutdown()
    assert [(r.outcome, r.error_code) for r in results] == [("success", "")] * 6, results
    statuses = sorted((w.status for w in runs), key=lambda status: status != WorkflowExecutionStatus.RUNNING)
    assert len(runs) >= 2 and statuses[0] == WorkflowExecutionStatus.RUNNING, statuses
    assert set(statuses[1:]) == {WorkflowExecutionStatus.CONTINUED_AS_NEW}, statuses
    assert len(await read_entries(redis, stream)) == 6
