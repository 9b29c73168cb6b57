"""Docker benchmark: a start (create+start+healthy) and a stop through the activities versus a direct
minimal aiodocker script making the same calls, same engine, same image, in one run.

Prints p50/mean of both and the ratios (targets: start ≤ 1.3, stop ≤ 1.2). The engine is DOCKER_HOST
when it answers, else a private dockerd (as the tests do; needs root) with the offline-built test
images. Usage: python bench/docker.py [--n 10] [--image healthy|ignores-term|...]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiodocker
from temporalio.testing import ActivityEnvironment

from activities.docker import EngineActivities
from activities.engine_spec import container_config
from activities.readiness import seconds_since
from contract.engine import EnsureEngineRemoved, EnsureEngineRunning
from contract.models import container_name
from contract.settings import Settings
from tests.support.docker_engine import acquire_engine, image_ref

NETWORK = "rtjobs-bench"


class Direct:
    """The baseline: the same create config, start, readiness poll, stop and remove, nothing else."""

    def __init__(self, docker: aiodocker.Docker, acts: EngineActivities) -> None:
        self.docker = docker
        self.acts = acts  # only for the identical container config and readiness settings
        self.poll_s = acts.settings.docker_poll_interval_s

    async def start(self, game_id: str, image: str) -> str:
        config = container_config(self.acts.settings, game_id, image, NETWORK)
        container = await self.docker.containers.create(config, name=container_name(game_id))
        await container.start()
        # The same readiness decision: healthy, or without a HEALTHCHECK running for the stability window.
        window = self.acts.settings.engine_min_running_s
        while True:
            state: dict[str, Any] = (await container.show())["State"]
            health = state.get("Health")
            if state.get("Running") and health and health.get("Status") == "healthy":
                return str(container.id)
            pause = self.poll_s
            if state.get("Running") and not health:
                running_for = seconds_since(state.get("StartedAt", ""))
                if running_for >= window:
                    return str(container.id)
                pause = min(pause, window - running_for)
            await asyncio.sleep(pause)

    async def stop(self, game_id: str, grace: int) -> None:
        container = self.docker.containers.container(container_name(game_id))
        await container.stop(t=grace)
        await container.delete(force=True, v=True)


def summary(values: list[float]) -> tuple[float, float]:
    return statistics.median(values), statistics.fmean(values)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--image", default="healthy", help="test image tag (rtjobs-test/engine:TAG)")
    parser.add_argument("--grace", type=int, default=10)
    args = parser.parse_args()

    engine = await acquire_engine()
    image = image_ref(args.image)
    overrides: dict[str, Any] = {
        "DOCKER_HOST": engine.url,
        "game_network": NETWORK,
        "start_timeout_s": 60.0,
        "engine_image": image,  # the image policy's default admits its repository
    }
    settings = Settings(**overrides)
    acts = EngineActivities(settings)
    docker = aiodocker.Docker(url=engine.url)
    direct = Direct(docker, acts)
    env = ActivityEnvironment()
    times: dict[str, list[float]] = {"act_start": [], "act_stop": [], "raw_start": [], "raw_stop": []}
    run = uuid.uuid4().hex[:6]
    try:
        # Warm-up (network creation, API version negotiation, first-use caches) for both sides.
        warm = f"bench-{run}-warm"
        await env.run(acts.ensure_engine_running, EnsureEngineRunning(game_id=warm, image=image))
        await env.run(acts.ensure_engine_removed, EnsureEngineRemoved(game_id=warm, stop_timeout_s=args.grace))
        await direct.start(warm, image)
        await direct.stop(warm, args.grace)

        for i in range(args.n):
            gid_a, gid_r = f"bench-{run}-a{i}", f"bench-{run}-r{i}"

            async def activity_side(gid: str = gid_a) -> None:
                t0 = time.perf_counter()
                await env.run(acts.ensure_engine_running, EnsureEngineRunning(game_id=gid, image=image))
                times["act_start"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                request = EnsureEngineRemoved(game_id=gid, stop_timeout_s=args.grace)
                await env.run(acts.ensure_engine_removed, request)
                times["act_stop"].append(time.perf_counter() - t0)

            async def direct_side(gid: str = gid_r) -> None:
                t0 = time.perf_counter()
                await direct.start(gid, image)
                times["raw_start"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                await direct.stop(gid, args.grace)
                times["raw_stop"].append(time.perf_counter() - t0)

            # Alternate the order so that drift in the engine does not favour one side.
            first, second = (activity_side, direct_side) if i % 2 == 0 else (direct_side, activity_side)
            await first()
            await second()
    finally:
        await docker.close()
        await acts.close()
        await engine.close()

    print(f"engine image {image}, n={args.n}, stop grace {args.grace}s, poll {settings.docker_poll_interval_s}s")
    print(f"{'':12}{'activity p50':>14}{'mean':>10}{'direct p50':>14}{'mean':>10}{'ratio p50':>11}{'mean':>8}")
    for op, target in (("start", 1.3), ("stop", 1.2)):
        a50, amean = summary(times[f"act_{op}"])
        r50, rmean = summary(times[f"raw_{op}"])
        print(
            f"{op:12}{a50 * 1000:>12.1f}ms{amean * 1000:>8.1f}ms{r50 * 1000:>12.1f}ms{rmean * 1000:>8.1f}ms"
            f"{a50 / r50:>11.2f}{amean / rmean:>8.2f}  (target ≤ {target})"
        )


if __name__ == "__main__":
    asyncio.run(main())
