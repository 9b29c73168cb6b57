"""The placement activity against the real dev server and the real registry workflow: placements asked at
the same time go to the registry together, answered exactly as one update each would be; a registry run
by an earlier build (no `place_batch`) still answers every one."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections import Counter

from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Worker

from activities.hosts import send_report
from activities.placement import PlacementActivities
from contract.hosts import (
    HOST_REGISTRY_WORKFLOW,
    PLACE_UPDATE,
    HostRef,
    HostReport,
    PlaceAnswer,
    PlaceRequest,
    RegistryState,
    host_queue,
    registry_workflow_id,
)
from contract.lock import coordination_queue
from workflows.hosts import HostRegistry

GAMES = 40


def host(task_queue: str, name: str) -> HostRef:
    host_id = f"{name}-{uuid.uuid4().hex[:8]}"
    return HostRef(host_id=host_id, name=name, queue=host_queue(task_queue, host_id))


async def report(client: Client, task_queue: str, ref: HostRef, capacity: int) -> None:
    await send_report(
        client,
        task_queue,
        HostReport(host=ref, worker=f"worker-{ref.name}", capacity=capacity, report_every_s=60),
    )


async def place_all(
    activities: PlacementActivities, task_queue: str, games: list[str], *, job: str = "start"
) -> list[PlaceAnswer]:
    """Every placement at once, each in its own activity run, as many jobs' local activities ask them."""
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, task_queue=task_queue)

    async def one(game_id: str) -> PlaceAnswer:
        request = PlaceRequest(game_id=game_id, create=True, job=f"{job}-{game_id}")
        answer: PlaceAnswer = await env.run(activities.place_game_engine, request)
        return answer

    return list(await asyncio.gather(*(one(g) for g in games)))


async def updates_in_history(client: Client, task_queue: str) -> int:
    handle = client.get_workflow_handle(registry_workflow_id(task_queue))
    events = [e async for e in handle.fetch_history_events()]
    return sum(1 for e in events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED)


async def test_placements_asked_at_once_go_together_and_spread_as_one_at_a_time_would(
    client: Client, task_queue: str
) -> None:
    async with Worker(client, task_queue=coordination_queue(task_queue), workflows=[HostRegistry]):
        big, small = host(task_queue, "h-big"), host(task_queue, "h-small")
        await report(client, task_queue, big, capacity=30)
        await report(client, task_queue, small, capacity=20)
        activities = PlacementActivities(client)
        games = [f"g-{i}" for i in range(GAMES)]

        answers = await place_all(activities, task_queue, games)

        # Every game got a host; the registry filled both to the same share (30:20 → 24 and 16), as one
        # update per game does, because each placement in a batch sees the reservations before it.
        assert all(a.chosen is not None and not a.found for a in answers), answers
        by_host = Counter(a.chosen.name for a in answers if a.chosen is not None)
        assert by_host == {"h-big": 24, "h-small": 16}
        # Far fewer updates than placements: the first update takes what was waiting when it was sent.
        assert activities.updates_sent <= 3, activities.updates_sent
        assert await updates_in_history(client, task_queue) == activities.updates_sent

        # Asked again by the same job (a retried activity), a game gets the same answer: the host chosen
        # for it, so the job creates its engine there; nothing new is reserved.
        again = await place_all(activities, task_queue, games[:5])
        assert [a.chosen for a in again] == [a.chosen for a in answers[:5]]
        assert [a.found for a in again] == [[]] * 5
        # Asked by another job of the game (the reservation stands, no engine reported yet): found there.
        other = await place_all(activities, task_queue, games[:5], job="another-start")
        assert [a.found for a in other] == [[a.chosen] for a in answers[:5]]
        # Past capacity (50 in all), only the overflow is refused, with the reason.
        overflow = await place_all(activities, task_queue, [f"o-{i}" for i in range(12)])
        assert sum(1 for a in overflow if a.chosen is not None) == 10
        refused = [a for a in overflow if a.chosen is None]
        assert len(refused) == 2
        assert all(a.why.startswith("no host has free capacity") for a in refused), refused


@workflow.defn(name=HOST_REGISTRY_WORKFLOW, sandboxed=False)
class RegistryOfAnEarlierBuild:
    """A registry as a build before `place_batch` runs it: `place` only."""

    def __init__(self) -> None:
        self._placed = 0

    @workflow.run
    async def run(self, state: RegistryState) -> None:
        await workflow.wait_condition(lambda: False)

    @workflow.update(name=PLACE_UPDATE)
    def place(self, request: PlaceRequest) -> PlaceAnswer:
        self._placed += 1
        return PlaceAnswer(chosen=HostRef(host_id="old", name="old", queue="old"), live_hosts=1)


async def test_a_registry_without_batches_still_answers_each_placement(client: Client, task_queue: str) -> None:
    async with Worker(client, task_queue=coordination_queue(task_queue), workflows=[RegistryOfAnEarlierBuild]):
        activities = PlacementActivities(client)
        answers = await place_all(activities, task_queue, [f"g-{i}" for i in range(6)])
        assert [a.chosen.name if a.chosen else None for a in answers] == ["old"] * 6
        # The batch was refused (no such update in that build), then one update per placement.
        assert activities.updates_sent == 1 + 6
        assert await updates_in_history(client, task_queue) == 6
