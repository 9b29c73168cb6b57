"""Fleet scale benchmark: how placement behaves as the fleet grows (10 / 100 / 1,000 hosts).

Placement is spread over one `RuntimeHost` workflow per Docker host (`workflows/host.py`): a host's
reports start and feed its own workflow, and a placement samples two hosts of the worker's listing
(`activities/fleet.py`, the server's visibility listing), probes them by query and reserves a place on
the less loaded by update (`activities/placement.py`); it asks every host only when the samples found
no room. (Until 1.1 one fleet-wide `RuntimeHostRegistry` workflow held every host, and stopped scaling
near 100 hosts: the README's "before" table.) This measures the design on the real parts: a real dev
server, a real `python worker.py` (its coordination worker, `build_coordination_worker`, runs the hosts'
workflows; its Docker is absent, so it reports no host itself), and per scale point:

- stand-in hosts: one real `HostReporter` per host (its Docker engine a stand-in that lists the host's
  games), reporting to its host's workflow every `--report-every` s (the workers' default, 10 s, longer
  past RTJOBS_FLEET_REPORTS_PER_S) with the real `send_report`, staggered as unsynchronised workers are;
  100 games per host (1k / 10k / 100k games in all); placements begin once the fleet's listing shows
  every host, each live (`Fleet.views`), and every worker has counted the fleet (`settled`);
- `--rate`: placements arrive at a fixed rate (open loop, each one's wait for a slot counted in its
  latency), as a Runtime Manager starts games, so the latency is a placement's cost at that load; without
  it `--concurrency` are kept in flight (closed loop), which measures the throughput at saturation (a
  closed loop's latency is then in-flight / throughput). The timeline on stderr gives each 10 s's
  placements, p99, reports and slow or timed-out workflow tasks;
- `--placements` placements of new games through the real activity body (`PlacementActivities.place_game
  _engine`, with a real client, as `tests/unit/activities/test_placement.py` calls it), `--concurrency` in flight spread
  over `--placers` instances (one per worker process of a real fleet: each keeps its own listing of the
  hosts and batches its own reservations per host). The activity is called directly, not as a job's local
  activity: the local activity's own cost does not depend on the fleet's size and would only add a job
  workflow per placement to the load. Each attempt has the local activity's timeout and is retried at its
  policy's pauses; a placed game joins its host's inventory (its next report lists it, as after the job's
  container was made). "asked all": placements whose samples found no room, so every host was asked;
- from the histories of every workflow on the coordination queue (every host's workflow, each run of its
  continue-as-new chain, and any run started afresh): the longest workflow task (WorkflowTaskStarted →
  Completed), failed or timed-out tasks, the largest history event and payload, the largest state carried
  across continue-as-new (the input of a ContinuedAsNew event), the events in all and how many runs
  continued as new.

The dev server keeps its state without a sync per commit (`SQLITE_ARGS`: the state is thrown away, and
this machine's shared disk would otherwise be what is measured). The worker runs with the product's
settings; `--worker-cache` sets its workflow cache (RTJOBS_MAX_CACHED_WORKFLOWS), to tell what a cache
smaller than the fleet's host workflows costs.

A point whose fleet does not show every host live within `--ingest-budget-s` places nothing (its
placements would measure a fleet still starting), and a point's placements stop after `--budget-s` (the
rest count as cut).

Goals: p50 and p99 at 1,000 hosts within 1.5x of 10 hosts, no workflow task > 200 ms, nothing > 256 KiB.
Usage: python bench/fleet_scale.py [--quick] [--points 10x1000,100x10000] [--placements 10000]
[--concurrency 100] [--placers 4] [--report-every 10] [--budget-s 900] [--ingest-budget-s 120]
[--worker-cache N].
`kill -USR1` prints where its tasks wait.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import random
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType, TimeoutType, WorkflowTaskFailedCause
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowExecution, WorkflowExecutionStatus
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError
from temporalio.testing import ActivityEnvironment

from activities.docker_gateway import DockerGateway
from activities.fleet import Fleet, fan_out
from activities.hosts import HostFacts, HostReporter, report_interval
from activities.placement import PlacementActivities
from contract.hosts import HostRef, PlaceAnswer, PlaceRequest, ReserveRequest, host_queue
from contract.lock import coordination_queue
from contract.models import LABEL_GAME_ID
from contract.settings import Settings
from rtjobs.dev.server import DEV_SERVER_CONFIG, dynamic_config_args
from tests.support.proc_stats import read_sample
from tests.support.processes import DEAD_DOCKER, Process, process_env, start_ready_worker
from tests.support.temporal_server import TemporalDevServer
from workflows.lock_holder import LOCK_ACTIVITY_TIMEOUT, LOCK_RETRY_POLICY

GAMES_PER_HOST = 100
POINTS = "10x1000,100x10000,1000x100000"
QUICK_POINTS = "10x1000,100x10000"
QUICK_PLACEMENTS = 1000
TASK_GOAL_MS = 200
PAYLOAD_GOAL_KIB = 256
RATIO_GOAL = 1.5
# The dev server's SQLite without a sync per commit: its state is thrown away, and with one (the default)
# a thousand hosts' reports (one workflow task each: ~300 commits/s) waited on this shared disk's fsync,
# not on the design (persistence deadline errors, tasks timing out before they started, no ingest).
SQLITE_ARGS = [arg for pragma in ("journal_mode=WAL", "synchronous=OFF") for arg in ("--sqlite-pragma", pragma)]
# Histories fetched at once after a point (a thousand hosts' workflows, each with its chain of runs).
HISTORY_FAN_OUT = 16
TIMELINE_BUCKET_S = 10.0
TASK_ENDS = (
    EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT,
)


def game_id() -> str:
    """A platform-shaped game id (a UUID): a host's report and state are mostly game ids."""
    return str(uuid.uuid4())


