"""Metrics: real jobs of every outcome through the real worker process (`python worker.py` with
RTJOBS_METRICS_ADDRESS), then its Prometheus endpoint scraped over HTTP and read with Prometheus' own text
parser; each of the module's metrics must have moved by exactly what the jobs did, and the SDK's own metrics
must be on the same endpoint with conventional names.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiodocker
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from temporalio.client import Client, WorkflowHandle

from contract.models import JobResult
from rtjobs.client import start_job, stop_job
from tests.support.docker_engine import TEST_REPO, DockerEngine
from tests.support.job_worker import E2E_NETWORK, remove_game_containers
from tests.support.processes import Process, start_ready_worker
from tests.support.redis_server import RedisServer, free_port

pytestmark = pytest.mark.docker

RESULT_WAIT_S = 120.0  # only stops a hang: each job here takes 1-4 s
POLL_WAIT_S = 60.0
ABSENT_IMAGE = "127.0.0.1:9/rtjobs-test/absent:1"  # a closed local port: the pull fails at once, offline
HOST = "metrics-host"


class Scraper:
    def __init__(self, address: str) -> None:
        self.url = f"http://{address}/metrics"

    def samples(self) -> list[Sample]:
        with urllib.request.urlopen(self.url, timeout=10) as response:
            text = response.read().decode()
        return [s for family in text_string_to_metric_families(text) for s in family.samples]

    async def value(self, name: str, **labels: str) -> float:
        """The sum over the samples of `name` whose labels include `labels` (0 when there is none)."""
        samples = await asyncio.to_thread(self.samples)
        return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())

    async def until(self, name: str, want: float, **labels: str) -> None:
        deadline = time.monotonic() + POLL_WAIT_S
        while (got := await self.value(name, **labels)) != want:
            assert time.monotonic() < deadline, f"{name}{labels} stayed {got}, not {want}"
            await asyncio.sleep(0.2)


@pytest.fixture
async def games(docker: aiodocker.Docker) -> AsyncIterator[list[str]]:
    """Four game ids of the test's own; their containers are removed at teardown."""
    made = [f"met-{uuid.uuid4().hex[:10]}" for _ in range(4)]
    yield made
    for game_id in made:
        await remove_game_containers(docker, game_id)


async def result_of(handle: WorkflowHandle[Any, JobResult]) -> tuple[str, str]:
    result = await asyncio.wait_for(handle.result(), RESULT_WAIT_S)
    return result.outcome, result.error_code


