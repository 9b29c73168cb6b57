"""End-to-end benchmark: runtime jobs through the real worker versus a bare Temporal baseline.

One dev server, one Redis, one Docker engine, one process; for each scenario, N jobs at concurrency
C, each timed from its start request to its entry appearing on the stream (an XREAD listener):

- `stop-replay`: StopRuntimeJob of games without a container (the game's turn, the host registry's
  answer that the game has no engine anywhere, the publish; no Docker call);
- `stop-again`: a second StopRuntimeJob of each of those games: its game's workflow already runs and
  knows the game has no engine (the path of any game the fleet has seen; no registry call);
- `stop-pair`: two StopRuntimeJobs of one new game started back to back, timed to the second's entry
  (the second waits for the first's turn to be handed on);
- `start`: StartRuntimeJob of distinct games with the tiny healthy test image (placement by the host
  registry, the Docker step on the host's queue; then cleaned up);
- `baseline`: a workflow with one activity doing a plain XADD of six fields.

Prints jobs/s, p50/p99 latency and the ratios to the baseline (targets for stop-replay: throughput
≥ 0.8x, p50 ≤ 1.25x). Usage: python bench/e2e.py [--n 200] [--concurrency 1,50] [--starts 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiodocker
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.docker import EngineActivities
from activities.publish import redis_client
from bench.baseline import BASELINE_ACTIVITY, BASELINE_WORKFLOW, BenchBaselineJob
from bench.profile import summarize
from contract.lock import lock_workflow_id
from contract.models import LABEL_GAME_ID, LABEL_MANAGED_BY, MANAGED_BY
from contract.settings import Settings
from rtjobs.dev.server import EAGER_ACTIVITIES, dynamic_config_args
from rtjobs.hosting import serving
from tests.support.binaries import temporal_cli
from tests.support.docker_engine import acquire_engine
from workflows.search import SEARCH_ATTRIBUTE_KEYS

Starter = Callable[[str], Awaitable[Any]]


class BaselineActivities:
    """The baseline's one activity: a plain XADD of the six fields, no validation, no dedup."""

    def __init__(self, redis: Any, stream: str) -> None:
        self._redis = redis
        self._stream = stream

    @activity.defn(name=BASELINE_ACTIVITY)
    async def xadd(self, game_id: str) -> str:
        fields = {
            "game_id": game_id,
            "outcome": "success",
            "container_id": "",
            "engine_endpoint": "",
            "error_code": "replay_no_op",
            "error_message": "",
        }
        return str(await self._redis.xadd(self._stream, fields))


class StreamClock:
    """Records when each game's entry appears on the stream."""

    def __init__(self, redis: Any, stream: str) -> None:
        self.redis, self.stream = redis, stream
        self.seen: dict[str, list[float]] = {}  # game id -> when each of its entries appeared
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> StreamClock:
        self._task = asyncio.create_task(self._listen())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _listen(self) -> None:
        last = "$"
        while True:
            reply = await self.redis.xread({self.stream: last}, block=1000, count=500)
            for _name, entries in reply or []:
                for entry_id, fields in entries:
                    self.seen.setdefault(fields["game_id"], []).append(time.perf_counter())
                    last = entry_id

    async def wait_for(self, game_ids: list[str], nth: int = 1, timeout_s: float = 600) -> None:
        deadline = time.monotonic() + timeout_s
        while any(len(self.seen.get(g, ())) < nth for g in game_ids):
            if time.monotonic() > deadline:
                raise TimeoutError("entries missing from the stream")
            await asyncio.sleep(0.005)


def server_args(partitions: int, eager: bool) -> list[str]:
    """Dynamic config of the dev server, the same for both sides of the comparison."""
    values = [f"matching.numTaskqueueReadPartitions={partitions}", f"matching.numTaskqueueWritePartitions={partitions}"]
    return dynamic_config_args([*values, *(EAGER_ACTIVITIES if eager else ())])


async def print_timeline(client: Client, workflow_id: str, since: int | None = None) -> int:
    """Where one workflow's time went: each history event (with its activity type or marker name) in ms
    since the workflow started (or since `since`, ms since the epoch), and the gap to the event before.
    Returns when the workflow started.
    """
    events = [e async for e in client.get_workflow_handle(workflow_id).fetch_history_events()]
    started = events[0].event_time.ToMilliseconds()
    t0 = started if since is None else since
    previous = t0
    print(f"timeline of {workflow_id} ({len(events)} events):")
    for event in events:
        at = event.event_time.ToMilliseconds()
        kind = EventType.Name(event.event_type).removeprefix("EVENT_TYPE_").lower()
        detail = ""
        if event.HasField("activity_task_scheduled_event_attributes"):
            detail = event.activity_task_scheduled_event_attributes.activity_type.name
        elif event.HasField("marker_recorded_event_attributes"):
            detail = event.marker_recorded_event_attributes.marker_name
        print(f"  {at - t0:7d} ms (+{at - previous:5d})  {kind} {detail}")
        previous = at
    return started


