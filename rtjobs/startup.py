"""The worker's clients and start-up checks: Temporal, Redis (reachable, WAIT allowed, no eviction), Docker,
the search attributes, and the metrics, tracing and health endpoints. Each failure is a `StartupError`
whose message is the one line the operator sees; the worker then exits 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.client import Plugin as ClientPlugin
from temporalio.envconfig import ClientConnectConfig
from temporalio.runtime import Runtime, TelemetryConfig
from temporalio.service import RPCError

from activities.docker import EngineActivities
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
from contract.models import one_line
from contract.settings import Settings, redact_url
from rtjobs.client import connect, describe
from rtjobs.ops import tracing
from rtjobs.ops.health import Health, serving_health
from rtjobs.ops.logs import core_logging
from rtjobs.ops.metrics import prometheus_runtime
from workflows.search import SEARCH_ATTRIBUTE_KEYS

log = logging.getLogger("rtjobs.worker")

DOCKER_CHECK_TIMEOUT_S = 5.0
REDIS_CHECK_TIMEOUT_S = 5.0


class StartupError(Exception):
    """A start-up check failed; the message is the one line the operator sees."""


async def open_dev(
    settings: Settings, stack: contextlib.AsyncExitStack, runtime: Runtime | None, plugins: Sequence[ClientPlugin]
) -> tuple[Client, Settings]:
    """`--dev`: the embedded Temporal dev server, then Redis, Docker and an engine image where none is
    configured or answering (`rtjobs.dev`, imported only here: the production image leaves it out).
    """
    try:
        from rtjobs.dev import server
        from rtjobs.dev import stack as dev_stack
    except ModuleNotFoundError as err:
        if not (err.name or "").startswith("rtjobs.dev"):
            raise
        raise StartupError(
            "--dev needs the development stack (rtjobs.dev), which this installation leaves out (the production "
            "image): run the worker without --dev, with TEMPORAL_ADDRESS, REDIS_URL and DOCKER_HOST"
        ) from None
    client = await server.start_dev_server(settings, stack, runtime, plugins)
    try:
        return client, await dev_stack.start(settings, stack)
    except dev_stack.DevStackError as err:
        raise StartupError(str(err)) from None


async def connect_temporal(
    config: ClientConnectConfig, runtime: Runtime | None, plugins: Sequence[ClientPlugin]
) -> Client:
    try:
        return await connect(config, runtime=runtime, plugins=plugins)
    except Exception as err:
        raise StartupError(f"Temporal unreachable at {describe(config)}: {short_error(err)}") from None


def open_runtime(settings: Settings, *, dev: bool) -> Runtime:
    """The SDK runtime: the SDK Core's own log lines through the worker's log (its format), and /metrics at
    RTJOBS_METRICS_ADDRESS when on (under --dev by default).
    """
    address = settings.metrics_bind(dev=dev)
    if address is None:
        return Runtime(telemetry=TelemetryConfig(logging=core_logging()))
    try:
        runtime = prometheus_runtime(address, core_logs=core_logging())
    except Exception as err:
        raise StartupError(f"metrics endpoint could not listen on {address} (RTJOBS_METRICS_ADDRESS): {err}") from None
    log.info("metrics on http://%s/metrics", address)
    return runtime


def open_tracing(stack: contextlib.AsyncExitStack) -> list[ClientPlugin]:
    """The tracing plugin when the OTEL_* variables ask for it (rtjobs.ops.tracing); the client hands it to every
    Worker. Spans still buffered are flushed at exit.
    """
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
    (`check_eviction`). Each failure is one line, no password.
    """
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
        raise StartupError(f"Redis check failed at {where}: {scrub(short_error(err, url), url)}") from None
    if settings.redis_min_replicas > 0:
        try:
            async with asyncio.timeout(REDIS_CHECK_TIMEOUT_S):
                await check_wait_allowed(client, settings.results_stream)
        except Exception as err:
            raise StartupError(
                f"Redis at {where} refused WAIT, which RTJOBS_REDIS_MIN_REPLICAS={settings.redis_min_replicas} "
                f"needs after every publish (grant +wait: docs/security.md): {scrub(short_error(err, url), url)}"
            ) from None
    await check_eviction(client, settings, where)
    return client


async def check_eviction(client: RedisClient, settings: Settings, where: str) -> None:
    """Refuse to start when a primary may evict what the exactly-once publish rests on: with an evicted
    idempotency key a retried publish appends the result twice; with an evicted stream results are lost.
    Safe: `maxmemory 0` (no limit: Redis never evicts) or `maxmemory-policy noeviction` (writes fail when
    full and are retried), on every primary (`memory_policies`). A policy that cannot be read refuses
    too, unless RTJOBS_REDIS_ASSUME_NOEVICTION: a silent double result is what this check exists to prevent.
    """
    url = settings.redis_url
    try:
        async with asyncio.timeout(REDIS_CHECK_TIMEOUT_S):
            policies, skipped = await memory_policies(client, settings.results_stream)
    except PolicyUnreadable as err:
        why = scrub(short_error(err, url), url)
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
        raise StartupError(f"Redis eviction check failed at {where}: {scrub(short_error(err, url), url)}") from None
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
            short_error(err),
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


def short_error(err: BaseException, *secrets_in: str) -> str:
    """One line of an exception, with any secret that might be quoted in it masked."""
    text = one_line(str(err) or type(err).__name__, 300)
    for source in secrets_in:
        text = text.replace(source, redact_url(source))
    return text
