"""How often do jobs of one game started back to back run out of start order?

Temporal does not order the first workflow tasks of separate workflows; a job asks for its game's turn
no earlier than RTJOBS_ORDER_SETTLE_S after its start so that a job started just before it, whose first
task ran later, still asks first. This benchmark measures what that wait buys, to choose its default:

for each task-queue partition count (the dev server's `matching.numTaskqueueReadPartitions` /
`...WritePartitions`; the dev server's default is 4) and each settle time, `--pairs` pairs of stop jobs
of one game (no engine: no Docker call), the second started right after the first one's start call
returned, pairs launched every `--gap-ms`; idle (nothing else running) and loaded (`--load` other jobs
kept in flight on other games). A pair is inverted when the job started second closed first (jobs of one
game never overlap, so close order is run order). Prints the inversion count and the p50 latency of a job.

Usage: python bench/order.py [--pairs 40] [--settle 0,0.025,0.05,0.1,0.25] [--partitions 1,4] [--load 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from activities.docker import EngineActivities
from activities.publish import redis_client
from bench.e2e import server_args
from contract.settings import Settings
from rtjobs.hosting import serving
from tests.support.docker_engine import acquire_engine
from tests.support.temporal_server import TemporalDevServer


@dataclass
class Row:
    partitions: int
    settle_s: float
    load: int
    pairs: int
    inverted: int
    p50_ms: float


async def measure(client: Client, settings: Settings, pairs: int, gap_s: float, load: int) -> tuple[int, float]:
    queue = settings.task_queue
    latencies: list[float] = []
    stop_load = asyncio.Event()

    async def one_job(game_id: str, tag: str) -> tuple[str, float]:
        t0 = time.perf_counter()
        handle = await client.start_workflow(
            "StopRuntimeJob", {"game_id": game_id}, id=f"order-{tag}-{game_id}", task_queue=queue
        )
        return handle.id, t0

    async def background() -> None:
        async def lane() -> None:
            while not stop_load.is_set():
                game = f"load-{uuid.uuid4().hex[:8]}"
                handle = await client.start_workflow(
                    "StopRuntimeJob", {"game_id": game}, id=f"order-load-{game}", task_queue=queue
                )
                await handle.result()

        await asyncio.gather(*(lane() for _ in range(load)))

    async def pair(i: int) -> bool:
        await asyncio.sleep(i * gap_s)
        game = f"pair-{uuid.uuid4().hex[:8]}"
        first, t_first = await one_job(game, "a")
        second, t_second = await one_job(game, "b")
        closed = {}
        for wf_id, t0 in ((first, t_first), (second, t_second)):
            handle = client.get_workflow_handle(wf_id)
            await handle.result()
            desc = await handle.describe()
            assert desc.close_time is not None
            closed[wf_id] = desc.close_time
            latencies.append((time.perf_counter() - t0) * 1000)
        return closed[second] < closed[first]

    load_task = asyncio.create_task(background()) if load else None
    if load_task:
        await asyncio.sleep(3)  # let the load reach its steady state
    inverted = sum(await asyncio.gather(*(pair(i) for i in range(pairs))))
    stop_load.set()
    if load_task:
        await load_task
    return inverted, statistics.median(latencies)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--gap-ms", type=float, default=100.0)
    parser.add_argument("--settle", default="0,0.025,0.05,0.1,0.25")
    parser.add_argument("--partitions", default="1,4")
    parser.add_argument("--load", type=int, default=50, help="jobs kept in flight in the loaded case (0: idle only)")
    args = parser.parse_args()
    settles = [float(s) for s in args.settle.split(",")]
    loads = [0, args.load] if args.load else [0]
    engine = await acquire_engine()
    os.environ["DOCKER_HOST"] = engine.url
    redis = redis_client(Settings().redis_url)
    rows: list[Row] = []
    try:
        for partitions in (int(p) for p in args.partitions.split(",")):
            server = TemporalDevServer()
            server.start(extra_args=server_args(partitions, eager=False))
            try:
                client = await Client.connect(server.address, data_converter=pydantic_data_converter)
                for settle in settles:
                    run = uuid.uuid4().hex[:6]
                    settings = Settings(
                        task_queue=f"order-{run}",
                        results_stream=f"bench:order:{run}",
                        engine_image=engine.images.healthy,
                        game_network=f"rtjobs-order-{run}",
                        order_settle_s=settle,
                        max_cached_workflows=1000,
                    )
                    docker_acts = EngineActivities(settings)
                    try:
                        async with serving(client, settings, redis, docker_acts):
                            for load in loads:
                                inverted, p50 = await measure(client, settings, args.pairs, args.gap_ms / 1000, load)
                                rows.append(Row(partitions, settle, load, args.pairs, inverted, p50))
                                print(f"partitions={partitions} settle={settle} load={load}: {inverted}/{args.pairs} "
                                      f"inverted, p50 {p50:.0f} ms", flush=True)  # fmt: skip
                    finally:
                        await docker_acts.close()
                        await redis.delete(settings.results_stream)
            finally:
                server.close()
    finally:
        await redis.aclose()
        await engine.close()

    print("\nstart-order inversions of back-to-back job pairs (second started closed first)")
    print(f"{'partitions':>10} {'settle ms':>9} {'in flight':>9} {'inverted':>9} {'p50 ms':>8}")
    for r in rows:
        print(f"{r.partitions:10d} {r.settle_s * 1000:9.0f} {r.load:9d} {r.inverted:4d}/{r.pairs:<4d} {r.p50_ms:8.0f}")
    sys.stdout.flush()
    os._exit(0)  # temporalio can abort at interpreter exit (sdk-python #300); the figures are printed


if __name__ == "__main__":
    asyncio.run(main())
