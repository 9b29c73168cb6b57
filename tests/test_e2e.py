"""End to end: the real dev server, real Redis, real Docker and the real worker (`rtjobs.workers.build_worker`).

Each test has its own task queue, result stream and game ids, and removes its games' containers.
What a test claims is checked on the real outputs: the stream entries, Docker's own view of the
game's containers, and the workflow histories and visibility records on the server.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import aiodocker
import pytest
import redis.asyncio as aioredis
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from contract.models import LABEL_GAME_ID, LABEL_MANAGED_BY, JobResult, JobStatus
from contract.settings import Settings
from rtjobs.client import start_job, stop_job
from tests.support.binaries import temporal_cli
from tests.support.docker_engine import EngineImages
from tests.support.job_worker import (
    MakeSettings,
    activity_events,
    game_containers,
    real_worker,
    remove_game_containers,
    until_running_container,
)
from tests.support.stand_ins import ORDER_TEST_SETTLE_S
from tests.support.streams import read_entries
from workflows import StartRuntimeJob
from workflows.search import GAME_ID, JOB_KIND

pytestmark = pytest.mark.docker

# Every wait in this file only stops a hang: none times the product (speed is measured in bench/, e.g.
# bench/latency.py for the cancellation), so each is far beyond what a loaded 2-core machine takes.
RESULT_WAIT_S = 120.0  # a job here takes 1-4 s (the slow-healthy engine: ~3 s), a game's chain ~12 s
CLOSE_WAIT_S = 60.0  # a run without a usable game id fails within a second; a task retry loop never ends


@pytest.fixture
async def games(docker: aiodocker.Docker) -> AsyncIterator[Callable[[], str]]:
    """New unique game ids; every container of these games is removed at teardown."""
    made: list[str] = []

    def new() -> str:
        made.append(f"e2e-{uuid.uuid4().hex[:10]}")
        return made[-1]

    yield new
    for game_id in made:
        await remove_game_containers(docker, game_id)


@pytest.fixture
async def worker(client: Client, make_settings: MakeSettings) -> AsyncIterator[Settings]:
    """The real worker on the test's queue, publishing to the test's stream."""
    settings = make_settings()
    async with real_worker(client, settings):
        yield settings


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


# --- start, stop and their replays ------------------------------------------------------------------


async def test_start_stop_and_their_replays_reach_the_stream(
    client: Client,
    worker: Settings,
    docker: aiodocker.Docker,
    redis: aioredis.Redis,
    stream: str,
    games: Callable[[], str],
) -> None:
    gid = games()
    endpoint = f"http://galaxy-game-{gid}:8080"
    started = await result_of(await start_job(client, gid, task_queue=worker.task_queue))
    info = await inspect_container(docker, gid)
    assert info["State"]["Running"] and info["State"]["Health"]["Status"] == "healthy"
    assert info["Config"]["Labels"][LABEL_GAME_ID] == gid and info["Config"]["Labels"][LABEL_MANAGED_BY] == "rtjobs"
    cid = info["Id"]
    assert (started.outcome, started.container_id, started.engine_endpoint, started.error_code) == (
        "success",
        cid,
        endpoint,
        "",
    )

    again = await result_of(await start_job(client, gid, task_queue=worker.task_queue))
    assert (again.outcome, again.container_id, again.engine_endpoint, again.error_code) == (
        "success",
        cid,
        endpoint,
        "replay_no_op",
    )
    assert (await inspect_container(docker, gid))["Id"] == cid, "a replay must not touch the container"

    stopped = await result_of(await stop_job(client, gid, task_queue=worker.task_queue))
    assert (stopped.outcome, stopped.container_id, stopped.engine_endpoint, stopped.error_code) == (
        "success",
        cid,
        endpoint,
        "",
    )
    assert await game_containers(docker, gid) == []

    stopped_again = await result_of(await stop_job(client, gid, task_queue=worker.task_queue))
    assert (stopped_again.outcome, stopped_again.container_id, stopped_again.engine_endpoint) == ("success", "", "")
    assert stopped_again.error_code == "replay_no_op"

    assert await stream_results(redis, stream) == [started, again, stopped, stopped_again]


async def test_engine_exiting_at_once_reports_container_exited_with_its_log_tail_and_leaves_nothing(
    client: Client,
    worker: Settings,
    docker: aiodocker.Docker,
    redis: aioredis.Redis,
    stream: str,
    games: Callable[[], str],
    images: EngineImages,
) -> None:
    gid = games()
    result = await result_of(await start_job(client, gid, image=images.exits, task_queue=worker.task_queue))
    assert (result.outcome, result.error_code, result.container_id, result.engine_endpoint) == (
        "failure",
        "container_exited",
        "",
        "",
    )
    assert "exited with code 3" in result.error_message
    assert "loading map" in result.error_message and "fatal: no map" in result.error_message
    assert await game_containers(docker, gid) == []
    assert await stream_results(redis, stream) == [result]


async def test_cancel_mid_start_publishes_cancelled_and_leaves_no_container(
    client: Client,
    make_settings: MakeSettings,
    docker: aiodocker.Docker,
    redis: aioredis.Redis,
    stream: str,
    games: Callable[[], str],
    images: EngineImages,
) -> None:
    gid = games()
    # Never healthy: the start can end only by its readiness limit (engine_unhealthy) or by the
    # cancellation. The limit is far beyond what a cancellation takes to land (0.9 s from the request to
    # the result, measured by bench/latency.py), so that a slow machine cannot turn this into a race;
    # how fast it lands is the benchmark's figure, not a bound here.
    settings = make_settings(start_timeout_s=RESULT_WAIT_S / 2)
    async with real_worker(client, settings):
        handle = await start_job(client, gid, image=images.never_healthy, task_queue=settings.task_queue)
        await until_running_container(docker, gid)
        await handle.cancel()
        result = await result_of(handle)
    assert (result.outcome, result.error_code, result.container_id) == ("failure", "cancelled", ""), result
    assert await game_containers(docker, gid) == []
    assert await stream_results(redis, stream) == [result]

    # The cancellation reached the running Docker activity, which ended as cancelled (not completed, failed
    # or timed out), and the publish was scheduled only after that.
    events = list((await handle.fetch_history()).events)
    docker_step = [(kind, i) for kind, i in activity_trail(events, "ensure_engine_running") if kind != STARTED]
    assert [kind for kind, _i in docker_step] == [
        EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
        EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED,
        EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED,
    ], [EventType.Name(kind) for kind, _i in docker_step]
    publish_scheduled = activity_trail(events, "publish_job_result")[0][1]
    assert publish_scheduled > docker_step[-1][1], "the publish must follow the Docker activity's cancellation"


# --- the image policy and the engines' lock-down ----------------------------------------------------


async def test_an_image_outside_the_policy_is_invalid_request_never_pulled_and_an_allowed_one_runs_locked_down(
    client: Client,
    worker: Settings,
    docker: aiodocker.Docker,
    redis: aioredis.Redis,
    stream: str,
    games: Callable[[], str],
    images: EngineImages,
) -> None:
    """The default policy (RTJOBS_IMAGE_ALLOW unset) admits the engine image's repository only: the same
    repository name on another registry is refused before Docker sees it; the allowed one runs read-only
    as 65534 with its scratch tmpfs (the test image's HEALTHCHECK passes under those defaults)."""
    refused_gid, allowed_gid = games(), games()
    impostor = f"127.0.0.1:9/{images.healthy}"  # other registry, same repository name; nothing answers there
    refused = await result_of(await start_job(client, refused_gid, image=impostor, task_queue=worker.task_queue))
    assert (refused.outcome, refused.error_code, refused.container_id) == ("failure", "invalid_request", "")
    assert "not allowed by RTJOBS_IMAGE_ALLOW" in refused.error_message and impostor in refused.error_message
    assert await game_containers(docker, refused_gid) == []
    with pytest.raises(aiodocker.DockerError) as missing:
        await docker.images.inspect(impostor)
    assert missing.value.status == 404  # never pulled (a pull would have said image_pull_failed)

    allowed = await result_of(await start_job(client, allowed_gid, image=images.healthy, task_queue=worker.task_queue))
    assert (allowed.outcome, allowed.error_code) == ("success", "")
    info = await inspect_container(docker, allowed_gid)
    assert info["State"]["Health"]["Status"] == "healthy"
    assert info["HostConfig"]["ReadonlyRootfs"] is True and info["Config"]["User"] == "65534:65534"
    assert list(info["HostConfig"]["Tmpfs"]) == ["/tmp"]
    assert await stream_results(redis, stream) == [refused, allowed]


# --- one game, several jobs -------------------------------------------------------------------------


@pytest.mark.parametrize("kinds", [["start", "stop"], ["stop", "start", "stop"]], ids=["start-stop", "stop-start-stop"])
async def test_jobs_of_one_game_started_together_run_one_at_a_time_in_start_order(
    client: Client,
    make_settings: MakeSettings,
    docker: aiodocker.Docker,
    redis: aioredis.Redis,
    stream: str,
    games: Callable[[], str],
    images: EngineImages,
    kinds: list[str],
) -> None:
    gid = games()
    handles: list[WorkflowHandle[Any, JobResult]] = []
    # Start order is promised within the settle window: see ORDER_TEST_SETTLE_S.
    settings = make_settings(order_settle_s=ORDER_TEST_SETTLE_S)
    async with real_worker(client, settings):
        for kind in kinds:  # started back to back, each before the previous one has finished
            if kind == "start":
                handles.append(await start_job(client, gid, image=images.slow_healthy, task_queue=settings.task_queue))
            else:
                handles.append(await stop_job(client, gid, stop_timeout_s=1, task_queue=settings.task_queue))
        results = await asyncio.gather(*(result_of(h) for h in handles))

    started_at = [(await h.describe()).start_time for h in handles]
    assert started_at == sorted(started_at)

    # Docker steps never overlap (each is scheduled only after the one before it completed), and
    # they run in the order the jobs were started. A stop that comes first, when the game has no
    # engine anywhere (the host registry knows of none), makes no Docker call at all.
    steps = [
        await activity_events(h, "ensure_engine_running" if kind == "start" else "ensure_engine_removed")
        for kind, h in zip(kinds, handles, strict=True)
    ]
    if kinds[0] == "stop":
        assert steps[0] == {}, "a stop of a game without an engine called Docker"
        steps, kinds = steps[1:], kinds[1:]
    ran = sorted(range(len(steps)), key=lambda i: steps[i]["scheduled"].event_time.ToDatetime())
    for earlier, later in itertools.pairwise(ran):
        assert steps[earlier]["completed"].event_time.ToDatetime() <= steps[later]["scheduled"].event_time.ToDatetime()
    assert ran == list(range(len(kinds))), (
        f"jobs started as {kinds} ran their Docker steps as {[kinds[i] for i in ran]}"
    )

    # Results on the stream in start order, each what the state left by the previous job implies.
    assert await stream_results(redis, stream) == results
    container_id = ""
    all_kinds = ["stop", *kinds] if len(kinds) < len(results) else kinds
    for kind, result in zip(all_kinds, results, strict=True):
        assert result.outcome == "success", result
        if kind == "start":
            assert (result.error_code, bool(result.container_id)) == ("", True)
            container_id = result.container_id
        elif container_id:
            assert (result.error_code, result.container_id) == ("", container_id)
            container_id = ""
        else:
            assert (result.error_code, result.container_id) == ("replay_no_op", "")
    assert await game_containers(docker, gid) == [], "the last job was a stop"


async def test_a_job_whose_first_task_is_late_within_the_settle_window_still_runs_first(
    client: Client,
    make_settings: MakeSettings,
    docker: aiodocker.Docker,
    redis: aioredis.Redis,
    stream: str,
    games: Callable[[], str],
) -> None:
    """Start order is the order the server started the jobs, not the order their first workflow tasks
    happened to run (task-queue dispatch, a backlog): the stop started first must run first, so the
    start started 0.5 s after it leaves the engine running. A job asks for its turn no earlier than
    RTJOBS_ORDER_SETTLE_S after its start, which bounds how late a first task may be; without that,
    the start (whose first task runs at once) would go first.

    The times leave room for a slow machine (the server fires a start delay with about 1 s
    granularity): the stop's first task comes 2-3 s after its start, so the start's first task has
    1.5-2.5 s to run before it; the window is the largest allowed (5 s), so the stop's late task
    still has 2-3 s to ask for its turn before the start asks."""
    settings = make_settings(order_settle_s=5.0)
    gid = games()
    async with real_worker(client, settings):
        # The delay stands in for the first job's workflow task being late (by about 2 s).
        stop = await client.start_workflow(
            "StopRuntimeJob",
            {"game_id": gid},
            id=f"runtime-stop-{gid}-late",
            task_queue=settings.task_queue,
            result_type=JobResult,
            start_delay=timedelta(seconds=2),
        )
        await asyncio.sleep(0.5)
        start = await start_job(client, gid, task_queue=settings.task_queue)
        assert (await stop.describe()).start_time < (await start.describe()).start_time
        stopped, started = await asyncio.gather(result_of(stop), result_of(start))
    first_tasks = {}
    for name, handle in (("stop", stop), ("start", start)):
        events = (await handle.fetch_history()).events
        task = next(e for e in events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED)
        first_tasks[name] = task.event_time.ToDatetime()
    assert first_tasks["start"] < first_tasks["stop"], "the start's first task must have run first"
    assert [r.error_code for r in await stream_results(redis, stream)] == ["replay_no_op", ""], (
        "the stop started first must be published first (a replay: there was no engine yet)"
    )
    assert (stopped.error_code, started.error_code) == ("replay_no_op", "")
    [container] = await game_containers(docker, gid)
    assert container["State"] == "running", "the last job started was a start"


# --- other starters ---------------------------------------------------------------------------------


async def test_job_started_by_the_temporal_cli_with_raw_json_gives_the_same_entries(
    client: Client,
    temporal_env: WorkflowEnvironment,
    worker: Settings,
    docker: aiodocker.Docker,
    redis: aioredis.Redis,
    stream: str,
    games: Callable[[], str],
) -> None:
    """What a Go (or any other) starter sends: a plain JSON object, no Python types involved."""
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
async def test_input_without_a_usable_game_id_fails_the_run_at_once_and_the_worker_serves_on(
    client: Client,
    worker: Settings,
    redis: aioredis.Redis,
    stream: str,
    games: Callable[[], str],
    payload: Any,
    message: str,
) -> None:
    handle = await client.start_workflow(
        "StartRuntimeJob", payload, id=f"e2e-bad-{uuid.uuid4().hex}", task_queue=worker.task_queue
    )
    history = await _until_closed(handle)
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
async def test_rule_breaking_input_publishes_invalid_request_naming_the_field_and_the_worker_serves_on(
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


async def _until_closed(handle: WorkflowHandle[Any, Any], timeout_s: float = CLOSE_WAIT_S) -> list[Any]:
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
