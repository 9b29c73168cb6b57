"""Scenario 5: the Docker daemon restarts while an engine is starting (the test's own dockerd, never the
shared one). The job must end in success, or in a clean failure code with nothing of it left behind."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import aiodocker
import pytest
from temporalio.testing import WorkflowEnvironment

from contract.engine import ENSURE_RUNNING_ACTIVITY
from tests.reliability.conftest import WorkerEnv
from tests.reliability.runs import assert_no_orphans, assert_one_entry_per_run, results, start_runs, until_pending
from tests.reliability.test_worker_kill import until_containers_exist
from tests.support.docker_engine import EngineUnavailable, build_test_images, static_busybox
from tests.support.processes import Process, start_ready_worker
from tests.support.redis_server import RedisServer
from tests.support.restartable_dockerd import RestartableDockerd

CLEAN = frozenset(
    {
        ("success", ""),
        ("failure", "docker_unavailable"),
        ("failure", "container_start_failed"),
        ("failure", "container_exited"),
    }
)


@pytest.fixture
async def dockerd() -> AsyncIterator[RestartableDockerd]:
    """A dockerd of this test's own, with the test images; stopped and cleaned up whatever happens."""
    try:
        static_busybox()
        daemon = RestartableDockerd().start()
    except EngineUnavailable as err:
        pytest.skip(f"no private dockerd: {err}")
    try:
        async with aiodocker.Docker(url=daemon.url) as docker:
            await build_test_images(docker)
        yield daemon
    finally:
        daemon.close()


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
        temporal_env.client, task_queue, games, image="rtjobs-test/engine:slow-healthy", accepted=CLEAN
    )
    await until_pending(runs, ENSURE_RUNNING_ACTIVITY)
    health = await until_containers_exist(dockerd.url, games)
    began = time.monotonic()
    await asyncio.to_thread(dockerd.stop_daemon)
    await asyncio.sleep(down_s)
    await asyncio.to_thread(dockerd.start)
    restart_s = time.monotonic() - began
    assert "healthy" not in health.values(), f"the restart came after readiness: {health}"

    finished = await results(runs, 120)
    took = time.monotonic() - began
    shown = [(r.outcome, r.error_code, r.error_message[:160]) for r in finished]
    print(
        f"\n[docker restart] {len(runs)} starts; dockerd down {down_s:g}s, restart took {restart_s:.1f}s; "
        f"jobs finished {took:.1f}s after it began; results {shown}"
    )
    await assert_no_orphans(dockerd.url, runs, finished)
    await assert_one_entry_per_run(own_redis.url, results_stream, runs)
