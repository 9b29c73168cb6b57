"""Scenario 4: the Temporal server itself is SIGKILLed mid-run and restarted on its persisted SQLite
file and port; the worker and the client reconnect by themselves and every job finishes, once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from contract.engine import ENSURE_RUNNING_ACTIVITY
from tests.reliability.conftest import WorkerEnv
from tests.reliability.runs import (
    assert_no_orphans,
    assert_one_entry_per_run,
    results,
    start_runs,
    stop_replay_runs,
    until_pending,
)
from tests.support.docker_engine import DockerEngine
from tests.support.processes import Process, start_ready_worker
from tests.support.redis_server import RedisServer
from tests.support.temporal_server import TemporalDevServer

DOWN_S = 3.0


@pytest.fixture
def temporal_server() -> Iterator[TemporalDevServer]:
    server = TemporalDevServer().start()
    try:
        yield server
    finally:
        server.close()


@pytest.mark.slow
@pytest.mark.docker
async def test_temporal_killed_and_restarted_mid_run(
    processes: list[Process],
    worker_env_for: WorkerEnv,
    docker_engine: DockerEngine,
    own_redis: RedisServer,
    temporal_server: TemporalDevServer,
    task_queue: str,
    results_stream: str,
    game_prefix: str,
) -> None:
    env = worker_env_for(DOCKER_HOST=docker_engine.url, TEMPORAL_ADDRESS=temporal_server.address)
    await start_ready_worker(processes, env)
    client = await Client.connect(temporal_server.address, data_converter=pydantic_data_converter)
    starts = await start_runs(
        client, task_queue, [f"{game_prefix}-s{i}" for i in range(3)], image=docker_engine.images.slow_healthy
    )
    await until_pending(starts, ENSURE_RUNNING_ACTIVITY)  # the engines are coming up
    stops = await stop_replay_runs(client, task_queue, [f"{game_prefix}-r{i}" for i in range(10)])

    temporal_server.kill()
    killed = time.monotonic()
    await asyncio.sleep(DOWN_S)
    temporal_server.start()
    back = time.monotonic()
    after = await stop_replay_runs(client, task_queue, [f"{game_prefix}-a{i}" for i in range(5)])

    runs = starts + stops + after
    finished = await results(runs, 120)
    took = time.monotonic() - back
    print(
        f"\n[temporal restart] {len(runs)} jobs; server down {back - killed:.1f}s (SIGKILL, restart on its db file); "
        f"all finished {took:.1f}s after it returned; results "
        f"{sorted({(r.outcome, r.error_code) for r in finished})}"
    )
    await assert_one_entry_per_run(own_redis.url, results_stream, runs)
    await assert_no_orphans(docker_engine.url, runs, finished)
