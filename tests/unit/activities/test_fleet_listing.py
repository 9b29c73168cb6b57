"""The fleet's listing of its hosts is shared by the placements in flight: a stale list is listed again
once for all of them, not once each (at 100 placements in flight that was 73 listings of the whole
fleet in 16 s, up to 15 s each, and the placements' p99 went from 0.2 to 7.8 s: bench/fleet_scale.py),
and in the background: meanwhile they take the last list (at 1,000 hosts a listing takes about a second,
and the placements waiting for it made the p99 of every minute).
"""

from __future__ import annotations

import asyncio
from typing import cast

from temporalio.client import Client

from activities.fleet import HOSTS_FRESH_S, Fleet
from contract.hosts import HostRef, host_queue

QUEUE = "listing-test"


class CountedFleet(Fleet):
    """A fleet whose server listing is a stand-in: counts its listings, each held until `release`."""

    def __init__(self) -> None:
        super().__init__(cast(Client, None), QUEUE)
        self.listings = 0
        self.release = asyncio.Event()
        self.fail: Exception | None = None
        self.counted = asyncio.Condition()

    async def _list(self, arc: str = "") -> list[HostRef]:
        self.listings += 1
        number = self.listings
        async with self.counted:
            self.counted.notify_all()
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        host_id = f"h{number}"
        return [HostRef(host_id=host_id, name=host_id, queue=host_queue(QUEUE, host_id))]


async def until_listing(fleet: CountedFleet, count: int) -> None:
    async with fleet.counted:
        await fleet.counted.wait_for(lambda: fleet.listings >= count)


async def test_placements_that_find_the_list_stale_share_one_listing() -> None:
    fleet = CountedFleet()
    callers = [asyncio.create_task(fleet.hosts()) for _ in range(50)]
    await until_listing(fleet, 1)
    fleet.release.set()
    answers = await asyncio.gather(*callers)
    assert fleet.listings == 1
    assert {tuple(h.host_id for h in a) for a in answers} == {("h1",)}
    assert [h.host_id for h in await fleet.hosts()] == ["h1"]  # fresh enough: no listing
    assert fleet.listings == 1

    assert fleet._all.listed is not None
    fleet._all.listed.at -= HOSTS_FRESH_S + 1  # listed longer ago than the list is trusted
    fleet.release.clear()
    # The last list at once, while one listing runs in the background (none waits for it).
    answers = await asyncio.gather(*(fleet.hosts() for _ in range(50)))
    assert {tuple(h.host_id for h in a) for a in answers} == {("h1",)}
    await until_listing(fleet, 2)
    fleet.release.set()
    assert fleet._all.listing is not None
    await fleet._all.listing
    assert [h.host_id for h in await fleet.hosts()] == ["h2"]
    assert fleet.listings == 2


async def test_a_fresh_caller_lists_anew_and_the_stale_callers_join_it() -> None:
    fleet = CountedFleet()
    fleet.release.set()
    await fleet.hosts()
    assert [h.host_id for h in await fleet.hosts(fresh=True)] == ["h2"]
    fleet.release.clear()
    fresh = [asyncio.create_task(fleet.hosts(fresh=True)) for _ in range(2)]
    await until_listing(fleet, 4)
    fleet._all.listed = None  # stale: joins the fresh listing in flight
    stale = asyncio.create_task(fleet.hosts())
    await asyncio.sleep(0)
    fleet.release.set()
    assert [h.host_id for h in await stale] == ["h4"]
    await asyncio.gather(*fresh)
    assert fleet.listings == 4


async def test_cancelled_caller_leaves_the_listing() -> None:
    """A cancelled caller leaves the listing to the others and a failure reaches each."""
    fleet = CountedFleet()
    first = asyncio.create_task(fleet.hosts())
    second = asyncio.create_task(fleet.hosts())
    await until_listing(fleet, 1)
    first.cancel()
    await asyncio.sleep(0)
    fleet.release.set()
    assert [h.host_id for h in await second] == ["h1"]
    assert first.cancelled()

    fleet.release.clear()
    fleet.fail = RuntimeError("visibility unavailable")
    fleet._all.listed = None
    callers = [asyncio.create_task(fleet.hosts()), asyncio.create_task(fleet.hosts())]
    await until_listing(fleet, 2)
    fleet.release.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert [str(r) for r in results] == ["visibility unavailable"] * 2
    fleet.fail = None
    assert [h.host_id for h in await fleet.hosts(fresh=True)] == ["h3"]  # a failed listing is not kept
