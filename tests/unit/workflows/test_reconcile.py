"""`RuntimeReconcile` on the real dev server with stand-in activities (what each stands in for runs against real
dockerds in tests/reliability/test_reconcile.py): the run's order of steps, its summary, and the SDK metric
`rtjobs_reconcile_actions_total` as the worker's Prometheus endpoint (metrics.prometheus_runtime) serves it.
"""

from __future__ import annotations

import asyncio
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta

from temporalio import activity
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from contract.hosts import HostRef, Placement
from contract.lock import ACQUIRE_ACTIVITY, LockGrant, LockRequest
from contract.reconcile import (
    ACTIONS_METRIC,
    GAME_CONTAINERS_ACTIVITY,
    PUBLISH_ENGINE_EVENT_ACTIVITY,
    REMOVE_CONTAINER_ACTIVITY,
    SURVEY_ACTIVITY,
    ContainerSeen,
    EngineEvent,
    GameContainers,
    HostSurvey,
    ReconcileRequest,
    ReconcileSummary,
    RecordSeen,
    RemoveContainer,
    SurveyRequest,
    survey,
)
from rtjobs.ops.metrics import prometheus_runtime
from tests.support.redis_server import free_port
from workflows.reconcile import RuntimeReconcile

LONG_AGO = datetime(2026, 1, 1, tzinfo=UTC)


class StandIns:
    """A host with an exited container of game `old`, a running engine of game `new`, a record of game
    `lost` on the host whose engine is gone, and game `fine` running as its record says; every call is
    noted in order.
    """

    def __init__(self, host: HostRef) -> None:
        self.host = host
        self.calls: list[str] = []
        self.containers = {
            "old": ContainerSeen(container_id="c-old", game_id="old", state="exited", created_at=LONG_AGO),
            "new": ContainerSeen(container_id="c-new", game_id="new", state="running", created_at=LONG_AGO),
        }
        self.fine = ContainerSeen(container_id="c-fine", game_id="fine", state="running", created_at=LONG_AGO)

    @activity.defn(name=SURVEY_ACTIVITY)
    async def survey_host(self, request: SurveyRequest) -> HostSurvey:
        """The real comparison over the stand-in listings; game `fine` (running as recorded) is left out."""
        self.calls.append("list")
        records = [RecordSeen(game_id="lost", container_id="c-lost"), RecordSeen(game_id="fine", container_id="c-fine")]
        return survey([*self.containers.values(), self.fine], records, request.start)

    @activity.defn(name=ACQUIRE_ACTIVITY)
    async def acquire_game_lock(self, request: LockRequest) -> LockGrant:
        self.calls.append(f"lock {request.game_id}")
        whose = {"game_id": request.game_id, "holder": request.first_run_id or request.run_id}
        if request.game_id == "lost":
            placement = Placement(host=self.host, container_id="c-lost")
            return LockGrant(granted=True, placement_known=True, placement=placement, **whose)
        return LockGrant(granted=True, **whose)

    @activity.defn(name=GAME_CONTAINERS_ACTIVITY)
    async def game_containers(self, request: GameContainers) -> list[ContainerSeen]:
        self.calls.append(f"look {request.game_id}")
        found = self.containers.get(request.game_id)
        return [found] if found else []

    @activity.defn(name=REMOVE_CONTAINER_ACTIVITY)
    async def remove(self, request: RemoveContainer) -> bool:
        self.calls.append(f"remove {request.container_id}")
        return self.containers.pop(request.game_id, None) is not None

    @activity.defn(name=PUBLISH_ENGINE_EVENT_ACTIVITY)
    async def publish(self, event: EngineEvent) -> str:
        self.calls.append(f"event {event.event} {event.game_id}")
        return "1-0"


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text: str = response.read().decode()
    return text


async def test_one_turn_per_game_that_is_off_and_the_actions_metric(temporal_env: WorkflowEnvironment) -> None:
    port = free_port()
    runtime = prometheus_runtime(f"127.0.0.1:{port}")  # as the worker serves its metrics
    target = temporal_env.client.service_client.config.target_host
    client = await Client.connect(target, data_converter=pydantic_data_converter, runtime=runtime)
    queue = f"test-{uuid.uuid4().hex[:12]}"
    host = HostRef(host_id="HOST-1", name="h1", queue=f"{queue}@host-host-1")
    stand_ins = StandIns(host)
    shared = Worker(
        client,
        task_queue=queue,
        workflows=[RuntimeReconcile],
        activities=[stand_ins.acquire_game_lock, stand_ins.publish],
    )
    on_host = Worker(
        client,
        task_queue=host.queue,
        activities=[stand_ins.survey_host, stand_ins.game_containers, stand_ins.remove],
    )
    async with shared, on_host:
        summary = await client.execute_workflow(
            RuntimeReconcile.run,
            ReconcileRequest(host=host, grace_s=60),
            id=f"reconcile-{queue}",
            task_queue=queue,
            execution_timeout=timedelta(seconds=60),
        )
        await asyncio.sleep(1.5)  # the core's Prometheus exporter serves what was recorded
        text = await asyncio.to_thread(scrape, port)

    assert isinstance(summary, ReconcileSummary)
    assert summary.done_counts() == {"removed": 1, "adopted": 1, "cleared": 1}, summary
    assert (summary.containers, summary.records, summary.unlisted) == (3, 2, 0), summary
    # Games in order; each one's lock acquired before its containers are looked at and anything is done;
    # none for game `fine`, which the survey left out.
    assert stand_ins.calls == [
        "list",
        "lock lost",
        "look lost",
        "event engine_lost lost",
        "lock new",
        "look new",
        "lock old",
        "look old",
        "remove c-old",
    ]
    counted = {
        line.split('action="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(ACTIONS_METRIC + "_total{")
    }
    assert counted == {"removed": 1.0, "adopted": 1.0, "cleared": 1.0}, text