def keep_summary(raw: Path, summary: Path) -> None:
    summary.write_text(summarize(raw))
    raw.unlink(missing_ok=True)


@contextlib.asynccontextmanager
async def profiled(path: str | None) -> AsyncIterator[None]:
    """py-spy samples this process (the worker, the starter and the listener) while the block runs."""
    if not path:
        yield
        return
    svg = path.endswith(".svg")
    out = path if svg else f"{path}.raw"
    spy = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(os.getpid()), "--output", out,
        "--format", "flamegraph" if svg else "raw", "--rate", "50", "--nonblocking",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        await spy.wait()
        if not svg:  # a text summary (bench/profile.py); the raw stacks are not kept
            await asyncio.to_thread(keep_summary, Path(out), Path(path))


def starter(client: Client, workflow: str, id_prefix: str, task_queue: str) -> Starter:
    """Starts `workflow` for one game, as the Runtime Manager would: id `<id_prefix>-<game id>`."""

    async def start(game_id: str) -> Any:
        return await client.start_workflow(
            workflow, {"game_id": game_id}, id=f"{id_prefix}-{game_id}", task_queue=task_queue
        )

    return start


async def run_scenario(
    clock: StreamClock,
    start: Starter,
    n: int,
    concurrency: int,
    prefix: str,
    games: list[str] | None = None,
    entries: int = 1,
) -> tuple[dict[str, float], list[str]]:
    """The figures, and the games: `games` are those of an earlier scenario, whose next entry is timed
    (else n new games); `entries`: how many entries each call of `start` makes (the last is timed).
    """
    nth = (len(clock.seen[games[0]]) if games else 0) + entries
    games = games or [f"{prefix}-{uuid.uuid4().hex[:6]}-{i}" for i in range(n)]
    sent: dict[str, float] = {}
    queue = iter(games)
    cpu0 = time.process_time()

    async def lane() -> None:
        for game_id in queue:
            sent[game_id] = time.perf_counter()
            await start(game_id)
            await clock.wait_for([game_id], nth)

    t0 = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    cpu_ms = (time.process_time() - cpu0) * 1000 / (n * entries)
    lat = sorted((clock.seen[g][nth - 1] - sent[g]) * 1000 for g in games)
    figures = {
        "cpu ms/job": cpu_ms,
        "jobs/s": n * entries / wall,
        "p50 ms": statistics.median(lat),
        "p99 ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
    }
    return figures, games


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200, help="stop-replay and baseline jobs per concurrency level")
    parser.add_argument("--starts", type=int, default=20, help="start jobs per concurrency level (0: skip)")
    parser.add_argument("--concurrency", default="1,50")
    parser.add_argument("--partitions", type=int, default=4, help="task-queue partitions (the dev server's default: 4)")
    parser.add_argument("--eager", action="store_true", help="eager activity execution on (both sides)")
    parser.add_argument("--settle", type=float, default=None, help="RTJOBS_ORDER_SETTLE_S (default: the setting's)")
    parser.add_argument("--cache", type=int, default=None, help="RTJOBS_MAX_CACHED_WORKFLOWS (default: the setting's)")
    parser.add_argument(
        "--timeline",
        action="store_true",
        help="print the history timeline of the last start job at concurrency 1 (where its time went)",
    )
    parser.add_argument(
        "--profile",
        default=None,
        help="py-spy profile of the last level's stop-replay: .svg flame graph, else a text summary",
    )
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    engine = await acquire_engine()
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(temporal_cli()),
        data_converter=pydantic_data_converter,
        search_attributes=SEARCH_ATTRIBUTE_KEYS,
        dev_server_log_level="error",
        dev_server_extra_args=server_args(args.partitions, args.eager),
    )
    run = uuid.uuid4().hex[:6]
    os.environ["DOCKER_HOST"] = engine.url
    settings = Settings(
        task_queue=f"bench-jobs-{run}",
        results_stream=f"bench:e2e:{run}",
        engine_image=engine.images.healthy,
        game_network=f"rtjobs-bench-{run}",
        **({"order_settle_s": args.settle} if args.settle is not None else {}),
        **({"max_cached_workflows": args.cache} if args.cache is not None else {}),
    )
    baseline_stream = f"bench:baseline:{run}"
    redis = redis_client(settings.redis_url)
    docker_acts = EngineActivities(settings)
    client: Client = env.client
    results: dict[tuple[str, int], dict[str, float]] = {}
    try:
        baseline_acts = BaselineActivities(redis, baseline_stream)
        baseline_worker = Worker(
            client, task_queue=f"bench-baseline-{run}", workflows=[BenchBaselineJob], activities=[baseline_acts.xadd]
        )

        stop_job = starter(client, "StopRuntimeJob", "bench-stop", settings.task_queue)
        stop_again = starter(client, "StopRuntimeJob", "bench-stop2", settings.task_queue)
        start_job = starter(client, "StartRuntimeJob", "bench-start", settings.task_queue)
        baseline_job = starter(client, BASELINE_WORKFLOW, "bench-base", f"bench-baseline-{run}")

        async def stop_pair(game_id: str) -> Any:
            await stop_job(game_id)
            return await stop_again(game_id)

        async with serving(client, settings, redis, docker_acts), baseline_worker:
            jobs_clock = StreamClock(redis, settings.results_stream)
            base_clock = StreamClock(redis, baseline_stream)
            async with jobs_clock, base_clock:
                await run_scenario(jobs_clock, stop_job, 20, 5, "warm")  # warm-up: sandbox, connections
                await run_scenario(base_clock, baseline_job, 20, 5, "warm")
                for c in levels:
                    results[("baseline", c)], _ = await run_scenario(base_clock, baseline_job, args.n, c, "b")
                    async with profiled(args.profile if c == levels[-1] else None):
                        results[("stop-replay", c)], stopped = await run_scenario(jobs_clock, stop_job, args.n, c, "s")
                    results[("stop-again", c)], _ = await run_scenario(jobs_clock, stop_again, args.n, c, "", stopped)
                    results[("stop-pair", c)], _ = await run_scenario(jobs_clock, stop_pair, args.n, c, "p", entries=2)
                    if args.timeline and c == 1:  # the last stop-replay, and its game's new workflow
                        began = await print_timeline(client, f"bench-stop-{stopped[-1]}")
                        await print_timeline(client, lock_workflow_id(stopped[-1], settings.task_queue), began)
                    if args.starts:
                        results[("start", c)], _ = await run_scenario(jobs_clock, start_job, args.starts, c, f"st{run}")
                        if args.timeline and c == 1:
                            last = max(
                                (g for g in jobs_clock.seen if g.startswith(f"st{run}-")),
                                key=jobs_clock.seen.__getitem__,
                            )
                            await print_timeline(client, f"bench-start-{last}")
    finally:
        async with aiodocker.Docker(url=engine.url) as docker:
            for container in await docker.containers.list(
                all=True, filters={"label": [f"{LABEL_MANAGED_BY}={MANAGED_BY}", LABEL_GAME_ID]}
            ):
                if container["Labels"][LABEL_GAME_ID].startswith(f"st{run}-"):  # only this run's engines
                    with contextlib.suppress(aiodocker.DockerError):
                        await container.delete(force=True)
        await docker_acts.close()
        await redis.delete(settings.results_stream, baseline_stream)
        await redis.aclose()
        await env.shutdown()
        await engine.close()

    print(
        f"end-to-end benchmark: {args.n} jobs per level (start jobs: {args.starts}), one dev server, "
        f"{os.cpu_count()} cores; partitions {args.partitions}, eager activities {'on' if args.eager else 'off'}, "
        f"settle {settings.order_settle_s} s, cache {settings.max_cached_workflows}"
    )
    print(
        f"{'scenario':12} {'conc':>5} {'jobs/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'cpu ms/job':>10} "
        f"{'thr xbase':>10} {'p50 xbase':>10} {'p99 xbase':>10}"
    )
    for (name, c), r in results.items():
        base = results[("baseline", c)]
        print(
            f"{name:12} {c:5d} {r['jobs/s']:8.1f} {r['p50 ms']:8.1f} {r['p99 ms']:8.1f} {r['cpu ms/job']:10.1f} "
            f"{r['jobs/s'] / base['jobs/s']:10.2f} {r['p50 ms'] / base['p50 ms']:10.2f} "
            f"{r['p99 ms'] / base['p99 ms']:10.2f}"
        )
    sys.stdout.flush()
    os._exit(0)  # temporalio can abort at interpreter exit (sdk-python #300); the figures are printed


if __name__ == "__main__":
    asyncio.run(main())
