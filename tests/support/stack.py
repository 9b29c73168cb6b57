"""A worker on the real stack, and the check of what its jobs put on the stream.

`stack` (a fixture; tests/reliability/conftest.py makes it theirs) bundles what a fault scenario starts
from: the session's dev server, a redis-server of the test's own, the Docker engine, a task queue and a
result stream, game ids under a prefix whose containers are removed at teardown, and `python worker.py`
children killed at teardown. `run_jobs` is the end of every scenario: the runs finish, each has exactly
one entry of its own on the stream, and no container is left that should not be.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from contract.models import JobResult
from tests.support.docker_engine import DockerEngine, EngineImages
from tests.support.processes import Process, start_ready_worker
from tests.support.redis_server import RedisServer
from tests.support.runs import (
    FRESH_SUCCESS,
    Run,
    assert_no_orphans,
    assert_one_entry_per_run,
    results,
    start_runs,
    stop_replay_runs,
)
from tests.support.streams import Entry

# `worker_env_for(DOCKER_HOST=..., REDIS_URL=...)`: a worker's environment for the test, overridable.
WorkerEnv = Callable[..., dict[str, str]]


@dataclass
class Stack:
    """The real parts of one test and the workers it started on them."""

    client: Client
    task_queue: str
    stream: str
    redis: RedisServer
    docker_url: str
    images: EngineImages
    game_prefix: str
    processes: list[Process]
    env_for: WorkerEnv

    def games(self, label: str, count: int) -> list[str]:
        """`count` game ids of this test, `PREFIX-LABELi`."""
        return [f"{self.game_prefix}-{label}{i}" for i in range(count)]

    def env(self, **overrides: str) -> dict[str, str]:
        """The environment of a worker on this stack (the stack's Docker engine unless overridden)."""
        return self.env_for(**{"DOCKER_HOST": self.docker_url, **overrides})

    async def start_worker(self, **overrides: str) -> Process:
        """A `python worker.py` on this stack that polls its queue; killed at teardown."""
        return await start_ready_worker(self.processes, self.env(**overrides))

    async def start(
        self,
        games: Iterable[str],
        *,
        image: str | None = None,
        accepted: frozenset[tuple[str, str]] = FRESH_SUCCESS,
        client: Client | None = None,
    ) -> list[Run]:
        """Start jobs of `games` (the healthy test image unless `image`), on this stack's queue."""
        return await start_runs(
            client or self.client, self.task_queue, games, image=image or self.images.healthy, accepted=accepted
        )

    async def stop_replays(self, games: Iterable[str], *, client: Client | None = None) -> list[Run]:
        """Stops of games without a container: an inspect and a publish each."""
        return await stop_replay_runs(client or self.client, self.task_queue, games)


@dataclass
class Verdict:
    """What `run_jobs` found: each run's result (in the runs' order) and the stream's entries."""

    finished: list[JobResult]
    entries: list[Entry]


async def run_jobs(
    stack: Stack, runs: list[Run], *, timeout_s: float = 90, orphans: bool = True, docker_url: str | None = None
) -> Verdict:
    """Wait for every run, then check the contract's promise: exactly one entry per run, the one the
    run published, with an accepted outcome; and (unless `orphans=False`) no container left but a
    successful start's own.
    """
    finished = await results(runs, timeout_s)
    if orphans:
        await assert_no_orphans(docker_url or stack.docker_url, runs, finished)
    entries = await assert_one_entry_per_run(stack.redis.url, stack.stream, runs, timeout_s)
    return Verdict(finished, entries)


@pytest.fixture
def stack(
    temporal_env: WorkflowEnvironment,
    own_redis: RedisServer,
    docker_engine: DockerEngine,
    task_queue: str,
    results_stream: str,
    game_prefix: str,
    processes: list[Process],
    worker_env_for: WorkerEnv,
) -> Stack:
    """A worker's real stack for this test (no worker started yet: `await stack.start_worker()`)."""
    return Stack(
        client=temporal_env.client,
        task_queue=task_queue,
        stream=results_stream,
        redis=own_redis,
        docker_url=docker_engine.url,
        images=docker_engine.images,
        game_prefix=game_prefix,
        processes=processes,
        env_for=worker_env_for,
    )
