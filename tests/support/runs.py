"""What every fault scenario needs: start jobs, watch their activities, and check the stream's verdict.

The verdict is the contract's promise: exactly one entry per job run, the one the run itself
published (its `status` query names the entry id), with the expected outcome and code.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiodocker
from temporalio.client import Client, WorkflowHandle

from contract.models import LABEL_GAME_ID, JobResult, JobStatus
from rtjobs.client import start_job, stop_job
from tests.support.streams import Entry, read_entries_at

Handle = WorkflowHandle[Any, JobResult]


FRESH_SUCCESS = frozenset({("success", "")})
STOP_REPLAY = frozenset({("success", "replay_no_op")})


@dataclass
class Run:
    """One job run and the (outcome, error_code) pairs the scenario accepts for it."""

    game_id: str
    handle: Handle
    accepted: frozenset[tuple[str, str]]


async def start_runs(
    client: Client,
    task_queue: str,
    game_ids: Iterable[str],
    *,
    image: str,
    accepted: frozenset[tuple[str, str]] = FRESH_SUCCESS,
) -> list[Run]:
    return [Run(g, await start_job(client, g, image=image, task_queue=task_queue), accepted) for g in game_ids]


async def stop_replay_runs(client: Client, task_queue: str, game_ids: Iterable[str]) -> list[Run]:
    """Stops of games that have no container: an inspect and a publish each (`success`, `replay_no_op`)."""
    return [Run(g, await stop_job(client, g, stop_timeout_s=0, task_queue=task_queue), STOP_REPLAY) for g in game_ids]


async def pending_attempt(handle: Handle, activity_type: str) -> int:
    """The attempt number of the run's pending `activity_type`: 0 until its first attempt started;
    a later attempt counts also while it waits out its backoff (an earlier one failed).
    """
    desc = await handle.describe()
    for pending in desc.raw_description.pending_activities:
        if pending.activity_type.name == activity_type and (
            pending.attempt > 1 or pending.HasField("last_started_time")
        ):
            return int(pending.attempt)
    return 0


async def until_pending(
    runs: Iterable[Run], activity_type: str, *, min_attempt: int = 1, timeout_s: float = 60
) -> None:
    """Wait until every run has `activity_type` running (in attempt `min_attempt` or later)."""
    waiting = list(runs)
    deadline = time.monotonic() + timeout_s
    while waiting:
        attempts = await asyncio.gather(*(pending_attempt(r.handle, activity_type) for r in waiting))
        waiting = [r for r, a in zip(waiting, attempts, strict=True) if a < min_attempt]
        if waiting and time.monotonic() > deadline:
            desc = await waiting[0].handle.describe()
            raise AssertionError(
                f"{activity_type} not at attempt {min_attempt} for {[r.game_id for r in waiting]}; "
                f"first: {desc.status} {desc.raw_description.pending_activities}"
            )
        await asyncio.sleep(0.1)


async def results(runs: Iterable[Run], timeout_s: float) -> list[JobResult]:
    return list(await asyncio.wait_for(asyncio.gather(*(r.handle.result() for r in runs)), timeout_s))


async def until_entries(redis_url: str, stream: str, count: int, timeout_s: float) -> list[Entry]:
    """Poll the stream until it holds `count` entries (or more, which the verdict then rejects)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            entries = await read_entries_at(redis_url, stream)
        except OSError:
            entries = []
        except Exception as err:  # redis.ConnectionError while the server is away
            if "connect" not in str(err).lower():
                raise
            entries = []
        if len(entries) >= count or time.monotonic() > deadline:
            return entries
        await asyncio.sleep(0.05)


async def assert_one_entry_per_run(redis_url: str, stream: str, runs: list[Run], timeout_s: float = 90) -> list[Entry]:
    """The verdict: every run ended, its result is on the stream exactly once, under the entry id the
    run recorded, with an accepted outcome and code; and the stream holds nothing else.
    """
    finished = await results(runs, timeout_s)
    entries = await read_entries_at(redis_url, stream)
    by_id = dict(entries)
    assert len(entries) == len(runs), f"{len(entries)} entries for {len(runs)} runs: {entries}"
    for run, result in zip(runs, finished, strict=True):
        status: JobStatus = await run.handle.query("status", result_type=JobStatus)
        assert status.entry_id in by_id, f"{run.game_id}: entry {status.entry_id!r} not on the stream"
        assert JobResult.model_validate(by_id[status.entry_id]) == result, (run.game_id, by_id[status.entry_id])
        assert (result.outcome, result.error_code) in run.accepted, (run.game_id, result)
    per_game = [fields["game_id"] for _id, fields in entries]
    assert sorted(per_game) == sorted(r.game_id for r in runs), per_game
    return entries


