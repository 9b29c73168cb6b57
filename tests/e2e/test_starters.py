"""End to end, as starters and operators meet the worker: the `temporal` CLI with raw JSON, the search
attributes, bad input, the status query and a job id started twice.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiodocker
import pytest
import redis.asyncio as aioredis
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from contract.models import JobResult, JobStatus
from contract.settings import Settings
from rtjobs.client import start_job, stop_job
from tests.e2e.outputs import (
    RESULT_WAIT_S,
    inspect_container,
    result_of,
    run_cli,
    server_args,
    stream_results,
    until_closed,
)
from tests.support.docker_engine import EngineImages
from tests.support.job_worker import game_containers
from tests.support.streams import read_entries
from workflows import StartRuntimeJob
from workflows.search import GAME_ID, JOB_KIND

pytestmark = pytest.mark.docker


# --- other starters ---------------------------------------------------------------------------------


async def test_job_started_by_the_temporal_cli(
    client: Client,
    temporal_env: WorkflowEnvironment,
    worker: Settings,
    docker: aiodocker.Docker,
    redis: aioredis.Redis,
    stream: str,
    games: Callable[[], str],
) -> None:
    """Job started by the temporal cli with raw json gives the same entries.

    What a Go (or any other) starter sends: a plain JSON object, no Python types involved.
    """
    gid = games()
    start_id, stop_id = f"cli-start-{gid}", f"cli-stop-{gid}"
    common = [*server_args(temporal_env), "--task-queue", worker.task_queue]
    await run_cli(
        "workflow", "start", *common, "--type", "StartRuntimeJob", "--workflow-id", start_id,
        "--input", json.dumps({"game_id": gid}),
    )  # fmt: skip
    started = await result_of(client.get_workflow_handle(start_id, result_type=JobResult))
    cid = (await inspect_container(docker, gid))["Id"]
    await run_cli(
        "workflow", "start", *common, "--type", "StopRuntimeJob", "--workflow-id", stop_id,
        "--input", json.dumps({"game_id": gid, "stop_timeout_s": 1}),
    )  # fmt: skip
    stopped = await result_of(client.get_workflow_handle(stop_id, result_type=JobResult))

    expected = {
        "game_id": gid,
        "outcome": "success",
        "container_id": cid,
        "engine_endpoint": f"http://galaxy-game-{gid}:8080",
        "error_code": "",
        "error_message": "",
    }
    assert [fields for _id, fields in await read_entries(redis, stream)] == [expected, expected]
    assert started.stream_fields() == stopped.stream_fields() == expected
    assert await game_containers(docker, gid) == []
    first = (await client.get_workflow_handle(start_id).fetch_history()).events[0]
    [payload] = first.workflow_execution_started_event_attributes.input.payloads
    assert payload.metadata["encoding"] == b"json/plain"


async def test_search_attribute_query_finds_the_jobs_of_a_game(
    client: Client,
    temporal_env: WorkflowEnvironment,
    worker: Settings,
    games: Callable[[], str],
) -> None:
    gid, other = games(), games()
    start = await start_job(client, gid, task_queue=worker.task_queue)
    await result_of(start)
    stop = await stop_job(client, gid, stop_timeout_s=1, task_queue=worker.task_queue)
    await result_of(stop)
    await result_of(await stop_job(client, other, task_queue=worker.task_queue))  # must not be listed
    query = f'GameId="{gid}"'

    found: dict[str, str | None] = {}
    deadline = time.monotonic() + RESULT_WAIT_S
    while len(found) < 2 and time.monotonic() < deadline:  # visibility is eventually consistent
        found = {wf.id: wf.typed_search_attributes.get(JOB_KIND) async for wf in client.list_workflows(query)}
        await asyncio.sleep(0.2)
    assert found == {start.id: "start", stop.id: "stop"}

    out = await run_cli("workflow", "list", *server_args(temporal_env), "--query", query, "--output", "json")
    listed = json.loads(out) if out.lstrip().startswith("[") else [json.loads(line) for line in out.splitlines()]
    assert {wf["execution"]["workflowId"] for wf in listed} == {start.id, stop.id}
    assert (await start.describe()).typed_search_attributes.get(GAME_ID) == gid


# --- bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("g-1", "input must be a JSON object with a non-empty string game_id (got str)"),
        (["g-1"], "input must be a JSON object with a non-empty string game_id (got list)"),
        (None, "input must be a JSON object with a non-empty string game_id (got NoneType)"),
        ({}, "input must be a JSON object with a non-empty string game_id (got game_id=None)"),
        ({"game_id": "   "}, "input must be a JSON object with a non-empty string game_id (got game_id='   ')"),
    ],
    ids=["string", "list", "null", "missing-game-id", "blank-game-id"],
)
async def test_input_without_game_id_fails_at_once(
    client: Client,
    worker: Settings,
    redis: aioredis.Redis,
    stream: str,
    games: Callable[[], str],
    payload: Any,
    message: str,
) -> None:
    """Input without a usable `game_id` fails the run at once and the worker serves on."""
    handle = await client.start_workflow(
        "StartRuntimeJob", payload, id=f"e2e-bad-{uuid.uuid4().hex}", task_queue=worker.task_queue
    )
    history = await until_closed(handle)
    kinds = [e.event_type for e in history]
    assert kinds[-1] == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED
    assert EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED not in kinds, "a bad payload must fail the run, not its task"
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED not in kinds
    failure = history[-1].workflow_execution_failed_event_attributes.failure
    assert failure.message == message
    assert await redis.exists(stream) == 0

    good = await result_of(await stop_job(client, games(), task_queue=worker.task_queue))
    assert (good.outcome, good.error_code) == ("success", "replay_no_op")
    assert await stream_results(redis, stream) == [good]


@pytest.mark.parametrize(
    ("workflow", "fields", "named"),
    [
        ("StartRuntimeJob", {"game_id": "Bad_Game"}, "game_id"),
        ("StartRuntimeJob", {"image": "Not A Ref"}, "image"),
        ("StopRuntimeJob", {"stop_timeout_s": 99999}, "stop_timeout_s"),
        ("StopRuntimeJob", {"stop_timeout_s": "30"}, "stop_timeout_s"),
        ("StartRuntimeJob", {"imgae": "typo"}, "imgae"),
    ],
    ids=["game-id", "image", "timeout-range", "timeout-type", "unknown-field"],
)
async def test_rule_breaking_input_is_invalid_request(
    client: Client,
    worker: Settings,
    docker: aiodocker.Docker,
    redis: aioredis.Redis,
    stream: str,
    games: Callable[[], str],
    workflow: str,
    fields: dict[str, Any],
    named: str,
) -> None:
    """Rule breaking input publishes `invalid_request` naming the field and the worker serves on."""
    gid = games()
    request = {"game_id": gid, **fields}
    handle = await client.start_workflow(
        workflow, request, id=f"e2e-bad-{uuid.uuid4().hex}", task_queue=worker.task_queue, result_type=JobResult
    )
    bad = await result_of(handle)
    assert (bad.game_id, bad.outcome, bad.error_code, bad.container_id) == (
        request["game_id"],
        "failure",
        "invalid_request",
        "",
    )
    assert f"{named}:" in bad.error_message and "\n" not in bad.error_message
    assert await game_containers(docker, gid) == []

    good = await result_of(await stop_job(client, games(), task_queue=worker.task_queue))
    assert (good.outcome, good.error_code) == ("success", "replay_no_op")
    assert await stream_results(redis, stream) == [bad, good]


# --- operators and starters -------------------------------------------------------------------------


async def test_status_query_shows_the_step_then_the_result_and_its_entry(
    client: Client,
    worker: Settings,
    redis: aioredis.Redis,
    stream: str,
    games: Callable[[], str],
    images: EngineImages,
) -> None:
    gid = games()
    handle = await start_job(client, gid, image=images.slow_healthy, task_queue=worker.task_queue)
    steps: list[str] = []
    deadline = time.monotonic() + RESULT_WAIT_S
    while time.monotonic() < deadline and not any(s.startswith("start engine") for s in steps):
        status = await handle.query(StartRuntimeJob.status)
        assert isinstance(status, JobStatus)
        steps.append(status.step)
        await asyncio.sleep(0.1)
    # The Docker step names the host it runs on (the Docker engine's name, as the UI shows it).
    assert any(s.startswith(f"start engine for game {gid} ({images.slow_healthy}) on host ") for s in steps), steps
    result = await result_of(handle)
    final = await handle.query(StartRuntimeJob.status)
    [(entry_id, _fields)] = await read_entries(redis, stream)
    assert (final.result, final.entry_id) == (result, entry_id)
    assert final.step == f"start job for game {gid}: success"


async def test_starting_the_same_job_id_twice_while_it_runs_runs_it_once(
    client: Client,
    worker: Settings,
    redis: aioredis.Redis,
    stream: str,
    games: Callable[[], str],
    images: EngineImages,
) -> None:
    gid = games()
    first = await start_job(client, gid, image=images.slow_healthy, job="once", task_queue=worker.task_queue)
    second = await start_job(client, gid, image=images.slow_healthy, job="once", task_queue=worker.task_queue)
    assert second.id == first.id
    assert second.result_run_id == first.result_run_id, "the second start must join the running job"
    result = await result_of(second)
    assert (result.outcome, result.error_code) == ("success", "")
    assert await result_of(first) == result
    assert await stream_results(redis, stream) == [result]
