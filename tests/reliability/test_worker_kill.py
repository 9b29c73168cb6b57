"""Scenario 3: a worker process SIGKILLed mid-job; a second worker must finish every job, with one
entry each and no orphan container.

(a) The kill lands in the readiness wait: the containers exist, the engines are not healthy yet.
(b) The kill lands right after the publish wrote: a proxy withholds Redis's replies, so the entries
    are on the stream but the dying worker never learned it.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from temporalio.testing import WorkflowEnvironment

from contract.engine import ENSURE_RUNNING_ACTIVITY
from tests.reliability.conftest import WorkerEnv
from tests.reliability.runs import (
    assert_no_orphans,
    assert_one_entry_per_run,
    containers_of,
    results,
    start_runs,
    until_entries,
    until_pending,
)
from tests.support.docker_engine import DockerEngine
from tests.support.fault_proxy import FaultProxy
from tests.support.processes import Process, start_ready_worker
from tests.support.redis_server import RedisServer

GAMES = 3
READINESS_S = 20  # the never-healthy engine's failure; above late-healthy's ~8 s
UNHEALTHY = frozenset({("failure", "engine_unhealthy")})


async def until_containers_exist(docker_url: str, game_ids: list[str], timeout_s: float = 30) -> dict[str, str]:
    """Wait until each game has a container; returns each one's health status at that moment."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = await containers_of(docker_url, game_ids)
        if all(found.values()):
            return {g: str((cs[0]["State"].get("Health") or {}).get("Status")) for g, cs in found.items()}
        if time.monotonic() > deadline:
            raise AssertionError(f"containers not created within {timeout_s}s: {found}")
        await asyncio.sleep(0.05)


async def until_held(proxy: FaultProxy, count: int, timeout_s: float = 10) -> None:
    """Wait until the proxy withholds `count` write replies (the writes are on the stream by then)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proxy.held >= count or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.01)


@pytest.mark.slow
@pytest.mark.docker
async def test_worker_killed_during_readiness_wait(
    processes: list[Process],
    worker_env_for: WorkerEnv,
    docker_engine: DockerEngine,
    own_redis: RedisServer,
    temporal_env: WorkflowEnvironment,
    task_queue: str,
    results_stream: str,
    game_prefix: str,
) -> None:
    # A short readiness limit, so that the never-healthy engine's failure comes within the test's time.
    env = worker_env_for(DOCKER_HOST=docker_engine.url, RTJOBS_START_TIMEOUT_S=str(READINESS_S))
    first = await start_ready_worker(processes, env)
    client = temporal_env.client
    games = [f"{game_prefix}-{i}" for i in range(GAMES)]
    # late-healthy: ~8 s from container start to healthy, so that the kill surely lands in the readiness
    # wait even when creating the four containers is slow (slow-healthy's 3 s was not always enough on a
    # loaded 2-core machine); the job created it, so a fresh success.
    runs = await start_runs(client, task_queue, games, image=docker_engine.images.late_healthy)
    # never-healthy: the job must fail engine_unhealthy and remove what it made.
    doomed = f"{game_prefix}-never"
    runs += await start_runs(client, task_queue, [doomed], image=docker_engine.images.never_healthy, accepted=UNHEALTHY)
    await until_pending(runs, ENSURE_RUNNING_ACTIVITY)
    health = await until_containers_exist(docker_engine.url, [*games, doomed])
    first.kill()
    killed = time.monotonic()
    assert "healthy" not in health.values(), f"the kill came too late, after readiness: {health}"

    await start_ready_worker(processes, env)
    finished = await results(runs, 120)
    took = time.monotonic() - killed
    print(
        f"\n[kill in readiness wait] {len(runs)} starts, health at kill {sorted(health.values())}; all finished "
        f"{took:.1f}s after the kill; results {[(r.outcome, r.error_code, r.error_message[:200]) for r in finished]}"
    )
    await assert_no_orphans(docker_engine.url, runs, finished)
    await assert_one_entry_per_run(own_redis.url, results_stream, runs)


@pytest.mark.docker
async def test_worker_killed_after_publish_wrote(
    processes: list[Process],
    worker_env_for: WorkerEnv,
    docker_engine: DockerEngine,
    own_redis: RedisServer,
    temporal_env: WorkflowEnvironment,
    task_queue: str,
    results_stream: str,
    game_prefix: str,
) -> None:
    games = [f"{game_prefix}-{i}" for i in range(GAMES)]
    async with FaultProxy(own_redis.port) as proxy:
        proxy.holding = True
        first = await start_ready_worker(processes, worker_env_for(DOCKER_HOST=docker_engine.url, REDIS_URL=proxy.url))
        runs = await start_runs(temporal_env.client, task_queue, games, image=docker_engine.images.healthy)
        written = await until_entries(own_redis.url, results_stream, GAMES, 60)
        await until_held(proxy, GAMES)
        first.kill()
        killed = time.monotonic()
        assert len(written) == GAMES and proxy.held >= GAMES, (written, proxy.held)

    await start_ready_worker(processes, worker_env_for(DOCKER_HOST=docker_engine.url))
    finished = await results(runs, 60)
    took = time.monotonic() - killed
    entries = await assert_one_entry_per_run(own_redis.url, results_stream, runs)
    assert entries == written, "the second worker's publish must find the first write, not append again"
    await assert_no_orphans(docker_engine.url, runs, finished)
    print(
        f"\n[kill after publish wrote] {GAMES} starts, {proxy.held} write replies withheld before the kill; "
        f"all finished {took:.1f}s after the kill; entries {len(entries)}"
    )
