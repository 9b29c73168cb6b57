"""Scenario 3: a worker process SIGKILLed mid-job; a second worker must finish every job, with one
entry each and no orphan container.

(a) The kill lands in the readiness wait: the containers exist, the engines are not healthy yet.
(b) The kill lands right after the publish wrote: a proxy withholds Redis's replies, so the entries
    are on the stream but the dying worker never learned it.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from contract.engine import ENSURE_RUNNING_ACTIVITY
from tests.support.fault_proxy import FaultProxy
from tests.support.runs import (
    containers_of,
    until_entries,
    until_pending,
)
from tests.support.stack import Stack, run_jobs

GAMES = 3
READINESS_S = 20  # the never-healthy engine's failure; above late-healthy's ~8 s
UNHEALTHY = frozenset({("failure", "engine_unhealthy")})


async def until_containers_exist(docker_url: str, game_ids: list[str], timeout_s: float = 30) -> dict[str, str]:
    """Wait until each game has a container; returns each one's health status at that moment."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = await containers_of(docker_url, game_ids)
        if all(found.values()):
            return {g: str((cs[0]["State"].get("Health") or {}).get("Status")) for g, cs in found.items()}
        if time.monotonic() > deadline:
            raise AssertionError(f"containers not created within {timeout_s}s: {found}")
        await asyncio.sleep(0.05)


async def until_held(proxy: FaultProxy, count: int, timeout_s: float = 10) -> None:
    """Wait until the proxy withholds `count` write replies (the writes are on the stream by then)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proxy.held >= count or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.01)


@pytest.mark.slow
@pytest.mark.docker
async def test_worker_killed_during_readiness_wait(stack: Stack) -> None:
    # A short readiness limit, so that the never-healthy engine's failure comes within the test's time.
    first = await stack.start_worker(RTJOBS_START_TIMEOUT_S=str(READINESS_S))
    games = stack.games("", GAMES)
    # late-healthy: ~8 s from container start to healthy, so that the kill surely lands in the readiness
    # wait even when creating the four containers is slow (slow-healthy's 3 s was not always enough on a
    # loaded 2-core machine); the job created it, so a fresh success.
    runs = await stack.start(games, image=stack.images.late_healthy)
    # never-healthy: the job must fail engine_unhealthy and remove what it made.
    doomed = f"{stack.game_prefix}-never"
    runs += await stack.start([doomed], image=stack.images.never_healthy, accepted=UNHEALTHY)
    await until_pending(runs, ENSURE_RUNNING_ACTIVITY)
    health = await until_containers_exist(stack.docker_url, [*games, doomed])
    first.kill()
    killed = time.monotonic()
    assert "healthy" not in health.values(), f"the kill came too late, after readiness: {health}"

    await stack.start_worker(RTJOBS_START_TIMEOUT_S=str(READINESS_S))
    finished = (await run_jobs(stack, runs, timeout_s=120)).finished
    took = time.monotonic() - killed
    print(
        f"\n[kill in readiness wait] {len(runs)} starts, health at kill {sorted(health.values())}; all finished "
        f"{took:.1f}s after the kill; results {[(r.outcome, r.error_code, r.error_message[:200]) for r in finished]}"
    )


@pytest.mark.docker
async def test_worker_killed_after_publish_wrote(stack: Stack) -> None:
    async with FaultProxy(stack.redis.port) as proxy:
        proxy.holding = True
        first = await stack.start_worker(REDIS_URL=proxy.url)
        runs = await stack.start(stack.games("", GAMES))
        written = await until_entries(stack.redis.url, stack.stream, GAMES, 60)
        await until_held(proxy, GAMES)
        first.kill()
        killed = time.monotonic()
        assert len(written) == GAMES and proxy.held >= GAMES, (written, proxy.held)

    await stack.start_worker()
    verdict = await run_jobs(stack, runs, timeout_s=60)
    took = time.monotonic() - killed
    entries = verdict.entries
    assert entries == written, "the second worker's publish must find the first write, not append again"
    print(
        f"\n[kill after publish wrote] {GAMES} starts, {proxy.held} write replies withheld before the kill; "
        f"all finished {took:.1f}s after the kill; entries {len(entries)}"
    )
