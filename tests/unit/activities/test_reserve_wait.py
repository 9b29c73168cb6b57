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
from activities.placement import PlacementActivities
from contract.hosts import HostRef, ReserveAnswer, ReserveRequest, host_queue

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