async def test_every_outcome_moves_its_metrics(
    client: Client,
    processes: list[Process],
    worker_env: dict[str, str],
    docker_engine: DockerEngine,
    redis_server: RedisServer,
    task_queue: str,
    games: list[str],
) -> None:
    """Jobs of every outcome move each metric by exactly what happened."""
    address = f"127.0.0.1:{free_port()}"
    scrape = Scraper(address)
    env = {
        **worker_env,
        "RTJOBS_METRICS_ADDRESS": address,
        "DOCKER_HOST": docker_engine.url,
        "REDIS_URL": redis_server.url,
        "RTJOBS_IMAGE_ALLOW": f"{TEST_REPO},127.0.0.1:9/rtjobs-test/*",
        "RTJOBS_HOST_NAME": HOST,
        "RTJOBS_HOST_REPORT_EVERY_S": "0.5",
        "RTJOBS_GAME_NETWORK": E2E_NETWORK,
        "RTJOBS_ENGINE_MEMORY_BYTES": str(64 * 1024 * 1024),
        "RTJOBS_STOP_TIMEOUT_S": "1",
    }
    running, absent, unpullable, invalid = games
    q = {"task_queue": task_queue}
    await start_ready_worker(processes, env)  # (it runs until the test ends: the scrapes below need it)
    assert await result_of(await start_job(client, running, task_queue=task_queue)) == ("success", "")
    await scrape.until("rtjobs_engines", 1, host=HOST)  # the reporter saw the engine
    assert await result_of(await start_job(client, running, task_queue=task_queue)) == ("success", "replay_no_op")
    assert await result_of(await start_job(client, unpullable, image=ABSENT_IMAGE, task_queue=task_queue)) == (
        "failure",
        "image_pull_failed",
    )
    assert await result_of(await start_job(client, invalid, image="Not An Image!", task_queue=task_queue)) == (
        "failure",
        "invalid_request",
    )
    assert await result_of(await stop_job(client, running, task_queue=task_queue)) == ("success", "")
    assert await result_of(await stop_job(client, absent, task_queue=task_queue)) == ("success", "replay_no_op")

    # A publish while Redis is down fails (and is retried) until Redis is back.
    redis_server.stop()
    late = await stop_job(client, absent, task_queue=task_queue)
    outage_began = time.monotonic()  # (the job had started by then)
    deadline = time.monotonic() + POLL_WAIT_S
    while (failed := await scrape.value("rtjobs_publish_failures_total", reason="ConnectionError")) < 2:
        assert time.monotonic() < deadline, "no failed publish attempt counted while Redis was down"
        await asyncio.sleep(0.2)
    redis_server.start()
    outage_s = time.monotonic() - outage_began
    assert await result_of(late) == ("success", "replay_no_op")
    await scrape.until("rtjobs_engines", 0, host=HOST)  # the stopped engine and the failed start are gone

    jobs = "rtjobs_jobs_total"
    counted = {
        (kind, outcome, code): await scrape.value(jobs, job_kind=kind, outcome=outcome, error_code=code, **q)
        for kind, outcome, code in [
            ("start", "success", ""),
            ("start", "success", "replay_no_op"),
            ("start", "failure", "image_pull_failed"),
            ("start", "failure", "invalid_request"),
            ("stop", "success", ""),
            ("stop", "success", "replay_no_op"),
        ]
    }
    assert counted == {
        ("start", "success", ""): 1,
        ("start", "success", "replay_no_op"): 1,
        ("start", "failure", "image_pull_failed"): 1,
        ("start", "failure", "invalid_request"): 1,
        ("stop", "success", ""): 1,
        ("stop", "success", "replay_no_op"): 2,
    }
    assert await scrape.value(jobs) == 7  # and nothing else

    durations = "rtjobs_job_duration_seconds_count"
    assert await scrape.value(durations, job_kind="start", outcome="success") == 2
    assert await scrape.value(durations, job_kind="start", outcome="failure") == 2
    assert await scrape.value(durations, job_kind="stop", outcome="success") == 3
    # The late stop's result reached the stream only after Redis came back: its duration covers the outage.
    assert await scrape.value("rtjobs_job_duration_seconds_sum", job_kind="stop") >= outage_s

    # Docker steps on the host: both starts of the running game and the unpullable one; one stop (the
    # stops of a game without an engine anywhere, and the invalid start, never reach Docker).
    steps = "rtjobs_docker_step_seconds_count"
    assert await scrape.value(steps, job_kind="start", host=HOST) == 3
    assert await scrape.value(steps, job_kind="stop", host=HOST) == 1

    # Seven results, each published once; every failed attempt is one more attempt.
    failed = await scrape.value("rtjobs_publish_failures_total")
    assert failed == await scrape.value("rtjobs_publish_failures_total", reason="ConnectionError") >= 2
    assert await scrape.value("rtjobs_publish_attempts_total") == 7 + failed

    assert await scrape.value("rtjobs_engine_capacity", host=HOST) >= 1
    # The SDK's own metrics on the same endpoint, in seconds and with the conventional suffixes.
    assert await scrape.value("temporal_workflow_completed_total", workflow_type="StartRuntimeJob") == 4
    assert await scrape.value("temporal_activity_execution_latency_seconds_count", activity_type="publish_job_result")