async def containers_of(docker_url: str, game_ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """Every container (any state) labelled with one of the games, as inspect data.

    Jobs may still be at work while this looks: a container removed between the list and its inspect
    is gone, not an error.
    """
    found: dict[str, list[dict[str, Any]]] = {g: [] for g in game_ids}
    async with aiodocker.Docker(url=docker_url) as docker:
        for game_id in found:
            listed = await docker.containers.list(all=True, filters={"label": [f"{LABEL_GAME_ID}={game_id}"]})
            for container in listed:
                try:
                    found[game_id].append(await container.show())
                except aiodocker.DockerError as err:
                    if err.status != 404:
                        raise
    return found


async def assert_no_orphans(docker_url: str, runs: list[Run], finished: list[JobResult]) -> None:
    """A successful start leaves exactly its own container, running; anything else leaves none."""
    found = await containers_of(docker_url, [r.game_id for r in runs])
    for run, result in zip(runs, finished, strict=True):
        containers = found[run.game_id]
        if result.outcome == "success" and run.handle.id.startswith("runtime-start-"):
            assert [c["Id"] for c in containers] == [result.container_id], (run.game_id, result, containers)
            assert containers[0]["State"]["Running"], containers[0]["State"]
        else:
            assert containers == [], (run.game_id, result, [c["Id"] for c in containers])


@dataclass
class ActivityRun:
    """One scheduled activity as the run's history tells it once the run has closed."""

    attempt: int  # the attempt that ended it
    last_failure: str  # ApplicationError type of the failure before that attempt ("" on attempt 1)
    failure: str  # type of its final failure ("" when it completed)
    completed: bool
    result: bytes = b""  # the completed activity's result payload (JSON with the pydantic converter)
    scheduled_at: datetime | None = None
    closed_at: datetime | None = None  # when it completed or failed for good


async def activity_runs(handle: Handle, activity_type: str) -> list[ActivityRun]:
    """Each `activity_type` the run scheduled: which attempt ended it, and what failed before.

    Temporal records a retried activity's failed attempts only in the last attempt's started event
    (`attempt`, `last_failure`), so that is where an outage that hit an earlier attempt shows. The run
    need not have closed: an activity still at work shows as neither completed nor failed.
    """
    scheduled: dict[int, ActivityRun] = {}
    async for event in handle.fetch_history_events():
        at = event.event_time.ToDatetime(tzinfo=UTC)
        if event.HasField("activity_task_scheduled_event_attributes"):
            if event.activity_task_scheduled_event_attributes.activity_type.name == activity_type:
                scheduled[event.event_id] = ActivityRun(
                    attempt=0, last_failure="", failure="", completed=False, scheduled_at=at
                )
        elif event.HasField("activity_task_started_event_attributes"):
            started = event.activity_task_started_event_attributes
            if started.scheduled_event_id in scheduled:
                run = scheduled[started.scheduled_event_id]
                run.attempt = started.attempt
                run.last_failure = started.last_failure.application_failure_info.type
        elif event.HasField("activity_task_completed_event_attributes"):
            done = event.activity_task_completed_event_attributes
            if done.scheduled_event_id in scheduled:
                run = scheduled[done.scheduled_event_id]
                run.completed, run.closed_at = True, at
                run.result = done.result.payloads[0].data if done.result.payloads else b""
        elif event.HasField("activity_task_failed_event_attributes"):
            failed = event.activity_task_failed_event_attributes
            if failed.scheduled_event_id in scheduled:
                run = scheduled[failed.scheduled_event_id]
                run.failure, run.closed_at = failed.failure.application_failure_info.type, at
    return list(scheduled.values())


async def remove_game_containers(docker_url: str, prefix: str) -> None:
    """Teardown: force-remove every engine container of the test's games (names carry the prefix)."""
    async with aiodocker.Docker(url=docker_url) as docker:
        for container in await docker.containers.list(all=True, filters={"name": [f"galaxy-game-{prefix}"]}):
            with contextlib.suppress(aiodocker.DockerError):
                await container.delete(force=True, v=True)
