"""Stand-in Docker activities and a job worker around them, for fast tests of workflow logic.

The stand-ins are registered under the real activity names; the real Docker activities are tested
against a real engine in test_docker_activities.py and end to end in test_e2e.py. Everything else
(the lock activities, the publish, Redis, the dev server) is real.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from temporalio import activity
from temporalio.client import Client
from temporalio.worker import Worker

from activities.fleet import Fleet, send_report
from activities.lock import FollowUpSignals, LockActivities
from activities.placement import PlacementActivities
from activities.publish import ResultPublisher, redis_client
from contract.engine import (
    ENSURE_REMOVED_ACTIVITY,
    ENSURE_RUNNING_ACTIVITY,
    REMOVE_FAILED_START_ACTIVITY,
    EngineOutcome,
    EnsureEngineRemoved,
    EnsureEngineRunning,
    FailedStartRemoved,
    RemoveFailedStart,
)
from contract.hosts import HOST_LIVENESS_ACTIVITY, PLACE_ACTIVITY, HostRef, HostReport, host_queue
from contract.lock import ACQUIRE_ACTIVITY, ACQUIRE_AGAIN_ACTIVITY, HOLDER_RUNNING_ACTIVITY, coordination_queue
from contract.policies import PUBLISH_ACTIVITY
from contract.settings import Settings
from rtjobs.sandbox import workflow_runner
from rtjobs.workers import collector_paused
from workflows import ALL_WORKFLOWS, RuntimeGameLock, RuntimeHost

Behaviour = Callable[[str], Any]
STAND_IN_HOST = "stand-in-host"


@dataclass
class StandInEngine:
    """Stand-in Docker activities: `behaviour(game_id)` returns an EngineOutcome or raises.

    Records each call, the Docker steps running at once per game (`max_parallel_per_game`, and
    `spans`: (game, job workflow id, begin, end) in loop time) and the clean-ups of failed starts (`removed`).
    """

    start: Behaviour = lambda game_id: EngineOutcome(container_id=f"cid-{game_id}", replay=False)
    stop: Behaviour = lambda game_id: EngineOutcome(container_id=f"cid-{game_id}", replay=False)
    delay_s: float = 0.0
    calls: list[str] = field(default_factory=list)
    running: dict[str, int] = field(default_factory=dict)
    max_parallel_per_game: int = 0
    cancelled: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    spans: list[tuple[str, str, float, float]] = field(default_factory=list)
    running_jobs: set[str] = field(default_factory=set)

    async def _do(self, kind: str, game_id: str, behaviour: Behaviour) -> EngineOutcome:
        self.calls.append(f"{kind}:{game_id}")
        self.running[game_id] = self.running.get(game_id, 0) + 1
        self.max_parallel_per_game = max(self.max_parallel_per_game, self.running[game_id])
        loop = asyncio.get_running_loop()
        began = loop.time()
        job = activity.info().workflow_id or ""
        self.running_jobs.add(job)
        try:
            if self.delay_s:
                for _ in range(int(self.delay_s / 0.05)):
                    activity.heartbeat()
                    await asyncio.sleep(0.05)
            outcome: EngineOutcome = behaviour(game_id)
            return outcome
        except asyncio.CancelledError:
            self.cancelled.append(game_id)
            raise
        finally:
            self.running[game_id] -= 1
            self.running_jobs.discard(job)
            self.spans.append((game_id, job, began, loop.time()))

    @activity.defn(name=ENSURE_RUNNING_ACTIVITY)
    async def ensure_engine_running(self, request: EnsureEngineRunning) -> EngineOutcome:
        return await self._do("start", request.game_id, self.start)

    @activity.defn(name=ENSURE_REMOVED_ACTIVITY)
    async def ensure_engine_removed(self, request: EnsureEngineRemoved) -> EngineOutcome:
        return await self._do("stop", request.game_id, self.stop)

    @activity.defn(name=REMOVE_FAILED_START_ACTIVITY)
    async def remove_failed_start(self, request: RemoveFailedStart) -> FailedStartRemoved:
        self.removed.append(request.game_id)
        return FailedStartRemoved(removed=[])


@asynccontextmanager
async def job_worker(
    client: Client,
    task_queue: str,
    redis_url: str,
    stream: str,
    engine: StandInEngine,
    *,
    replace: Mapping[str, Callable[..., Any]] | None = None,
    order_settle_s: float | None = None,
    host_wait_s: float = 60.0,
    host_concurrency: int | None = None,
) -> AsyncIterator[None]:
    """A worker with the real workflows, lock, placement activities and publish, and the stand-in
    engine on the queue of one stand-in host (reported to the real registry, as a worker reports its
    Docker engine).

    `replace`: activity name -> an activity registered instead of the real one (e.g. a failing check).
    `host_concurrency`: the stand-in host's Docker-step slots (the SDK's default when None).
    """
    redis = redis_client(redis_url)
    # Connect now: redis-py imports parts of itself on first connect, and an import while a workflow
    # activation runs in the sandbox (its import hook is process-wide) draws a warning per module.
    await redis.ping()
    publisher = ResultPublisher(redis, stream=stream, dedup_ttl_s=3600, signals=FollowUpSignals(client).send)
    settle = Settings().order_settle_s if order_settle_s is None else order_settle_s
    locks = LockActivities(client, order_settle_s=settle, host_wait_s=host_wait_s)
    placements = PlacementActivities(client)
    activities: dict[str, Callable[..., Any]] = {
        PUBLISH_ACTIVITY: publisher.publish_job_result,
        ACQUIRE_ACTIVITY: locks.acquire_game_lock,
        ACQUIRE_AGAIN_ACTIVITY: locks.acquire_game_lock_again,
        HOLDER_RUNNING_ACTIVITY: locks.game_lock_holder_running,
        PLACE_ACTIVITY: placements.place_game_engine,
        HOST_LIVENESS_ACTIVITY: placements.host_liveness,
    }
    docker: dict[str, Callable[..., Any]] = {
        ENSURE_RUNNING_ACTIVITY: engine.ensure_engine_running,
        ENSURE_REMOVED_ACTIVITY: engine.ensure_engine_removed,
        REMOVE_FAILED_START_ACTIVITY: engine.remove_failed_start,
    }
    for name, replacement in (replace or {}).items():
        (docker if name in docker else activities)[name] = replacement
    host = HostRef(host_id=STAND_IN_HOST, name=STAND_IN_HOST, queue=host_queue(task_queue, STAND_IN_HOST))
    await send_report(client, task_queue, HostReport(host=host, worker="stand-in", capacity=1000, report_every_s=3600))
    with collector_paused():  # (rtjobs.workers.collector_paused says why)
        coordination = Worker(
            client,
            task_queue=coordination_queue(task_queue),
            workflows=[RuntimeGameLock, RuntimeHost],
            activities=[activities[HOLDER_RUNNING_ACTIVITY]],
            workflow_runner=workflow_runner(),  # the workers' own sandbox (rtjobs/sandbox.py)
        )
        shared = Worker(
            client,
            task_queue=task_queue,
            workflows=ALL_WORKFLOWS,
            activities=list(activities.values()),
            workflow_runner=workflow_runner(),
        )
    try:
        async with (
            Worker(
                client,
                task_queue=host.queue,
                activities=list(docker.values()),
                max_concurrent_activities=host_concurrency,
            ),
            coordination,
            shared,
        ):
            await until_listed(client, task_queue, [STAND_IN_HOST])
            yield
    finally:
        await redis.aclose()


async def until_listed(client: Client, task_queue: str, host_ids: Iterable[str], timeout_s: float = 30.0) -> None:
    """Until the server's workflow listing shows these hosts' workflows (it trails their start a little):
    what the fleet's placement samples and `rtjobs hosts` lists.
    """
    want = set(host_ids)
    fleet = Fleet(client, task_queue)
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not want <= {h.host_id for h in await fleet.hosts(fresh=True)}:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"the fleet's listing never showed hosts {sorted(want)}")
        await asyncio.sleep(0.05)
