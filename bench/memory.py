"""Worker memory benchmark: RSS of one real `python worker.py` with N start jobs waiting on an engine
image that becomes healthy only after a long time (target: ≤ 150 MB with 1,000 jobs).

Everything is the bench's own: a Temporal dev server, a redis-server, an engine image imported from
the tests' busybox rootfs (ready after `--ready-after` s; probed every `--probe-interval` s so that
the probes of ~100 waiting engines do not swamp a small machine), and a Docker engine (DOCKER_HOST
when it answers, else a private dockerd; needs root). N start jobs of distinct games are sent at
once; the worker's RSS (and the kernel's peak, VmHWM) and CPU are sampled from /proc, and every few
seconds a line shows how many jobs are in the Docker readiness wait (their engine exists and is
`starting`) versus still queued (no engine yet). The host worker's activity slots
(RTJOBS_HOST_DOCKER_CONCURRENCY; by default the host's capacity + 2, at most 100) bound how many can be in
the readiness wait at once; the rest wait as scheduled activities on the server, while their workflows
(and their games' lock workflows) sit in the worker's workflow cache. Running it twice with 1 slot and
with as many slots as jobs gives the memory of one Docker step in flight (README: Running a fleet).

Every engine the bench made is removed at the end, and its servers stopped.
Usage: python bench/memory.py [--jobs 1000] [--window 150] [--ready-after 900] [--probe-interval 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiodocker
from aiodocker.networks import DockerNetwork
from temporalio.api.enums.v1 import DescribeTaskQueueMode, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from rtjobs.client import start_job
from tests.support.binaries import temporal_cli
from tests.support.docker_engine import acquire_engine, import_image, rootfs_tar
from tests.support.proc_stats import ProcSampler, read_sample
from tests.support.processes import WORKER_READY, Process, process_env
from tests.support.redis_server import RedisServer
from workflows.search import SEARCH_ATTRIBUTE_KEYS

TARGET_MB = 150
TUNING_VARS = (
    "RTJOBS_MAX_CACHED_WORKFLOWS",
    "RTJOBS_ORDER_SETTLE_S",
    "RTJOBS_DOCKER_POLL_INTERVAL_S",
    # The fleet places an engine only where the host has room (its memory / RTJOBS_ENGINE_MEMORY_BYTES by
    # default: ~45 here): 1,000 waiting engines need RTJOBS_HOST_MAX_ENGINES=1000.
    "RTJOBS_HOST_MAX_ENGINES",
    "RTJOBS_HOST_DOCKER_CONCURRENCY",
)
# What the worker logs at start-up: how many Docker steps its host worker runs at once.
SLOTS_LOGGED = re.compile(r"(\d+) Docker steps at once")
SEND_CONCURRENCY = 100


def slow_image_changes(ready_after_s: int, probe_interval_s: int) -> list[str]:
    """An engine that serves at once but reports healthy only `ready_after_s` after it started."""
    script = f"trap 'exit 0' TERM; (sleep {ready_after_s}; touch /tmp/ready) & httpd -f -p 8080 -h /www & wait"
    return [
        'CMD ["/bin/sh", "-c", "' + script + '"]',
        f"HEALTHCHECK --interval={probe_interval_s}s --timeout=2s --retries=3 "
        f"--start-period={ready_after_s + 3 * probe_interval_s}s CMD test -f /tmp/ready",
    ]


async def engine_states(docker: aiodocker.Docker, prefix: str) -> Counter[str]:
    """Our games' engines by state: `starting` (in the readiness wait), `healthy`, `created`, ..."""
    states: Counter[str] = Counter()
    for c in await docker.containers.list(all=True, filters={"name": [f"galaxy-game-{prefix}"]}):
        status = str(c["Status"])  # e.g. "Up 3 seconds (health: starting)"
        if "health: starting" in status:
            states["starting"] += 1
        elif "(healthy)" in status:
            states["healthy"] += 1
        else:
            states[str(c["State"])] += 1
    return states


async def activity_backlog(client: Client, task_queue: str) -> int | None:
    """Activity tasks scheduled but not yet handed to a worker (the server's approximate count)."""
    try:
        resp = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=client.namespace,
                task_queue=TaskQueue(name=task_queue),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
                api_mode=DescribeTaskQueueMode.DESCRIBE_TASK_QUEUE_MODE_UNSPECIFIED,
                report_stats=True,
            )
        )
    except Exception:
        return None
    return int(resp.stats.approximate_backlog_count) if resp.HasField("stats") else None


async def remove_bench_engines(docker_url: str, prefix: str, network: str, image: str) -> int:
    removed = 0
    async with aiodocker.Docker(url=docker_url) as docker:
        for c in await docker.containers.list(all=True, filters={"name": [f"galaxy-game-{prefix}"]}):
            with contextlib.suppress(aiodocker.DockerError):
                await c.delete(force=True, v=True)
                removed += 1
        with contextlib.suppress(aiodocker.DockerError):
            await DockerNetwork(docker, network).delete()  # type: ignore[no-untyped-call]
        with contextlib.suppress(aiodocker.DockerError):
            await docker.images.delete(image, force=True)
    return removed


