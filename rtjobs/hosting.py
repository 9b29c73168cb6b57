"""Serving a host: the Docker engine's identity (its host in the fleet), a first report to the host's
workflow, the host queue's Worker beside the coordination and shared queues' Workers, the fleet warnings an
operator needs; while Docker does not answer, the host queue is served once it does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from temporalio.client import Client
from temporalio.worker import Worker

from activities.docker import EngineActivities
from activities.fleet import Fleet
from activities.hosts import HOST_VOLUME, HostFacts, HostReporter, adopt_from_fleet, identify_host
from activities.reconcile import ensure_reconcile_schedule
from activities.redis_topology import RedisClient
from contract.settings import Settings
from rtjobs.startup import DOCKER_CHECK_TIMEOUT_S, short_error
from rtjobs.workers import build_coordination_worker, build_host_worker, build_worker, host_docker_concurrency

log = logging.getLogger("rtjobs.worker")

# While the Docker engine does not answer, the worker serves the shared queue and asks again this often
# who the engine is; the host's own queue is polled once it answers.
IDENTIFY_RETRY_S = 5.0


@contextlib.asynccontextmanager
async def serving(
    client: Client, settings: Settings, redis: RedisClient, engine: EngineActivities
) -> AsyncIterator[list[Worker]]:
    """Both workers polling until the block ends (then shut down gracefully, host queue last); yields the
    Workers started so far (the host queue's joins once Docker answers), which /healthz watches.
    """
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
                short_error(err),
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
        log.warning("first report of host %s to its workflow failed: %s", facts.ref.name, short_error(err))
    workers.append(await stack.enter_async_context(build_host_worker(client, settings, engine, facts)))
    await stack.enter_async_context(reporter.running())
    try:
        await ensure_reconcile_schedule(client, settings, facts.ref)
    except Exception as err:  # the jobs do not need it: the worker serves on, and says so
        log.warning("reconcile schedule of host %s not set: %s", facts.ref.name, short_error(err))
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
    two engines (a clone with its Docker state: its marker volume was copied).
    """
    hint = facts.clone_hint()
    if hint:
        log.warning("%s", hint)
    try:
        async with asyncio.timeout(10):
            views = await Fleet(client, settings.task_queue).views()
    except Exception as err:
        log.warning("could not read the fleet's hosts: %s", short_error(err))
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
