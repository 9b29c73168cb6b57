"""Scenario 6: a client cancels a job (as the Temporal UI does).

(a) While the engine is coming up: one `cancelled` entry, and the half-made container removed.
(b) While the publish is being retried (Redis down): the workflow shields its publish, so the entry
    being published lands once when Redis returns; cancellation neither stops nor doubles it.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from temporalio.client import WorkflowExecutionStatus

from contract.engine import ENSURE_RUNNING_ACTIVITY
from contract.policies import PUBLISH_ACTIVITY
from tests.reliability.test_worker_kill import until_containers_exist
from tests.support.runs import (
    STOP_REPLAY,
    results,
    until_pending,
)
from tests.support.stack import Stack, run_jobs

CANCELLED = frozenset({("failure", "cancelled")})


@pytest.mark.docker
async def test_cancel_while_engine_starts(stack: Stack) -> None:
    await stack.start_worker()
    [game] = stack.games("c", 1)
    [run] = await stack.start([game], image=stack.images.never_healthy, accepted=CANCELLED)
    await until_pending([run], ENSURE_RUNNING_ACTIVITY)
    await until_containers_exist(stack.docker_url, [game])
    await run.handle.cancel()
    asked = time.monotonic()
    [result] = (await run_jobs(stack, [run], timeout_s=60)).finished
    took = time.monotonic() - asked
    print(f"\n[cancel while starting] result {result.outcome}/{result.error_code} {took:.1f}s after the cancel request")


@pytest.mark.docker
async def test_cancel_while_publish_is_retried(stack: Stack) -> None:
    await stack.start_worker()
    stack.redis.stop()
    [run] = await stack.stop_replays(stack.games("p", 1))
    await until_pending([run], PUBLISH_ACTIVITY, min_attempt=2, timeout_s=20)
    await run.handle.cancel()
    await asyncio.sleep(2.0)
    desc = await run.handle.describe()
    assert desc.status == WorkflowExecutionStatus.RUNNING, "the job must wait for its publish, cancelled or not"
    stack.redis.start()
    back = time.monotonic()
    [result] = await results([run], 30)
    took = time.monotonic() - back
    assert (result.outcome, result.error_code) in STOP_REPLAY
    desc = await run.handle.describe()
    print(
        f"\n[cancel while publishing] workflow {desc.status.name if desc.status else None}, "
        f"result {result.outcome}/{result.error_code}, landed {took:.1f}s after Redis returned"
    )
    await run_jobs(stack, [run], orphans=False)
