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
            # Its first periodic report, 0.5 s on, counted the fleet and named the longer interval.
            deadline = asyncio.get_running_loop().time() + 30
            while True:
                view = await fleet.view(mine.host_id)
                assert view is not None
                if reporter.every_s == 4.0 and view.last_seen != first.last_seen:
                    break
                assert asyncio.get_running_loop().time() < deadline, f"the interval stayed {reporter.every_s}"
                await asyncio.sleep(0.05)
            reported = view.last_seen
            await asyncio.sleep(2.5)
            view = await fleet.view(mine.host_id)
        assert view is not None
        assert view.live, "a host that said it reports every 4 s was judged by 0.5 s"
        assert view.last_seen == reported, "the worker reported again before its 4 s were up"
