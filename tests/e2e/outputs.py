"""Reading what end-to-end jobs leave: results, stream entries, containers and the runs' histories; the
`temporal` CLI as another starter. Every wait only stops a hang: speed is measured in bench/.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiodocker
import redis.asyncio as aioredis
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from contract.models import JobResult
from tests.support.binaries import temporal_cli
from tests.support.streams import read_entries

# Every wait in the end-to-end tests only stops a hang: none times the product (speed is measured in bench/, e.g.
# bench/latency.py for the cancellation), so each is far beyond what a loaded 2-core machine takes.
RESULT_WAIT_S = 120.0  # a job here takes 1-4 s (the slow-healthy engine: ~3 s), a game's chain ~12 s


CLOSE_WAIT_S = 60.0  # a run without a usable game id fails within a second; a task retry loop never ends


async def result_of(handle: WorkflowHandle[Any, JobResult]) -> JobResult:
    return await asyncio.wait_for(handle.result(), RESULT_WAIT_S)


async def stream_results(redis: aioredis.Redis, stream: str) -> list[JobResult]:
    """The entries as results; validation also proves each has exactly the six contract fields."""
    return [JobResult.model_validate(fields, strict=True) for _id, fields in await read_entries(redis, stream)]


async def inspect_container(docker: aiodocker.Docker, game_id: str) -> dict[str, Any]:
    info: dict[str, Any] = await docker.containers.container(f"galaxy-game-{game_id}").show()
    return info


STARTED = EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED  # written when an attempt ends, with a retry policy


def activity_trail(events: list[HistoryEvent], activity_type: str) -> list[tuple[EventType.ValueType, int]]:
    """(event type, index in `events`) of every event of the run's first `activity_type` call, in order."""
    scheduled_id = next(
        (
            e.event_id
            for e in events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
            and e.activity_task_scheduled_event_attributes.activity_type.name == activity_type
        ),
        None,
    )
    trail = []
    for index, event in enumerate(events):
        attributes = event.WhichOneof("attributes")
        if event.event_id == scheduled_id or (
            attributes is not None
            and attributes.startswith("activity_task_")
            and getattr(getattr(event, attributes), "scheduled_event_id", None) == scheduled_id
        ):
            trail.append((event.event_type, index))
    return trail


async def run_cli(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        str(temporal_cli()), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, f"temporal {' '.join(args)} exited {proc.returncode}: {err.decode()}"
    return out.decode()


def server_args(temporal_env: WorkflowEnvironment) -> list[str]:
    return [
        "--address",
        temporal_env.client.service_client.config.target_host,
        "--namespace",
        temporal_env.client.namespace,
    ]


async def until_closed(handle: WorkflowHandle[Any, Any], timeout_s: float = CLOSE_WAIT_S) -> list[Any]:
    """The run's events once it has closed (without raising its failure)."""
    deadline = time.monotonic() + timeout_s
    closing = {
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT,
    }
    while time.monotonic() < deadline:
        events = list((await handle.fetch_history()).events)
        if events and events[-1].event_type in closing:
            return events
        await asyncio.sleep(0.1)
    raise AssertionError(f"{handle.id} did not close within {timeout_s}s")
