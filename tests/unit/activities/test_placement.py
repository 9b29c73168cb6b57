"""The placement activities against the real dev server and the real `RuntimeHost` workflows: a burst
of placements fills hosts to their capacity and never past it; a retried placement
gets its own host again; a game's engine is looked for on the hosts only when its record was lost.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections import Counter

from temporalio.client import Client
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Worker

from activities.fleet import Fleet, send_report
from activities.placement import PlacementActivities
from contract.hosts import (
    DRAIN_UPDATE,
    HostCommand,
    HostRef,
    HostReport,
    HostView,
    PlaceAnswer,
    PlaceRequest,
    host_queue,
)
from contract.lock import coordination_queue
from tests.support.stand_ins import until_listed
from workflows.host import RuntimeHost

GAMES = 40


def host(task_queue: str, name: str) -> HostRef:
    host_id = f"{name}-{uuid.uuid4().hex[:8]}"
    return HostRef(host_id=host_id, name=name, queue=host_queue(task_queue, host_id))


async def report(client: Client, task_queue: str, ref: HostRef, capacity: int, games: list[str] | None = None) -> None:
    await send_report(
        client,
        task_queue,
        HostReport(host=ref, worker=f"worker-{ref.name}", capacity=capacity, games=games or [], report_every_s=60),
    )


async def place_all(
    activities: PlacementActivities, task_queue: str, games: list[str], *, job: str = "start", lost: bool = False
) -> list[PlaceAnswer]:
    """Every placement at once, each in its own activity run, as many jobs' local activities ask them."""
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, task_queue=task_queue)

    async def one(game_id: str) -> PlaceAnswer:
        request = PlaceRequest(game_id=game_id, create=True, job=f"{job}-{game_id}", lost=lost)
        answer: PlaceAnswer = await env.run(activities.place_game_engine, request)
        return answer

    return list(await asyncio.gather(*(one(g) for g in games)))


async def test_a_burst_fills_hosts_to_capacity_never_past_it(client: Client, task_queue: str) -> None:
    async with Worker(client, task_queue=coordination_queue(task_queue), workflows=[RuntimeHost]):
        big, small = host(task_queue, "h-big"), host(task_queue, "h-small")
        await report(client, task_queue, big, capacity=30)
        await report(client, task_queue, small, capacity=20)
        await until_listed(client, task_queue, [big.host_id, small.host_id])
        activities = PlacementActivities(client)
        games = [f"g-{i}" for i in range(GAMES)]

        answers = await place_all(activities, task_queue, games)

        # Every game got a host, both hosts took some, neither past its capacity (each reservation is
        # checked by the host's own update against what it holds).
        assert all(a.chosen is not None and not a.found for a in answers), answers
        by_host = Counter(a.chosen.name for a in answers if a.chosen is not None)
        assert sum(by_host.values()) == GAMES
        assert 0 < by_host["h-small"] <= 20 and 0 < by_host["h-big"] <= 30, by_host

        # Asked again by the same job (a retried activity), a game gets the same host: its own
        # reservation; nothing new is reserved.
        again = await place_all(activities, task_queue, games[:5])
        assert [a.chosen for a in again] == [a.chosen for a in answers[:5]]
        views = {v.name: v for v in await Fleet(client, task_queue).views()}
        assert views["h-big"].reserved + views["h-small"].reserved == GAMES
        # Past capacity (50 in all), only the overflow is refused, with the reason naming the hosts.
        overflow = await place_all(activities, task_queue, [f"o-{i}" for i in range(12)])
        assert sum(1 for a in overflow if a.chosen is not None) == 10
        refused = [a for a in overflow if a.chosen is None]
        assert len(refused) == 2
        assert all(a.why == "no host has free capacity (h-big 30/30, h-small 20/20)" for a in refused), refused


async def test_lost_record_is_found_on_its_host(client: Client, task_queue: str) -> None:
    """A lost record is found on its host and a new game is only placed."""
    async with Worker(client, task_queue=coordination_queue(task_queue), workflows=[RuntimeHost]):
        hosts = [host(task_queue, f"h-{i}") for i in range(6)]
        for i, ref in enumerate(hosts):
            await report(client, task_queue, ref, capacity=10, games=["kept"] if i == 4 else [])
        await until_listed(client, task_queue, [h.host_id for h in hosts])
        activities = PlacementActivities(client)

        # The game's record was lost: every host is asked, and the engine is found where it runs.
        [found] = await place_all(activities, task_queue, ["kept"], lost=True)
        assert found.found == [hosts[4]] and found.chosen is None
        env = ActivityEnvironment()
        env.info = dataclasses.replace(env.info, task_queue=task_queue)
        stop = await env.run(activities.place_game_engine, PlaceRequest(game_id="kept", create=False, lost=True))
        assert stop.found == [hosts[4]]
        # A game the fleet never saw: a stop asks no host (nothing to stop), a start only chooses one.
        nothing = await env.run(activities.place_game_engine, PlaceRequest(game_id="new", create=False))
        assert nothing == PlaceAnswer()
        [new] = await place_all(activities, task_queue, ["new"])
        assert (new.chosen is not None and new.chosen != hosts[4]) or new.found == [], new


async def test_draining_and_forgotten_hosts_get_no_engine(client: Client, task_queue: str) -> None:
    async with Worker(client, task_queue=coordination_queue(task_queue), workflows=[RuntimeHost]):
        open_host, drained, gone = host(task_queue, "h-open"), host(task_queue, "h-drained"), host(task_queue, "h-gone")
        for ref in (open_host, drained, gone):
            await report(client, task_queue, ref, capacity=50)
        await until_listed(client, task_queue, [open_host.host_id, drained.host_id, gone.host_id])
        fleet = Fleet(client, task_queue)
        await fleet.command(DRAIN_UPDATE, "h-drained")
        forgotten = await fleet.command("forget", gone.host_id)
        assert isinstance(forgotten, HostView) and forgotten.name == "h-gone"

        answers = await place_all(PlacementActivities(client), task_queue, [f"g-{i}" for i in range(20)])
        assert {a.chosen.name for a in answers if a.chosen is not None} == {"h-open"}
        assert all(a.chosen is not None for a in answers)
        drained_view = await fleet.view(drained.host_id)
        assert drained_view is not None and drained_view.draining and drained_view.reserved == 0
        assert await fleet.view(gone.host_id) is None
        _ = HostCommand  # (the update's argument type)
