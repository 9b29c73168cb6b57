"""Latency benchmark: how fast a cancellation lands, and how fast an idle worker stops.

The tests check that these happen (the history shows the Docker activity cancelled; the worker exits
0 without sitting out its grace period) without timing them: on a loaded machine a time limit there
is a flake. The figures are measured here instead, on the real parts (dev server, Redis, Docker):

- `cancel`: a start job of the never-healthy test engine, cancelled once its container runs; the time
  from the cancel request to the job's result (Docker activity cancelled, container removed, the
  `cancelled` entry published), through the real worker (`rtjobs.workers.build_worker`) in this process;
- `idle shutdown`: a real `python worker.py` that polls an empty task queue; the time from SIGTERM to
  its exit (status 0), with a 30 s grace period that an idle worker must not wait out.

Prints p50 and max of each. Usage: python bench/latency.py [--n 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiodocker
import redis.asyncio as aioredis
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from contract.settings import Settings
from rtjobs.client import start_job
from tests.support.binaries import temporal_cli
from tests.support.docker_engine import DockerEngine, acquire_engine
from tests.support.job_worker import e2e_settings, real_worker, remove_game_containers, until_running_container
from tests.support.processes import DEAD_DOCKER, Process, process_env, start_ready_worker
from workflows.search import SEARCH_ATTRIBUTE_KEYS


async def cancel_latencies(env: WorkflowEnvironment, engine: DockerEngine, redis_url: str, n: int) -> list[float]:
    run = uuid.uuid4().hex[:6]
    settings = e2e_settings(
        docker_url=engine.url,
        redis_url=redis_url,
        task_queue=f"bench-cancel-{run}",
        stream=f"bench:cancel:{run}",
        engine_image=engine.images.never_healthy,
        start_timeout_s=600.0,  # only the cancellation can end these starts
    )
    took = []
    async with aiodocker.Docker(url=engine.url) as docker, real_worker(env.client, settings):
        for i in range(n):
            game_id = f"bench-cancel-{run}-{i}"
            try:
                handle = await start_job(env.client, game_id, task_queue=settings.task_queue)
                await until_running_container(docker, game_id)
                began = time.perf_counter()
                await handle.cancel()
                result = await handle.result()
                took.append(time.perf_counter() - began)
                assert result.error_code == "cancelled", result
            finally:
                await remove_game_containers(docker, game_id)
    redis = aioredis.Redis.from_url(redis_url)
    stream = settings.results_stream
    await redis.delete(stream, *[k async for k in redis.scan_iter(match=f"{{{stream}}}:*")])
    await redis.aclose()
    return took


async def idle_shutdowns(env: WorkflowEnvironment, redis_url: str, n: int) -> list[float]:
    took = []
    for _ in range(n):
        worker_env = process_env(
            TEMPORAL_ADDRESS=env.client.service_client.config.target_host,
            TEMPORAL_NAMESPACE=env.client.namespace,
            REDIS_URL=redis_url,
            RTJOBS_TASK_QUEUE=f"bench-idle-{uuid.uuid4().hex[:6]}",
            RTJOBS_GRACEFUL_SHUTDOWN_TIMEOUT_S="30",
            DOCKER_HOST=DEAD_DOCKER,
        )
        processes: list[Process] = []
        try:
            worker = await start_ready_worker(processes, worker_env)
            began = time.perf_counter()
            worker.send(signal.SIGTERM)
            code = await worker.wait(120)
            took.append(time.perf_counter() - began)
            assert code == 0, worker.output()
        finally:
            for proc in processes:
                proc.kill()
    return took


def line(name: str, values: list[float]) -> str:
    return f"{name:14} {len(values):3d} {statistics.median(values) * 1000:9.0f} {max(values) * 1000:9.0f}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=10, help="measurements of each")
    args = parser.parse_args()

    redis_url = Settings().redis_url
    engine = await acquire_engine()
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(temporal_cli()),
        data_converter=pydantic_data_converter,
        search_attributes=SEARCH_ATTRIBUTE_KEYS,
        dev_server_log_level="error",
    )
    try:
        cancel = await cancel_latencies(env, engine, redis_url, args.n)
        shutdown = await idle_shutdowns(env, redis_url, args.n)
    finally:
        await env.shutdown()
        await engine.close()

    print(f"latency benchmark, {os.cpu_count()} cores")
    print(f"{'what':14} {'n':>3} {'p50 ms':>9} {'max ms':>9}")
    print(line("cancel", cancel))
    print(line("idle shutdown", shutdown))
    sys.stdout.flush()
    os._exit(0)  # temporalio can abort at interpreter exit (sdk-python #300); the figures are printed


if __name__ == "__main__":
    asyncio.run(main())
