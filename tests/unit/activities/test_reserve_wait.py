"""A host's workflow that does not answer a reservation fails the placements waiting on it, not every later
one: the reservations of one worker to one host go one update at a time, and an update that never ended
kept the next ones queued behind it (bench/fleet_scale.py at 1,000 hosts: one placement retried for 900 s).
"""

from __future__ import annotations

import asyncio
from typing import cast

import pytest
from temporalio.client import Client

from activities import placement
from activities.fleet import Fleet
from activities.placement import PlacementActivities
from contract.hosts import HostProbe, HostRef, PlaceRequest, ReserveAnswer, ReserveRequest, host_queue

QUEUE = "reserve-wait-test"
HOST = HostRef(host_id="h1", name="h1", queue=host_queue(QUEUE, "h1"))


class FirstUpdateHangs(PlacementActivities):
    """Placement whose host's workflow never answers the first update (answers the later ones)."""

    def __init__(self) -> None:
        super().__init__(cast(Client, None))
        self.sent: list[list[str]] = []
        self.first_sent = asyncio.Event()

    async def _update(self, workflow_id: str, requests: list[ReserveRequest]) -> list[ReserveAnswer]:
        self.sent.append([r.game_id for r in requests])
        if len(self.sent) == 1:
            self.first_sent.set()
            await asyncio.Event().wait()
        return [ReserveAnswer(reserved=True) for _ in requests]


async def test_unanswered_reservation_fails_its_callers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reservation left unanswered fails its callers and the next is sent."""
    monkeypatch.setattr(placement, "RESERVE_WAIT_S", 0.05)
    placer = FirstUpdateHangs()
    first = asyncio.create_task(placer._reserve(QUEUE, HOST, ReserveRequest(game_id="g1", job="j1")))
    await placer.first_sent.wait()
    second = asyncio.create_task(placer._reserve(QUEUE, HOST, ReserveRequest(game_id="g2", job="j2")))
    with pytest.raises(RuntimeError, match=r"did not answer within 0\.05 s"):
        await first
    assert (await second).reserved
    assert placer.sent == [["g1"], ["g2"]]


class TwoHosts:
    """Two hosts as a placement's probes see them: the first looks emptier on the first attempt, the second
    on the retry (other placements filled the first meanwhile), as in a burst.
    """

    task_queue = QUEUE

    def __init__(self) -> None:
        self.probed = 0
        self._hosts = [HostRef(host_id=h, name=h, queue=host_queue(QUEUE, h)) for h in ("h1", "h2")]

    async def hosts(self, *, fresh: bool = False) -> list[HostRef]:
        return self._hosts

    async def sample(self, *, fresh: bool = False) -> list[HostRef]:
        return self._hosts

    async def probe(self, host: HostRef, request: ReserveRequest) -> HostProbe:
        self.probed += 1
        first_attempt = self.probed <= 2
        load = (0 if host.host_id == "h1" else 5) if first_attempt else (6 if host.host_id == "h1" else 1)
        return HostProbe(host=host, live=True, draining=False, load=load, capacity=12)


class FirstUpdateLate(PlacementActivities):
    """Placement whose host's workflow answers the first reservation only after its caller stopped waiting."""

    def __init__(self, fleet: TwoHosts) -> None:
        super().__init__(cast(Client, None))
        self._two_hosts = fleet
        self.reserved_on: list[str] = []
        self.answer_first = asyncio.Event()

    def fleet(self, task_queue: str) -> Fleet:
        return cast(Fleet, self._two_hosts)

    async def _update(self, workflow_id: str, requests: list[ReserveRequest]) -> list[ReserveAnswer]:
        if not self.reserved_on:
            await self.answer_first.wait()
        self.reserved_on.append(workflow_id.rsplit("-", 1)[-1])
        return [ReserveAnswer(reserved=True) for _ in requests]


async def test_retry_takes_the_late_reservation_of_its_first_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    """A placement attempt that stopped waiting for its reservation: its retry is given that host (once
    the late answer lands), and no second host is reserved, which would keep an orphaned place.
    """
    monkeypatch.setattr(placement, "RESERVE_WAIT_S", 0.1)
    placer = FirstUpdateLate(TwoHosts())
    request = PlaceRequest(game_id="g1", job="j1", create=True)
    with pytest.raises(RuntimeError, match="did not answer"):
        await placer.place(QUEUE, request)
    with pytest.raises(RuntimeError, match="still unanswered"):  # the retry waits for the first, within its attempt
        await placer.place(QUEUE, request)
    placer.answer_first.set()
    answer = await placer.place(QUEUE, request)
    assert answer.chosen is not None and answer.chosen.host_id == "h1", answer
    assert placer.reserved_on == ["h1"]
