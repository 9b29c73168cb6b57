"""The process's Workers, one per task queue: the shared queue (`build_worker`), the coordination queue
(`build_coordination_worker`) and the host's own queue (`build_host_worker`).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.common import VersioningBehavior, WorkerDeploymentVersion
from temporalio.worker import Worker, WorkerDeploymentConfig

from activities.docker import EngineActivities
from activities.hosts import HostFacts
from activities.lock import FollowUpSignals, LockActivities
from activities.placement import PlacementActivities
from activities.publish import ResultPublisher
from activities.reconcile import EngineEventPublisher, ReconcileDockerActivities
from activities.redis_topology import RedisClient
from contract.lock import coordination_queue
from contract.settings import Settings, host_docker_concurrency_for
from rtjobs.ops.metrics import ActivityMetrics
from rtjobs.sandbox import workflow_runner
from workflows import ALL_WORKFLOWS, RuntimeGameLock, RuntimeHost

HEARTBEAT_THROTTLE = timedelta(seconds=1)
# How long the coordination queue's workflows wait for the worker that cached them (the SDK's default: 10 s).
STICKY_TIMEOUT = timedelta(seconds=3)


def activity_methods(*holders: object) -> list[Callable[..., Any]]:
    """Every `@activity.defn` method of the holders, so a new activity cannot be forgotten here."""
    found: list[Callable[..., Any]] = []
    for holder in holders:
        for name in dir(type(holder)):
            method = getattr(holder, name)
            if callable(method) and hasattr(method, "__temporal_activity_definition"):
                found.append(method)
    return found


def deployment(
    settings: Settings, behavior: VersioningBehavior = VersioningBehavior.UNSPECIFIED
) -> WorkerDeploymentConfig | None:
    """Every Worker of the process registers as the one deployment version (all its task queues move
    together), or none does. The behaviour is the Worker's default, not the workflows' own
    (`@workflow.defn(versioning_behavior=...)`): the server refuses a workflow task that declares one from
    an unversioned worker (SDK 1.35), and the worker must run unversioned without the variables.
    """
    if settings.deployment_name is None or settings.worker_build_id is None:
        return None
    version = WorkerDeploymentVersion(deployment_name=settings.deployment_name, build_id=settings.worker_build_id)
    return WorkerDeploymentConfig(version=version, use_worker_versioning=True, default_versioning_behavior=behavior)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while a Worker validates its workflows in the sandbox: on Python 3.10
    and 3.11 a collector's finalizer that imports inside the sandbox's (non-re-entrant) module lock fails
    the validation with `KeyError: <thread id>` (CPython issue 91351, temporalio/sdk-python#585); seen
    once in a CI run as "Failed validating workflow RuntimeHost".
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def build_worker(client: Client, settings: Settings, redis: RedisClient) -> Worker:
    """The shared queue's worker: every workflow, the publish, the lock and placement activities (the
    Docker activities run on each host's own queue: `build_host_worker`).
    """
    publisher = ResultPublisher(
        redis,
        stream=settings.results_stream,
        dedup_ttl_s=settings.publish_dedup_ttl_s,
        maxlen=settings.results_maxlen,
        min_replicas=settings.redis_min_replicas,
        wait_timeout_ms=settings.redis_wait_timeout_ms,
        signals=FollowUpSignals(client).send,
    )
    with collector_paused():
        return Worker(
            client,
            task_queue=settings.task_queue,
            workflows=ALL_WORKFLOWS,
            workflow_runner=workflow_runner(),
            activities=activity_methods(
                publisher,
                LockActivities(client, order_settle_s=settings.order_settle_s, host_wait_s=settings.host_wait_s),
                PlacementActivities(client),
                EngineEventPublisher(redis, settings),
            ),
            graceful_shutdown_timeout=timedelta(seconds=settings.graceful_shutdown_timeout_s),
            # Heartbeats are otherwise throttled to 0.8 x the heartbeat timeout (16 s): a cancelled job
            # would learn of it that late, and its start could finish instead of being cancelled.
            max_cached_workflows=settings.max_cached_workflows,
            max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
            default_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
            interceptors=[ActivityMetrics(host=settings.host_name or "")],
            # The jobs finish on the build that started them: a new build never replays a job begun by the old
            # one.
            deployment_config=deployment(settings, VersioningBehavior.PINNED),
        )


def build_coordination_worker(client: Client, settings: Settings) -> Worker:
    """The coordination queue's worker: the per-game and per-host workflows, with a workflow
    task slot pool of their own (`contract.lock.coordination_queue` says why), and the lock's holder check.
    """
    with collector_paused():
        return Worker(
            client,
            task_queue=coordination_queue(settings.task_queue),
            workflows=[RuntimeGameLock, RuntimeHost],
            workflow_runner=workflow_runner(),
            activities=[LockActivities(client, order_settle_s=settings.order_settle_s).game_lock_holder_running],
            graceful_shutdown_timeout=timedelta(seconds=settings.graceful_shutdown_timeout_s),
            max_cached_workflows=settings.max_cached_workflows,
            # A worker killed while it held a game's or host's workflow in its cache: that workflow's next task
            # (and every query, such as a placement's probe) waits this long before another worker takes it.
            sticky_queue_schedule_to_start_timeout=STICKY_TIMEOUT,
            # Long-lived: they move to the current build at their next workflow task, or a rollout would never
            # drain; a change to them therefore still needs `workflow.patched` (README: Changing workflow code).
            deployment_config=deployment(settings, VersioningBehavior.AUTO_UPGRADE),
        )


def host_docker_concurrency(settings: Settings, facts: HostFacts) -> int:
    """How many Docker steps this worker runs at once: RTJOBS_HOST_DOCKER_CONCURRENCY, else derived from
    the host's capacity (`contract.settings.host_docker_concurrency_for`).
    """
    if settings.host_docker_concurrency is not None:
        return settings.host_docker_concurrency
    return host_docker_concurrency_for(facts.capacity)


def build_host_worker(client: Client, settings: Settings, engine: EngineActivities, facts: HostFacts) -> Worker:
    """The host queue's worker: the Docker activities of this worker's engine, and nothing else."""
    return Worker(
        client,
        task_queue=facts.ref.queue,
        activities=activity_methods(engine, ReconcileDockerActivities(engine.gateway, client)),
        max_concurrent_activities=host_docker_concurrency(settings, facts),
        graceful_shutdown_timeout=timedelta(seconds=settings.graceful_shutdown_timeout_s),
        max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
        default_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
        interceptors=[ActivityMetrics(host=facts.ref.name)],
        deployment_config=deployment(settings),
    )
