"""Scale-out benchmark: the same stop-replay load through one, then two real `python worker.py` processes.

Temporal spreads the tasks of one task queue over every worker polling it; this measures what a second
worker process buys on this machine, and where the CPU goes: per job, the workers' CPU (user + system,
from /proc, all their threads), the dev server's and the whole machine's busy share. Each worker count
gets its own task queue, stream and warm-up; the jobs are StopRuntimeJob of games without an engine
(the game's turn, the registry's answer, the publish; no Docker call), `--n` of them `--concurrency` at
a time, each timed from its start request to its entry on the stream.

Usage: python bench/scale.py [--n 300] [--concurrency 50] [--workers 1,2] [--partitions 4] [--eager]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from activities.publish import redis_client
from bench.e2e import StreamClock, run_scenario, server_args
from contract.settings import Settings
from tests.support.docker_engine import acquire_engine
from tests.support.proc_stats import machine_cpu_s, read_sample
from tests.support.processes import Process, process_env, start_ready_worker
from tests.support.temporal_server import TemporalDevServer


async def measure(
    client: Client, server: TemporalDevServer, env: dict[str, str], workers: int, n: int, concurrency: int
) -> dict[str, float]:
    run = uuid.uuid4().hex[:6]
    queue, stream = f"scale-{workers}-{run}", f"bench:scale:{run}"
    env = {**env, "RTJOBS_TASK_QUEUE": queue, "RTJOBS_RESULTS_STREAM": stream}
    env["RTJOBS_GAME_NETWORK"] = f"rtjobs-scale-{run}"
    processes: list[Process] = []
    redis = redis_client(env["REDIS_URL"])
    try:
        for _ in range(workers):
            await start_ready_worker(processes, env)

        async def stop_job(game_id: str) -> object:
            return await client.start_workflow(
                "StopRuntimeJob", {"game_id": game_id}, id=f"scale-{game_id}", task_queue=queue
            )

        async with StreamClock(redis, stream) as clock:
            await run_scenario(clock, stop_job, 20, 5, f"warm{run}")
            assert server.proc is not None
            pids = [p.proc.pid for p in processes]
            before = [read_sample(pid).cpu_s for pid in pids]
            server_before = read_sample(server.proc.pid).cpu_s
            busy0, total0 = machine_cpu_s()
            result, _ = await run_scenario(clock, stop_job, n, concurrency, f"s{run}")
            busy1, total1 = machine_cpu_s()
            samples = [read_sample(pid) for pid in pids]
            result["worker cpu ms/job"] = sum(s.cpu_s - b for s, b in zip(samples, before, strict=True)) * 1000 / n
            result["server cpu ms/job"] = (read_sample(server.proc.pid).cpu_s - server_before) * 1000 / n
            result["machine busy %"] = 100 * (busy1 - busy0) / max(total1 - total0, 1e-9)
            result["peak rss MB"] = max(s.hwm_kb for s in samples) / 1024
    finally:
        for proc in processes:
            proc.kill()
        await redis.delete(stream)
        await redis.aclose()
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--eager", action="store_true")
    args = parser.parse_args()
    engine = await acquire_engine()
    server = TemporalDevServer().start(extra_args=server_args(args.partitions, args.eager))
    rows: dict[int, dict[str, float]] = {}
    try:
        client = await Client.connect(server.address, data_converter=pydantic_data_converter)
        env = process_env(
            TEMPORAL_ADDRESS=server.address,
            REDIS_URL=Settings().redis_url,
            DOCKER_HOST=engine.url,
            RTJOBS_ENGINE_IMAGE=engine.images.healthy,
        )
        for workers in (int(w) for w in args.workers.split(",")):
            rows[workers] = await measure(client, server, env, workers, args.n, args.concurrency)
    finally:
        server.close()
        await engine.close()
    print(
        f"scale-out: {args.n} stop-replay jobs, {args.concurrency} in flight, {os.cpu_count()} cores, "
        f"partitions {args.partitions}, eager activities {'on' if args.eager else 'off'}"
    )
    cols = ["jobs/s", "p50 ms", "p99 ms", "worker cpu ms/job", "server cpu ms/job", "machine busy %", "peak rss MB"]
    print(f"{'workers':>7} " + " ".join(f"{c:>17}" for c in cols) + f" {'x one':>6}")
    first = rows[min(rows)]["jobs/s"]
    for workers, r in rows.items():
        print(f"{workers:7d} " + " ".join(f"{r[c]:17.1f}" for c in cols) + f" {r['jobs/s'] / first:6.2f}")
    sys.stdout.flush()
    os._exit(0)  # temporalio can abort at interpreter exit (sdk-python #300); the figures are printed


if __name__ == "__main__":
    asyncio.run(main())