def save_log(path: Path, text: str) -> None:
    path.write_text(text)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--window", type=float, default=150, help="seconds to sample after the jobs were sent")
    parser.add_argument("--ready-after", type=int, default=900, help="seconds until the engines become healthy")
    parser.add_argument("--probe-interval", type=int, default=20, help="HEALTHCHECK interval of the engines")
    parser.add_argument("--worker-log", type=Path, help="keep the worker's output in this file")
    args = parser.parse_args()

    run = uuid.uuid4().hex[:6]
    prefix = f"mem{run}"
    network = f"rtjobs-bench-mem-{run}"
    image = f"rtjobs-bench/engine:ready-after-{args.ready_after}s-{run}"
    engine = await acquire_engine()
    redis = RedisServer().start()
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(temporal_cli()),
        data_converter=pydantic_data_converter,
        search_attributes=SEARCH_ATTRIBUTE_KEYS,
        dev_server_log_level="error",
    )
    worker: Process | None = None
    timeline: list[str] = []
    try:
        async with aiodocker.Docker(url=engine.url) as docker:
            await import_image(docker, image, rootfs_tar(), slow_image_changes(args.ready_after, args.probe_interval))
        task_queue = f"bench-mem-{run}"
        worker = Process(
            ["worker.py"],
            process_env(
                TEMPORAL_ADDRESS=env.client.service_client.config.target_host,
                TEMPORAL_NAMESPACE=env.client.namespace,
                REDIS_URL=redis.url,
                DOCKER_HOST=engine.url,
                RTJOBS_TASK_QUEUE=task_queue,
                RTJOBS_RESULTS_STREAM=f"bench:memory:{run}",
                RTJOBS_GAME_NETWORK=network,
                RTJOBS_START_TIMEOUT_S="3600",
                RTJOBS_ENGINE_IMAGE=image,  # the image policy's default admits its repository
                # Worker tuning given to the bench (e.g. RTJOBS_MAX_CACHED_WORKFLOWS) reaches the worker.
                **{k: v for k, v in os.environ.items() if k in TUNING_VARS},
            ),
        )
        await worker.wait_for(WORKER_READY)
        await worker.wait_for("Docker steps at once")  # (its host queue is served)
        logged = SLOTS_LOGGED.search(worker.output())
        slots = logged.group(1) if logged else "?"
        await asyncio.sleep(3)
        idle = read_sample(worker.proc.pid)

        client = env.client
        gate = asyncio.Semaphore(SEND_CONCURRENCY)

        async def send(i: int) -> None:
            async with gate:
                await start_job(client, f"{prefix}-{i}", image=image, job="0", task_queue=task_queue)

        async with ProcSampler(worker.proc.pid, every_s=0.5) as sampler, aiodocker.Docker(url=engine.url) as docker:
            t0 = time.monotonic()
            await asyncio.gather(*(send(i) for i in range(args.jobs)))
            sent_s = time.monotonic() - t0
            max_waiting = 0
            while (elapsed := time.monotonic() - t0) < args.window:
                states = await engine_states(docker, prefix)
                backlog = await activity_backlog(client, task_queue)
                waiting = states["starting"]
                max_waiting = max(max_waiting, waiting)
                queued = args.jobs - sum(states.values())
                line = (
                    f"t={elapsed:5.0f}s rss={sampler.last.rss_kb / 1024:5.0f} MB peak={sampler.peak_rss_mb:5.0f} MB "
                    f"cpu={sampler.last.cpu_s - sampler.first.cpu_s:5.1f}s readiness-wait={waiting:4d} "
                    f"no-engine-yet={queued:4d} other={dict(states - Counter(starting=waiting))} "
                    f"activity-backlog={backlog}"
                )
                timeline.append(line)
                print(line, flush=True)
                if worker.proc.poll() is not None:
                    raise RuntimeError(f"worker exited {worker.proc.returncode}:\n{worker.output()[-3000:]}")
                await asyncio.sleep(5)
            wall = time.monotonic() - t0
        print()
        print(f"worker memory benchmark: {args.jobs} start jobs of distinct games sent in {sent_s:.1f} s")
        print(f"  sampled for {wall:.0f} s after the first was sent")
        print(f"  engine image ready after {args.ready_after} s (never within the window); default worker settings")
        print(f"  idle RSS before the jobs      {idle.rss_kb / 1024:7.0f} MB")
        print(f"  peak RSS (VmHWM)              {sampler.peak_rss_mb:7.0f} MB   (target ≤ {TARGET_MB} MB)")
        print(f"  RSS at the end of the window  {sampler.last.rss_kb / 1024:7.0f} MB")
        per_job_kb = (sampler.peak_rss_mb * 1024 - idle.rss_kb) / args.jobs
        print(f"  (peak - idle) per job          {per_job_kb:7.0f} KB")
        print(
            f"  worker CPU in the window      {sampler.cpu_s:7.1f} s   ({100 * sampler.cpu_s / wall:.0f}% of one core)"
        )
        print(f"  machine busy                  {100 * sampler.machine_busy:7.0f} %   of {os.cpu_count()} cores")
        print(
            f"  in the readiness wait (max)   {max_waiting:7d}      (bound: {slots} activity slots); "
            f"the others queued as activities on the server"
        )
        sys.stdout.flush()
    finally:
        if worker is not None:
            if args.worker_log:
                save_log(args.worker_log, worker.output())
            worker.kill()
        removed = await remove_bench_engines(engine.url, prefix, network, image)
        print(f"cleanup: {removed} engine containers removed, worker killed, dev server and redis-server stopped")
        await env.shutdown()
        redis.close()
        await engine.close()
    sys.stdout.flush()
    os._exit(0)  # temporalio can abort at interpreter exit (sdk-python #300); the figures are printed


if __name__ == "__main__":
    asyncio.run(main())
