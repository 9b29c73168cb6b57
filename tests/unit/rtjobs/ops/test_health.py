"""Health endpoints against the real parts: the worker's own Workers on the session's dev server, a
redis-server and a dockerd of the test's own (stopped and restarted here), probed over HTTP.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiodocker
import pytest
from prometheus_client.parser import text_string_to_metric_families
from temporalio.client import Client

from activities.docker import EngineActivities
from activities.publish import redis_client
from contract.lock import coordination_queue
from rtjobs.hosting import serving
from rtjobs.ops.health import Health, serving_health
from tests.support.job_worker import MakeSettings
from tests.support.processes import Process, start_ready_worker
from tests.support.redis_server import RedisServer, free_port
from tests.support.restartable_dockerd import RestartableDockerd, own_dockerd

pytestmark = pytest.mark.docker


def request(address: str, path: str, method: str = "GET") -> tuple[int, Any]:
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        body = response.read()
        ctype = response.getheader("Content-Type", "")
        return response.status, json.loads(body) if ctype == "application/json" else body.decode()
    finally:
        conn.close()


async def get(address: str, path: str, method: str = "GET") -> tuple[int, Any]:
    return await asyncio.to_thread(request, address, path, method)


def failing(report: dict[str, Any]) -> list[str]:
    return sorted(name for name, check in report["checks"].items() if not check["ok"])


async def _nothing(_docker: aiodocker.Docker) -> None:
    """A bare engine: the health checks need no image."""


@pytest.fixture
async def dockerd() -> AsyncIterator[RestartableDockerd]:
    async with own_dockerd(_nothing) as daemon:
        yield daemon


async def test_liveness_and_readiness_follow_redis_docker_and_the_workers(
    client: Client, redis_server: RedisServer, dockerd: RestartableDockerd, task_queue: str, make_settings: MakeSettings
) -> None:
    settings = make_settings(DOCKER_HOST=dockerd.url, REDIS_URL=redis_server.url)
    address = f"127.0.0.1:{free_port()}"
    redis = redis_client(settings.redis_url)
    engine = EngineActivities(settings)
    # The product's 3 s deadline per check is not what this tests: a loaded machine's dev server answered
    # later than that once (temporal failing beside the stopped Docker). An outage still fails at once.
    health = Health(
        client, redis, engine, stream=settings.results_stream, redis_url=settings.redis_url, check_timeout_s=30.0
    )
    try:
        async with serving_health(address, health), serving(client, settings, redis, engine) as workers:
            health.workers = workers
            status, live = await get(address, "/healthz")
            assert status == 200 and live["status"] == "ok"
            host_queue = workers[0].task_queue  # the host's own queue: its engine answered at start-up
            assert live["task_queues"] == [host_queue, coordination_queue(task_queue), task_queue]
            status, ready = await get(address, "/readyz")
            assert (status, ready["status"], failing(ready)) == (200, "ok", [])
            assert set(ready["checks"]) == {"temporal", "redis", "docker", "worker"}

            redis_server.stop()
            status, ready = await get(address, "/readyz")
            assert (status, failing(ready)) == (503, ["redis"]), ready
            assert "Connect" in ready["checks"]["redis"]["error"] or "refused" in ready["checks"]["redis"]["error"]
            assert (await get(address, "/healthz"))[0] == 200  # a dependency's outage restarts no worker
            redis_server.start()
            status, ready = await get(address, "/readyz")  # the same client reconnects
            assert (status, failing(ready)) == (200, []), ready

            dockerd.stop_daemon()
            status, ready = await get(address, "/readyz")
            assert (status, failing(ready)) == (503, ["docker"]), ready
            assert (await get(address, "/healthz"))[0] == 200

            # The shared queue's Worker stops polling (as after a fatal error): not live any more.
            await workers[-1].shutdown()
            status, live = await get(address, "/healthz")
            assert (status, live["status"], live["stopped_task_queues"]) == (503, "fail", [task_queue])
            status, ready = await get(address, "/readyz")
            assert (status, failing(ready)) == (503, ["docker", "worker"])

            assert (await get(address, "/metrics"))[0] == 404
            assert (await get(address, "/healthz", "POST"))[0] == 405
    finally:
        await engine.close()
        await redis.aclose()


async def test_worker_process_serves_health_and_metrics_where_configured(
    processes: list[Process], worker_env: dict[str, str]
) -> None:
    health, metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    env = {**worker_env, "RTJOBS_HEALTH_ADDRESS": health, "RTJOBS_METRICS_ADDRESS": metrics}
    await start_ready_worker(processes, env)  # (worker_env: no Docker engine answers)
    status, live = await get(health, "/healthz")
    assert (status, live["task_queues"]) == (
        200,
        [coordination_queue(worker_env["RTJOBS_TASK_QUEUE"]), env["RTJOBS_TASK_QUEUE"]],
    )
    status, ready = await get(health, "/readyz")
    assert (status, failing(ready)) == (503, ["docker"])
    deadline = time.monotonic() + 30
    while True:  # the SDK's pollers show on /metrics once they polled
        status, text = await get(metrics, "/metrics")
        names = {f.name for f in text_string_to_metric_families(text)}
        if "temporal_num_pollers" in names or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert status == 200 and "temporal_num_pollers" in names
