"""A large fleet is sampled through windows: a worker's placements draw from about WINDOW_HOSTS hosts
whose ids lie on one random arc, a new arc at each renewal, so a worker's listing costs the same at
1,000 hosts as at 100 (before, every worker listed the whole fleet each minute: bench/fleet_scale.py).
Against the real dev server's visibility, which answers the arcs' id ranges.
"""

from __future__ import annotations

import asyncio
import random
import uuid

from temporalio.client import Client

from activities.fleet import WINDOW_FEWEST, WINDOW_HOSTS, Fleet, host_start_options
from contract.hosts import HOST_WORKFLOW, HostRef, HostState, host_queue
from tests.support.stand_ins import until_listed

HOSTS = 300
WINDOWS = 60  # each host outside all of them: 300 x (1 - 64/300)^60, about 2e-4


async def start_hosts(client: Client, task_queue: str, host_ids: list[str]) -> None:
    """Each host's workflow as its first report starts it (no worker runs them: only listed here)."""
    gate = asyncio.Semaphore(32)

    async def start(host_id: str) -> None:
        ref = HostRef(host_id=host_id, name=f"n-{host_id[:6]}", queue=host_queue(task_queue, host_id))
        async with gate:
            options = host_start_options(task_queue, ref)
            await client.start_workflow(HOST_WORKFLOW, HostState(task_queue=task_queue), **options)

    await asyncio.gather(*(start(h) for h in host_ids))


def runs(members: set[str], ordered: list[str]) -> int:
    """How many unbroken runs of `ordered` (taken as a circle) the members make."""
    return sum(1 for i, h in enumerate(ordered) if h in members and ordered[i - 1] not in members)


async def test_a_large_fleet_is_sampled_through_arcs_that_cover_it(client: Client) -> None:
    task_queue = f"window-{uuid.uuid4().hex[:8]}"
    draw = random.Random(20)
    host_ids = sorted(str(uuid.UUID(int=draw.getrandbits(128), version=4)) for _ in range(HOSTS))
    await start_hosts(client, task_queue, host_ids)
    await until_listed(client, task_queue, host_ids)
    fleet = Fleet(client, task_queue, rng=random.Random(7))

    # The first sample counts the fleet (one number) and is already a window.
    first = await fleet.sample()
    assert len(first) < HOSTS
    seen: set[str] = set()
    sizes = []
    for n in range(WINDOWS):
        window = {h.host_id for h in (first if n == 0 else await fleet.sample(fresh=True))}
        assert runs(window, host_ids) == 1, "a window's hosts are one arc of the ids"
        sizes.append(len(window))
        seen |= window
    assert all(WINDOW_FEWEST <= n < HOSTS for n in sizes), sizes
    assert WINDOW_HOSTS * 0.7 < sum(sizes) / len(sizes) < WINDOW_HOSTS * 1.3, sizes
    assert seen == set(host_ids), f"{len(set(host_ids) - seen)} hosts never sampled"

    # A window with no room is replaced in the background; the last one is served meanwhile.
    last = await fleet.sample()
    fleet.resample()
    assert await fleet.sample() == last
    assert fleet._sample.listing is not None
    renewed = (await fleet._sample.listing).hosts
    assert renewed != last and await fleet.sample() == renewed


async def test_a_window_that_finds_too_few_hosts_gives_way_to_the_whole_fleet(client: Client) -> None:
    """A fleet that shrank (or ids that are not uuids) is listed whole, and counted again."""
    task_queue = f"window-{uuid.uuid4().hex[:8]}"
    host_ids = sorted(str(uuid.uuid4()) for _ in range(2 * WINDOW_HOSTS + 2))
    await start_hosts(client, task_queue, host_ids)
    await until_listed(client, task_queue, host_ids)
    fleet = Fleet(client, task_queue)
    fleet._size = 100_000.0  # counted when the fleet was much larger: its arc now holds about one host
    assert sorted(h.host_id for h in await fleet.sample()) == host_ids
    assert fleet._size == len(host_ids)
