"""Fixtures of the fault suite: a redis-server per test (restartable, durable), game ids with their
container cleanup, and the environment of `python worker.py` children pointed at the test's parts.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from temporalio.testing import WorkflowEnvironment

from tests.support.docker_engine import TEST_IMAGES, DockerEngine
from tests.support.fleet import fleet_daemons_fixture, fleet_fixture  # noqa: F401  (fixtures of test_fleet*.py)
from tests.support.processes import process_env
from tests.support.redis_server import RedisServer
from tests.support.runs import remove_game_containers
from tests.support.stack import WorkerEnv, stack  # noqa: F401  (the scenarios' fixture)

# The stream entries must survive the restart of Redis that scenario 1 does: AOF, fsync on every write.
DURABLE = ["--appendonly", "yes", "--appendfsync", "always"]


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A test-owned redis-server (never the shared one on 6379), stopped whatever happens."""
    server = RedisServer(extra_args=DURABLE).start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def results_stream() -> str:
    return f"faults:job_results:{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def game_prefix(docker_engine: DockerEngine) -> AsyncIterator[str]:
    """A prefix for this test's game ids; their containers are removed at teardown."""
    prefix = f"f{uuid.uuid4().hex[:8]}"
    yield prefix
    await remove_game_containers(docker_engine.url, prefix)


@pytest.fixture
def worker_env_for(
    temporal_env: WorkflowEnvironment, own_redis: RedisServer, task_queue: str, results_stream: str
) -> WorkerEnv:
    """`worker_env_for(DOCKER_HOST=..., REDIS_URL=...)`: a worker environment for this test, overridable."""

    def make(**overrides: str) -> dict[str, str]:
        base = {
            "TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host,
            "TEMPORAL_NAMESPACE": temporal_env.client.namespace,
            "REDIS_URL": own_redis.url,
            "RTJOBS_TASK_QUEUE": task_queue,
            "RTJOBS_RESULTS_STREAM": results_stream,
            "RTJOBS_GRACEFUL_SHUTDOWN_TIMEOUT_S": "5",
            "RTJOBS_START_TIMEOUT_S": "60",
            # The image policy's default admits the engine image's repository: the test images'.
            "RTJOBS_ENGINE_IMAGE": TEST_IMAGES.healthy,
        }
        return process_env(**{**base, **overrides})

    return make
