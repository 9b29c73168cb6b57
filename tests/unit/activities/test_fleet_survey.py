"""A host whose workflow does not answer (busy past the query's deadline, its tasks failing) hides nothing else:
`rtjobs hosts` and placement's last resort see every host that answered, and placement never says "no host has
free capacity" while a host it could not ask might have some (the attempt fails, and is retried).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

import pytest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from activities.fleet import Fleet
from activities.placement import PlacementActivities
from contract.hosts import HostRef, HostView, PlaceAnswer, ReserveRequest, host_queue

QUEUE = "survey-test"


def ref(name: str) -> HostRef:
    return HostRef(host_id=name, name=name, queue=host_queue(QUEUE, name))


def view(name: str, engines: int, capacity: int) -> HostView:
    return HostView(
        host_id=name, name=name, queue=host_queue(QUEUE, name), live=True, live_workers=["w"], engines=engines,
        reserved=0, capacity=capacity, draining=False, last_seen=datetime.now(UTC),
    )  # fmt: skip


class StandInFleet(Fleet):
    """Hosts whose workflows answer with `views`, except those in `silent` (their query fails)."""

    def __init__(self, views: list[HostView], silent: list[str]) -> None:
        super().__init__(cast(Client, None), QUEUE)
        self._views = {v.host_id: v for v in views}
        self._silent = silent

    async def hosts(self, *, fresh: bool = False) -> list[HostRef]:
        return sorted([ref(n) for n in [*self._views, *self._silent]], key=lambda h: h.name)

    async def view(self, host_id: str) -> HostView | None:
        if host_id in self._silent:
            raise RPCError("query timed out", RPCStatusCode.DEADLINE_EXCEEDED, b"")
        return self._views.get(host_id)


class StandInClaims(PlacementActivities):
    """Claims every open host it is asked for (the reserve update is tested against the real workflow elsewhere)."""

    def __init__(self) -> None:
        super().__init__(cast(Client, None))

    async def _claim(self, task_queue: str, host: HostRef, ask: ReserveRequest) -> PlaceAnswer | None:
        return PlaceAnswer(chosen=host, live_hosts=1)


async def test_a_host_that_does_not_answer_is_named_and_the_rest_are_shown() -> None:
    fleet = StandInFleet([view("h1", 1, 10), view("h3", 2, 10)], silent=["h2"])
    survey = await fleet.survey()
    assert [v.name for v in survey.views] == ["h1", "h3"]
    assert list(survey.unanswered) == ["h2"] and "DEADLINE_EXCEEDED" in survey.unanswered["h2"]
    with pytest.raises(RuntimeError, match="host h2 did not answer"):
        await fleet.views()


async def test_placement_uses_a_host_that_answered_with_room() -> None:
    fleet = StandInFleet([view("h1", 10, 10), view("h3", 2, 10)], silent=["h2"])
    answer = await StandInClaims()._choose_from_all(fleet, ReserveRequest(game_id="g", job="j"))
    assert answer.chosen is not None and answer.chosen.name == "h3"


async def test_no_room_among_those_that_answered_is_not_called_no_room() -> None:
    fleet = StandInFleet([view("h1", 10, 10)], silent=["h2"])
    with pytest.raises(RuntimeError, match=r"no host has free capacity \(h1 10/10\); 1 did not answer: h2"):
        await StandInClaims()._choose_from_all(fleet, ReserveRequest(game_id="g", job="j"))
    everyone_silent = StandInFleet([], silent=["h1", "h2"])
    with pytest.raises(RuntimeError, match="no host answered; 2 did not answer: h1"):
        await StandInClaims()._choose_from_all(everyone_silent, ReserveRequest(game_id="g", job="j"))
    full = StandInFleet([view("h1", 10, 10)], silent=[])
    answer = await StandInClaims()._choose_from_all(full, ReserveRequest(game_id="g", job="j"))
    assert answer.why == "no host has free capacity (h1 10/10)"
