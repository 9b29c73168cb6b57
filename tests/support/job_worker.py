"""The real worker in-process, for the end-to-end tests and the history recorder.

The worker comes from `rtjobs.hosting.serving`, exactly as `python worker.py` runs it (real publish,
Docker and lock activities), so these runs exercise the production wiring, not a test copy of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiodocker
from aiodocker.exceptions import DockerError
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHandle

from activities.docker import EngineActivities
from activities.publish import redis_client
from contract.models import LABEL_GAME_ID
from contract.settings import Settings
from rtjobs.hosting import serving

# Network of the end-to-end engines: apart from the Docker activity tests' own.
E2E_NETWORK = "rtjobs-e2e-games"
# The `make_settings` fixture (tests/conftest.py): e2e_settings for the test's engine, Redis, queue and stream.
MakeSettings = Callable[..., Settings]


def e2e_settings(*, docker_url: str, redis_url: str, task_queue: str, stream: str, **overrides: Any) -> Settings:
    """Worker settings for one test: its own queue and stream; small limits so engines start fast."""
    values: dict[str, Any] = {
        "DOCKER_HOST": docker_url,
        "REDIS_URL": redis_url,
        "task_queue": task_queue,
        "results_stream": stream,
        "game_network": E2E_NETWORK,
        "start_timeout_s": 20.0,
        "stop_timeout_s": 1,
        "docker_call_timeout_s": 10.0,
        "docker_poll_interval_s": 0.1,
        "engine_memory_bytes": 64 * 1024 * 1024,
        "engine_nano_cpus": 500_000_000,
        "engine_pids_limit": 64,
        "publish_dedup_ttl_s": 600,
        "graceful_shutdown_timeout_s": 5.0,
        "reconcile_every": None,  # no schedule firing mid-test (see tests.support.processes.process_env)
        "engine_events_stream": f"{stream}:engine_events",  # (a reconcile run's events: not the shared stream)
    }
    values.update(overrides)
    return Settings(**values)


@contextlib.asynccontextmanager
async def real_worker(client: Client, settings: Settings) -> AsyncIterator[None]:
    """`rtjobs.hosting.serving` (the shared queue's and the host queue's workers, the host's reports) until
    the block ends; clients closed after.
    """
    redis = redis_client(settings.redis_url)
    engine = EngineActivities(settings)
    try:
        async with serving(client, settings, redis, engine):
            yield
    finally:
        await engine.close()
        await redis.aclose()


async def game_containers(docker: aiodocker.Docker, game_id: str) -> list[dict[str, Any]]:
    """Every container (any state) labelled with the game: what a job may have left behind."""
    found = await docker.containers.list(all=True, filters={"label": [f"{LABEL_GAME_ID}={game_id}"]})
    return [dict(c._container) for c in found]


async def remove_game_containers(docker: aiodocker.Docker, game_id: str) -> None:
    for container in await docker.containers.list(all=True, filters={"label": [f"{LABEL_GAME_ID}={game_id}"]}):
        with contextlib.suppress(DockerError):
            await container.delete(force=True, v=True)


async def until_running_container(docker: aiodocker.Docker, game_id: str, timeout_s: float = 30.0) -> str:
    """Wait until the game's container is running (past create and start); returns its id."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for summary in await game_containers(docker, game_id):
            if summary.get("State") == "running":
                return str(summary["Id"])
        await asyncio.sleep(0.05)
    raise AssertionError(f"no running container of game {game_id} within {timeout_s}s")


async def activity_events(handle: WorkflowHandle[Any, Any], activity_type: str) -> dict[str, HistoryEvent]:
    """The `scheduled` and `completed` events of the run's (single) `activity_type` call.

    Scheduled, not started: an activity with a retry policy gets its started event only when it ends.
    """
    found: dict[str, HistoryEvent] = {}
    for event in (await handle.fetch_history()).events:
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            if event.activity_task_scheduled_event_attributes.activity_type.name != activity_type:
                continue
            if "scheduled" in found:
                raise AssertionError(f"{activity_type} was scheduled twice in {handle.id}")
            found["scheduled"] = event
        elif (
            event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
            and "scheduled" in found
            and event.activity_task_completed_event_attributes.scheduled_event_id == found["scheduled"].event_id
        ):
            found["completed"] = event
    return found