class _Container:
    def __init__(self, game: str) -> None:
        self._container = {"Labels": {LABEL_GAME_ID: game}}


class StandInDocker:
    """What `HostReporter` asks of its Docker engine (`gateway.call(..., client.containers.list)`): the
    containers of ours, one per game the host holds. Games placed here join it, as a started engine would.
    """

    def __init__(self, games: list[str]) -> None:
        self.games = set(games)
        self.client = self
        self.containers = self

    async def call(self, what: str, fn: Any, code: Any, **kwargs: Any) -> Any:
        return await fn()

    async def list(self, **kwargs: Any) -> list[_Container]:
        return [_Container(g) for g in self.games]


class CountedWarnings(logging.Filter):
    """Counts the reporters' "could not report host" warnings (a thousand hosts refused at once would
    flood the output) instead of printing them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and record.getMessage().startswith("could not report host"):
            self.count += 1
            return False
        return True


REPORT_FAILURES = CountedWarnings()
logging.getLogger("rtjobs.hosts").addFilter(REPORT_FAILURES)


@dataclass
class PointResult:
    hosts: int
    games: int
    unplaced: int = 0  # answers without a host (no host had room, or none was live)
    retries: int = 0  # attempts that timed out or failed, asked again as the local activity would
    retry_causes: Counter[str] = field(default_factory=Counter)  # printed on stderr after the point
    task_failures: Counter[str] = field(default_factory=Counter)  # why workflow tasks failed or timed out: the same
    report_failures: int = 0
    known: int = 0  # hosts the fleet's listing showed, each live by its workflow, before placements began
    cut: int = 0  # placements not answered (or not yet asked) when the point's time budget ran out
    ingest_s: float = 0.0
    place_s: float = 0.0
    updates: int = 0
    probes: int = 0
    asked_all: int = 0  # placements whose samples found no room: every host was asked
    worker_cpu_s: float = 0.0
    history: dict[str, float] = field(default_factory=dict)
    began_at: float = 0.0  # the placements' start (epoch s): the timeline's zero
    placed: list[tuple[float, float]] = field(default_factory=list)  # (arrival s after began_at, latency s)
    timeline: Counter[tuple[int, str]] = field(default_factory=Counter)  # (10 s bucket, what) -> how many

    def pct(self, q: float) -> float:
        return percentile_ms([latency for _, latency in self.placed], q)


def percentile_ms(latencies_s: list[float], q: float) -> float:
    """The q-quantile of latencies in seconds, in ms (the nearest rank at or above q; NaN for none)."""
    if not latencies_s:
        return float("nan")
    ordered = sorted(latencies_s)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def largest_payload(message: Message) -> int:
    """The largest `Payload` anywhere inside `message` (inputs, signal and update arguments, results)."""
    if isinstance(message, Payload):
        return message.ByteSize()
    best = 0
    for descriptor, value in message.ListFields():
        if descriptor.type != descriptor.TYPE_MESSAGE:
            continue
        if not descriptor.is_repeated:
            items = [value]
        elif descriptor.message_type is not None and descriptor.message_type.GetOptions().map_entry:
            items = [v for v in value.values() if isinstance(v, Message)]
        else:
            items = list(value)
        for item in items:
            best = max(best, largest_payload(item))
    return best


async def coordination_history(
    client: Client, task_queue: str, causes: Counter[str], timeline: Counter[tuple[int, str]], zero: float
) -> dict[str, float]:
    """Figures of every run of every workflow on the coordination queue: every host's workflow, each run of
    its continue-as-new chain (followed through the histories as well, should the listing lag behind), and
    any run started afresh. The workflows still running are ended first (their reporters have stopped).
    """
    listed: list[WorkflowExecution] = [e async for e in client.list_workflows(f"TaskQueue = '{task_queue}'")]

    async def terminate(workflow_id: str) -> None:
        with contextlib.suppress(RPCError):
            await client.get_workflow_handle(workflow_id).terminate("benchmark point done")

    await fan_out(sorted({e.id for e in listed if e.status == WorkflowExecutionStatus.RUNNING}), terminate)

    async def history(run: tuple[str, str]) -> list[HistoryEvent]:
        handle = client.get_workflow_handle(run[0], run_id=run[1])
        return [e async for e in handle.fetch_history_events()]

    figures = {"runs": 0, "CAN": 0, "events": 0, "max run events": 0, "max task ms": 0.0, "failed tasks": 0}
    figures |= {"tasks": 0, "tasks > goal": 0, "max event KiB": 0.0, "max payload KiB": 0.0, "max CAN state KiB": 0.0}
    figures |= {"placing max task ms": 0.0, "placing tasks > goal": 0}
    seen: set[tuple[str, str]] = set()
    todo = [(e.id, e.run_id) for e in listed]
    while todo:
        runs = [r for r in dict.fromkeys(todo) if r not in seen]
        seen.update(runs)
        todo = []
        for (workflow_id, _), events in zip(runs, await fan_out(runs, history, HISTORY_FAN_OUT), strict=True):
            if not events:
                continue
            earlier = events[0].workflow_execution_started_event_attributes.continued_execution_run_id
            if earlier:
                todo.append((workflow_id, earlier))
            if events[-1].event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
                carried = events[-1].workflow_execution_continued_as_new_event_attributes
                todo.append((workflow_id, carried.new_execution_run_id))
                figures["CAN"] += 1
                figures["max CAN state KiB"] = max(figures["max CAN state KiB"], carried.input.ByteSize() / 1024)
            add_run_figures(figures, events, causes, timeline, zero)
    return figures


def add_run_figures(
    figures: dict[str, float],
    events: list[HistoryEvent],
    causes: Counter[str] | None = None,
    timeline: Counter[tuple[int, str]] | None = None,
    zero: float = 0.0,
) -> None:
    """One run's events, tasks and sizes added to the point's figures, the longest task once placements
    began at `zero` (the fleet's first reports, all at once, come before), why its tasks failed (to
    `causes`), and its reports, slow and timed-out tasks by the 10 s after `zero` they fell in (to `timeline`).
    """
    figures["runs"] += 1
    figures["events"] += len(events)
    figures["max run events"] = max(figures["max run events"], len(events))
    started: dict[int, float] = {}
    for event in events:
        figures["max event KiB"] = max(figures["max event KiB"], event.ByteSize() / 1024)
        figures["max payload KiB"] = max(figures["max payload KiB"], largest_payload(event) / 1024)
        at = event.event_time.ToMicroseconds() / 1e6
        bucket = int((at - zero) // TIMELINE_BUCKET_S)
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED and timeline is not None:
            timeline[bucket, "reports"] += 1
        elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
            started[event.event_id] = at
        elif event.event_type in TASK_ENDS:
            # A task that timed out counts with its time until the timeout (at least that long).
            attrs: Any = {
                EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED: event.workflow_task_completed_event_attributes,
                EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED: event.workflow_task_failed_event_attributes,
                EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT: event.workflow_task_timed_out_event_attributes,
            }[event.event_type]
            took_ms = (at - started.get(attrs.started_event_id, at)) * 1000
            completed = event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
            figures["tasks"] += 1
            figures["tasks > goal"] += took_ms > TASK_GOAL_MS
            figures["max task ms"] = max(figures["max task ms"], took_ms)
            figures["failed tasks"] += not completed
            if at >= zero:
                figures["placing max task ms"] = max(figures["placing max task ms"], took_ms)
                figures["placing tasks > goal"] += took_ms > TASK_GOAL_MS
            if causes is not None and not completed:
                causes[task_end_cause(event)] += 1
            if timeline is not None:
                timeline[bucket, "tasks > 200 ms"] += took_ms > TASK_GOAL_MS
                timeline[bucket, "task timeouts"] += event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT


def print_timeline(r: PointResult) -> None:
    """The point's placements, reports and slow tasks by 10 s (on stderr): what a slow tail coincides with."""
    by_bucket: dict[int, list[float]] = {}
    for arrived, latency in r.placed:
        by_bucket.setdefault(int(arrived // TIMELINE_BUCKET_S), []).append(latency)
    buckets = sorted({b for b, _ in r.timeline} | set(by_bucket))
    for bucket in buckets:
        latencies = by_bucket.get(bucket, [])
        p99 = f"{percentile_ms(latencies, 0.99):.0f}" if latencies else "-"
        what = ", ".join(f"{k} {r.timeline[bucket, k]}" for k in ("reports", "task timeouts", "tasks > 200 ms"))
        print(
            f"    {bucket * TIMELINE_BUCKET_S:>5.0f} s: placed {len(latencies)}, p99 {p99} ms, {what}",
            file=sys.stderr,
        )


def task_end_cause(event: HistoryEvent) -> str:
    """Why a workflow task failed or timed out, in a few words (printed on stderr after the point)."""
    if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT:
        kind = event.workflow_task_timed_out_event_attributes.timeout_type
        return f"timed out ({TimeoutType.Name(kind)})"
    failed = event.workflow_task_failed_event_attributes
    message = failed.failure.message.splitlines()[0] if failed.failure.message else ""
    return f"failed ({WorkflowTaskFailedCause.Name(failed.cause)}): {message}"[:160]


@contextlib.asynccontextmanager
async def stand_in_hosts(
    client: Client, settings: Settings, hosts: int, games_per_host: int
) -> AsyncIterator[tuple[dict[str, StandInDocker], list[HostReporter]]]:
    """`hosts` reporters, each reporting once now (all hosts known), then every report interval from a
    random moment on (workers of a fleet do not start in step).
    """
    dockers: dict[str, StandInDocker] = {}
    reporters: list[HostReporter] = []
    for i in range(hosts):
        host_id = str(uuid.uuid4())  # as a host's marker volume holds (`activities/hosts.py`)
        ref = HostRef(host_id=host_id, name=f"host-{i:04d}", queue=host_queue(settings.task_queue, host_id))
        docker = dockers[host_id] = StandInDocker([game_id() for _ in range(games_per_host)])
        facts = HostFacts(ref, games_per_host * 100 + 10_000, "bench", "20.10.24", "bridge/local")
        reporters.append(HostReporter(client, cast(DockerGateway, docker), settings, facts))
    gate = asyncio.Semaphore(50)

    async def first(reporter: HostReporter) -> None:
        async with gate:
            await reporter.report()

    await asyncio.gather(*(first(r) for r in reporters))

    async def periodic(reporter: HostReporter) -> None:
        await asyncio.sleep(random.uniform(0, settings.host_report_every_s))
        async with reporter.running():
            await asyncio.Event().wait()

    tasks = [asyncio.create_task(periodic(r)) for r in reporters]
    try:
        yield dockers, reporters
    finally:
        # Cancelled again until done: a reporter that outlived its point would start its host's workflow
        # again (signal-with-start) after the point's workflows were ended and measured.
        while pending := [t for t in tasks if not t.done()]:
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=1)


async def hosts_live(client: Client, task_queue: str, hosts: int, budget_s: float) -> int:
    """How many hosts the fleet's listing shows live (each by its own workflow, `Fleet.views`, what
    placement samples from) once it shows all, or when `budget_s` ran out.
    """
    fleet = Fleet(client, task_queue)
    deadline = time.monotonic() + budget_s
    live = 0
    while live < hosts and time.monotonic() < deadline:
        with contextlib.suppress(RPCError, TimeoutError):
            async with asyncio.timeout(max(1.0, deadline - time.monotonic())):
                live = sum(1 for v in await fleet.views() if v.live)
        await asyncio.sleep(0.5)
    return live


async def settled(
    client: Client, task_queue: str, reporters: list[HostReporter], settings: Settings, budget_s: float
) -> int:
    """How many hosts are live once every stand-in worker has counted the fleet (its interval the fleet's,
    `report_interval`) and every host's workflow answers again. A fleet whose workers all start at once
    reports twice at RTJOBS_HOST_REPORT_EVERY_S before they count it (at 1,000 hosts: 2,000 reports and
    1,000 counts in ~20 s, sticky tasks timing out behind them); placements measure the fleet after that.
    """
    expected = report_interval(len(reporters), settings)
    deadline = time.monotonic() + budget_s
    while time.monotonic() < deadline:
        if all(r.every_s == expected for r in reporters):
            break
        await asyncio.sleep(0.5)
    return await hosts_live(client, task_queue, len(reporters), max(1.0, deadline - time.monotonic()))


@dataclass
class Stalls:
    """This process's pauses while it places: the placers share it with every stand-in host's reporter, so a
    pause of its event loop (a full garbage collection of 1,000 hosts' game ids) delays every placement in
    flight, a cost of the benchmark's one process that a real fleet's separate workers do not share.
    """

    loop_ms: list[float] = field(default_factory=list)  # event-loop lags over 20 ms
    gc_ms: list[float] = field(default_factory=list)  # full (generation 2) collections
    _gc_began: float = 0.0

    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._gc_began = time.perf_counter()
        else:
            self.gc_ms.append((time.perf_counter() - self._gc_began) * 1000)

    async def watch(self) -> None:
        tick = 0.005
        last = time.perf_counter()
        while True:
            await asyncio.sleep(tick)
            now = time.perf_counter()
            if (lag := (now - last - tick) * 1000) > 20:
                self.loop_ms.append(lag)
            last = now

    def told(self) -> str:
        worst = max(self.loop_ms, default=0.0)
        gcs = f"{len(self.gc_ms)} full collections, the longest {max(self.gc_ms, default=0.0):.0f} ms"
        return f"this process's event loop: {len(self.loop_ms)} lags > 20 ms, the longest {worst:.0f} ms; {gcs}"


def counting_fallbacks(placer: PlacementActivities, result: PointResult) -> PlacementActivities:
    """The placer, counting its placements whose samples found no room (then every host is asked: the
    cost that two-choice sampling is meant to avoid, so it is counted rather than inferred).
    """
    choose_from_all = placer._choose_from_all

    async def counted(fleet: Fleet, ask: ReserveRequest) -> PlaceAnswer:
        result.asked_all += 1
        return await choose_from_all(fleet, ask)

    placer._choose_from_all = counted  # type: ignore[method-assign]
    return placer


async def place_all(
    client: Client, settings: Settings, dockers: dict[str, StandInDocker], args: argparse.Namespace, result: PointResult
) -> None:
    placers = [counting_fallbacks(PlacementActivities(client), result) for _ in range(args.placers)]
    # Each placer samples the fleet first, as a worker that has placed before holds its sample (a worker's
    # first placement waits for its first: a count of the fleet and a window's listing).
    await asyncio.gather(*(p.fleet(settings.task_queue).sample() for p in placers))
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, task_queue=settings.task_queue)
    gate = asyncio.Semaphore(args.concurrency)
    timeout = LOCK_ACTIVITY_TIMEOUT.total_seconds()

    async def one(i: int) -> None:
        request = PlaceRequest(game_id=game_id(), create=True, job=f"bench-start-{i}")
        placer = placers[i % len(placers)]
        if args.rate:  # open loop: the i-th placement arrives at i / rate, and its wait at the gate counts
            await asyncio.sleep(max(0.0, started + i / args.rate - time.perf_counter()))
        arrived = time.perf_counter()
        async with gate:
            began = arrived if args.rate else time.perf_counter()
            pause = LOCK_RETRY_POLICY.initial_interval.total_seconds()
            while True:
                try:
                    answer: PlaceAnswer = await asyncio.wait_for(env.run(placer.place_game_engine, request), timeout)
                    break
                except Exception as err:  # a timed-out or failed local activity is retried by its policy
                    result.retries += 1
                    result.retry_causes[f"{type(err).__name__}: {err}"[:160]] += 1
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, LOCK_RETRY_POLICY.maximum_interval.total_seconds())  # type: ignore[union-attr]
            result.placed.append((began - started, time.perf_counter() - began))
        if answer.chosen is None:
            result.unplaced += 1
        elif answer.chosen.host_id in dockers:
            dockers[answer.chosen.host_id].games.add(request.game_id)

    # What the process holds by now (the client, every stand-in host's reporter and game ids) is left out of
    # the collector's full passes, as a worker may freeze its start-up heap: unfrozen, a full pass took up to
    # 110 ms here, a pause of every placement in flight, and the stand-ins' share (no placing worker's) grows
    # with the hosts. `Stalls` tells what pauses remain.
    gc.collect()
    gc.freeze()
    stalls = Stalls()
    watcher = asyncio.create_task(stalls.watch())
    gc.callbacks.append(stalls.on_gc)
    began = started = time.perf_counter()
    result.began_at = time.time()
    tasks = [asyncio.create_task(one(i)) for i in range(args.placements)]
    _, pending = await asyncio.wait(tasks, timeout=args.budget_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    result.place_s = time.perf_counter() - began
    gc.callbacks.remove(stalls.on_gc)
    gc.unfreeze()
    watcher.cancel()
    print(f"    {stalls.told()}", file=sys.stderr)
    result.updates = sum(p.updates_sent for p in placers)
    result.probes = sum(p.probes_sent for p in placers)


async def measure(
    client: Client, server: TemporalDevServer, hosts: int, games: int, args: argparse.Namespace
) -> PointResult:
    queue = f"fleet-{hosts}-{uuid.uuid4().hex[:6]}"
    settings = Settings(task_queue=queue, host_report_every_s=args.report_every)
    cache = {} if args.worker_cache is None else {"RTJOBS_MAX_CACHED_WORKFLOWS": str(args.worker_cache)}
    env = process_env(
        **cache,
        TEMPORAL_ADDRESS=server.address,
        REDIS_URL=Settings().redis_url,
        DOCKER_HOST=DEAD_DOCKER,
        RTJOBS_TASK_QUEUE=queue,
        RTJOBS_RESULTS_STREAM=f"bench:fleet:{queue}",
    )
    result = PointResult(hosts=hosts, games=games)
    processes: list[Process] = []
    try:
        worker = await start_ready_worker(processes, env)
        began = time.perf_counter()
        failures_before = REPORT_FAILURES.count
        # A watchdog over the whole point: hosts' workflows that stopped answering must not stall the benchmark.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(args.ingest_budget_s + args.budget_s + 120):
                async with stand_in_hosts(client, settings, hosts, games // hosts) as (dockers, reporters):
                    result.known = await hosts_live(client, queue, hosts, args.ingest_budget_s)
                    if result.known == hosts:
                        result.known = await settled(client, queue, reporters, settings, args.ingest_budget_s)
                    result.ingest_s = time.perf_counter() - began
                    if result.known == hosts:
                        cpu_before = read_sample(worker.proc.pid).cpu_s
                        await place_all(client, settings, dockers, args, result)
                        result.worker_cpu_s = read_sample(worker.proc.pid).cpu_s - cpu_before
        result.cut = args.placements - len(result.placed)  # (a fleet never all live: all of them)
        result.report_failures = REPORT_FAILURES.count - failures_before
        # Placements cut short may still have a reserve update in flight: let it land in the histories.
        await asyncio.sleep(LOCK_ACTIVITY_TIMEOUT.total_seconds() if result.cut else 1)
        result.history = await coordination_history(
            client, coordination_queue(queue), result.task_failures, result.timeline, result.began_at
        )
    finally:
        for proc in processes:
            proc.kill()
    return result


COLUMNS = ["hosts", "known", "games", "placed", "cut", "unplaced", "retries", "place/s", "p50 ms", "p99 ms"]
COLUMNS += [
    "max task ms",
    "tasks>200ms",
    "placing: max task ms",
    "placing: tasks>200ms",
    "failed tasks",
    "max event KiB",
    "max payload KiB",
    "max CAN state KiB",
]
COLUMNS += ["events", "max run events", "runs", "CAN", "updates", "probes", "asked all", "ingest s", "failed reports"]
COLUMNS += ["worker cpu ms/placement"]


def row(r: PointResult) -> list[str]:
    h = r.history
    n = len(r.placed)
    return [
        f"{r.hosts}",
        f"{r.known}",
        f"{r.games}",
        f"{n}",
        f"{r.cut}",
        f"{r.unplaced}",
        f"{r.retries}",
        f"{n / max(r.place_s, 1e-9):.0f}",
        f"{r.pct(0.5):.0f}",
        f"{r.pct(0.99):.0f}",
        f"{h['max task ms']:.0f}",
        f"{h['tasks > goal']:.0f}",
        f"{h['placing max task ms']:.0f}",
        f"{h['placing tasks > goal']:.0f}",
        f"{h['failed tasks']:.0f}",
        f"{h['max event KiB']:.1f}",
        f"{h['max payload KiB']:.1f}",
        f"{h['max CAN state KiB']:.1f}",
        f"{h['events']:.0f}",
        f"{h['max run events']:.0f}",
        f"{h['runs']:.0f}",
        f"{h['CAN']:.0f}",
        f"{r.updates}",
        f"{r.probes}",
        f"{r.asked_all}",
        f"{r.ingest_s:.1f}",
        f"{r.report_failures}",
        f"{r.worker_cpu_s * 1000 / max(n, 1):.1f}",
    ]


def cache_told(args: argparse.Namespace) -> str:
    """The benchmark's worker's workflow cache: the product's default (its environment is not passed on),
    unless `--worker-cache` sized it.
    """
    default = Settings.model_fields["max_cached_workflows"].default
    return f"{default} (the default)" if args.worker_cache is None else f"{args.worker_cache}"


def print_table(rows: list[PointResult], args: argparse.Namespace) -> None:
    load = f"{args.concurrency}"
    if args.rate:
        load = f"arriving at {args.rate:g}/s (open loop), at most {args.concurrency}"
    print(
        f"fleet scale benchmark: {args.placements} placements per point, {load} in flight over "
        f"{args.placers} placing workers, reports every {args.report_every:g} s, {GAMES_PER_HOST} games per host "
        f"at the default points, worker cache {cache_told(args)}, {os.cpu_count()} cores"
    )
    cells = [COLUMNS, *(row(r) for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    for line in cells:
        print("  ".join(v.rjust(w) for v, w in zip(line, widths, strict=True)))
    placed = [r for r in rows if r.placed]
    for r in rows:
        if r.known < r.hosts:
            print(f"{r.hosts} hosts: the fleet showed {r.known} live hosts after {r.ingest_s:.0f} s; nothing placed")
    small, large = (placed[0], placed[-1]) if placed else (rows[0], rows[0])
    if len(placed) > 1:
        for name, q in (("p50", 0.5), ("p99", 0.99)):
            ratio = large.pct(q) / max(small.pct(q), 1e-9)
            print(f"{name} {large.hosts} hosts / {small.hosts} hosts: {ratio:.2f}x (goal <= {RATIO_GOAL}x)")
    worst_task = max(r.history["max task ms"] for r in rows)
    worst_placing = max(r.history["placing max task ms"] for r in rows)
    worst_payload = max(max(r.history["max payload KiB"], r.history["max event KiB"]) for r in rows)
    worst_state = max(r.history["max CAN state KiB"] for r in rows)
    print(
        f"largest workflow task: {worst_task:.0f} ms (goal <= {TASK_GOAL_MS} ms); {worst_placing:.0f} ms once placing"
    )
    print(f"largest history event or payload: {worst_payload:.1f} KiB (goal <= {PAYLOAD_GOAL_KIB} KiB)")
    print(f"largest state carried across continue-as-new: {worst_state:.1f} KiB (goal <= {PAYLOAD_GOAL_KIB} KiB)")


def dump_tasks() -> None:
    for task in asyncio.all_tasks():
        task.print_stack(limit=6, file=sys.stderr)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"points {QUICK_POINTS}, {QUICK_PLACEMENTS} placements")
    parser.add_argument("--points", default=None, help=f"HOSTSxGAMES,... (default {POINTS})")
    parser.add_argument("--placements", type=int, default=None, help="placements per point (default 10000)")
    parser.add_argument("--concurrency", type=int, default=100, help="placements in flight at most")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="open loop: placements arrive at this rate a second (default: closed loop, --concurrency in flight)",
    )
    parser.add_argument("--placers", type=int, default=4, help="placement activity instances (worker processes)")
    parser.add_argument("--report-every", type=float, default=Settings().host_report_every_s)
    parser.add_argument("--budget-s", type=float, default=900.0, help="placement time per point, then cut short")
    parser.add_argument("--ingest-budget-s", type=float, default=120.0, help="time for the fleet's first reports")
    parser.add_argument(
        "--worker-cache", type=int, default=None, help="the worker's RTJOBS_MAX_CACHED_WORKFLOWS (default: its own)"
    )
    args = parser.parse_args()
    points = args.points or (QUICK_POINTS if args.quick else POINTS)
    if args.placements is None:
        args.placements = QUICK_PLACEMENTS if args.quick else 10_000

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, dump_tasks)  # `kill -USR1`: where a stuck run waits
    server = TemporalDevServer().start(extra_args=[*dynamic_config_args(DEV_SERVER_CONFIG), *SQLITE_ARGS])
    rows: list[PointResult] = []
    try:
        client = await Client.connect(server.address, data_converter=pydantic_data_converter)
        for point in points.split(","):
            hosts, games = (int(v) for v in point.lower().split("x"))
            rows.append(await measure(client, server, hosts, games, args))
            print(f"  point {hosts} hosts x {games} games done: {row(rows[-1])}", file=sys.stderr, flush=True)
            for cause, count in rows[-1].retry_causes.most_common(5):
                print(f"    {count} placement attempts failed: {cause}", file=sys.stderr, flush=True)
            for cause, count in rows[-1].task_failures.most_common(5):
                print(f"    {count} workflow tasks {cause}", file=sys.stderr, flush=True)
            print_timeline(rows[-1])
    finally:
        server.close()
    print_table(rows, args)
    sys.stdout.flush()
    os._exit(0)  # temporalio can abort at interpreter exit (sdk-python #300); the figures are printed


if __name__ == "__main__":
    asyncio.run(main())
