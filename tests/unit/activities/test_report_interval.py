"""A worker's report interval against the real dev server and `RuntimeHost` workflows: it stays at
RTJOBS_HOST_REPORT_EVERY_S in a small fleet and grows past RTJOBS_FLEET_REPORTS_PER_S, each report naming
it, so a host that reports less often in a large fleet is still live between its reports.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, cast

from temporalio.client import Client
from temporalio.worker import Worker

from activities.docker_gateway import DockerGateway
from activities.fleet import Fleet, send_report
from activities.hosts import HostFacts, HostReporter, report_interval
from contract.hosts import HostRef, HostReport, host_queue
from contract.lock import coordination_queue
from contract.settings import Settings
from tests.support.stand_ins import until_listed
from workflows.host import RuntimeHost


class NoContainers:
    """The Docker engine as the reporter asks it (`gateway.call(..., client.containers.list)`): empty."""

    def __init__(self) -> None:
        self.client = self
        self.containers = self

    async def call(self, what: str, fn: Any, code: Any, **kwargs: Any) -> Any:
        return await fn()

    async def list(self, **kwargs: Any) -> list[Any]:
        return []


def test_the_interval_grows_once_the_fleet_passes_the_report_rate() -> None:
    settings = Settings(host_report_every_s=10, fleet_reports_per_s=20)
    assert [report_interval(n, settings) for n in (1, 10, 200, 1000, 5000)] == [10, 10, 10, 50, 250]


class CountedFleet:
    """The fleet as a reporter counts it: `hosts` hosts, one visibility call each time."""

    def __init__(self, hosts: int) -> None:
        self.hosts = hosts

    async def count(self) -> int:
        return self.hosts


async def test_workers_whose_interval_grows_together_spread_their_next_reports() -> None:
    """A fleet's workers started together count the fleet together: each one's report after the change
    comes at its own random point of the new interval (they reported in step before: 1,000 hosts'
    reports within 12 s of every 50 s), and the one after that a whole interval later.
    """
    settings = Settings(host_report_every_s=10, fleet_reports_per_s=20)
    facts = HostFacts(ref("spread", "h"), 10, "test", "20.10.24", "bridge/local")
    pauses = []
    for _ in range(200):
        reporter = HostReporter(cast(Client, None), cast(DockerGateway, NoContainers()), settings, facts)
        reporter._fleet = cast(Fleet, CountedFleet(1000))
        assert reporter.pause_s() == 10  # before any count: the setting's interval
        await reporter._next_interval()
        assert reporter.every_s == 50
        pauses.append(reporter.pause_s())
        assert reporter.pause_s() == 50  # once only
        await reporter._next_interval()  # the next report, not counted: no new spread
        assert reporter.pause_s() == 50
    assert all(0 <= p <= 50 for p in pauses), pauses
    assert max(pauses) - min(pauses) > 40, "the workers' next reports stayed in step"


def ref(task_queue: str, name: str) -> HostRef:
    host_id = f"{name}-{uuid.uuid4().hex[:8]}"
    return HostRef(host_id=host_id, name=name, queue=host_queue(task_queue, host_id))


async def test_a_host_reporting_less_often_in_a_large_fleet_stays_live(client: Client, task_queue: str) -> None:
    """Four hosts at one report a second fleet-wide: each worker reports every 4 s, not every 0.5 s, and
    its host is live 2.5 s after its report (past 3 intervals of 0.5 s, within 3 of 4 s).
    """
    settings = Settings(task_queue=task_queue, host_report_every_s=0.5, fleet_reports_per_s=1.0)
    others = [ref(task_queue, f"other-{i}") for i in range(3)]
    mine = ref(task_queue, "mine")
    async with Worker(client, task_queue=coordination_queue(task_queue), workflows=[RuntimeHost]):
        for other in others:
            await send_report(client, task_queue, HostReport(host=other, worker="w", capacity=1, report_every_s=60))
        facts = HostFacts(mine, 10, "test", "20.10.24", "bridge/local")
        reporter = HostReporter(client, cast(DockerGateway, NoContainers()), settings, facts)
        await reporter.report()
        await until_listed(client, task_queue, [h.host_id for h in [*others, mine]])
        fleet = Fleet(client, task_queue)
        first = await fleet.view(mine.host_id)
        assert first is not None
        async with reporter.running():
            # Its first periodic report, 0.5 s on, counted the fleet and named the longer interval; the next
            # comes at a random point of it (within 4 s), and from then on every 4 s.
            deadline = asyncio.get_running_loop().time() + 30
            seen = [first.last_seen]
            while True:
                view = await fleet.view(mine.host_id)
                assert view is not None
                if view.last_seen != seen[-1]:
                    seen.append(view.last_seen)
                if reporter.every_s == 4.0 and len(seen) >= 3:
                    break
                assert asyncio.get_running_loop().time() < deadline, f"the interval stayed {reporter.every_s}"
                await asyncio.sleep(0.05)
            reported = view.last_seen
            await asyncio.sleep(2.5)
            view = await fleet.view(mine.host_id)
        assert view is not None
        assert view.live, "a host that said it reports every 4 s was judged by 0.5 s"
        assert view.last_seen == reported, "the worker reported again before its 4 s were up"
