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
from temporalio.testing import WorkflowEnvironment

from contract.engine import ENSURE_RUNNING_ACTIVITY
from contract.policies import PUBLISH_ACTIVITY
from tests.reliability.conftest import WorkerEnv
from tests.reliability.runs import (
    STOP_REPLAY,
    assert_no_orphans,
    assert_one_entry_per_run,
    results,
    start_runs,
    stop_replay_runs,
    until_pending,
)
from tests.reliability.test_worker_kill import until_containers_exist
from tests.support.docker_engine import DockerEngine
from tests.support.processes import Process, start_ready_worker
from tests.support.redis_server import RedisServer

CANCELLED = frozenset({("failure", "cancelled")})


@pytest.mark.docker
async def test_cancel_while_engine_starts(
    processes: list[Process],
    worker_env_for: WorkerEnv,
    docker_engine: DockerEngine,
    own_redis: RedisServer,
    temporal_env: WorkflowEnvironment,
    task_queue: str,
    results_stream: str,
    game_prefix: str,
) -> None:
    await start_ready_worker(processes, worker_env_for(DOCKER_HOST=docker_engine.url))
    game = f"{game_prefix}-c"
    [run] = await start_runs(
        temporal_env.client, task_queue, [game], image=docker_engine.images.never_healthy, accepted=CANCELLED
    )
    await until_pending([run], ENSURE_RUNNING_ACTIVITY)
    await until_containers_exist(docker_engine.url, [game])
    await run.handle.cancel()
    asked = time.monotonic()
    [result] = await results([run], 60)
    took = time.monotonic() - asked
    print(f"\n[cancel while starting] result {result.outcome}/{result.error_code} {took:.1f}s after the cancel request")
    await assert_no_orphans(docker_engine.url, [run], [result])
    await assert_one_entry_per_run(own_redis.url, results_stream, [run])


@pytest.mark.docker
async def test_cancel_while_publish_is_retried(
    processes: list[Process],
    worker_env_for: WorkerEnv,
    docker_engine: DockerEngine,
    own_redis: RedisServer,
    temporal_env: WorkflowEnvironment,
    task_queue: str,
    results_stream: str,
    game_prefix: str,
) -> None:
    await start_ready_worker(processes, worker_env_for(DOCKER_HOST=docker_engine.url))
    own_redis.stop()
    [run] = await stop_replay_runs(temporal_env.client, task_queue, [f"{game_prefix}-p"])
    await until_pending([run], PUBLISH_ACTIVITY, min_attempt=2, timeout_s=20)
    await run.handle.cancel()
    await asyncio.sleep(2.0)
    desc = await run.handle.describe()
    assert desc.status == WorkflowExecutionStatus.RUNNING, "the job must wait for its publish, cancelled or not"
    own_redis.start()
    back = time.monotonic()
    [result] = await results([run], 30)
    took = time.monotonic() - back
    assert (result.outcome, result.error_code) in STOP_REPLAY
    desc = await run.handle.describe()
    print(
        f"\n[cancel while publishing] workflow {desc.status.name if desc.status else None}, "
        f"result {result.outcome}/{result.error_code}, landed {took:.1f}s after Redis returned"
    )
    await assert_one_entry_per_run(own_redis.url, results_stream, [run])
