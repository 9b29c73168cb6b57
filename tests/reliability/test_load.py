"""Scenario 7, load: 500 jobs in flight at once against one real `python worker.py`.

The mix: fresh starts of distinct games with the tiny healthy image, start replays, fresh stops,
stop replays of games without a container, and a few games with several jobs in a row. All games
are sent at once (one `asyncio.gather`); inside a game its jobs are sent one after the other, as the
Runtime Manager does, so their start times (the lock's order key) are in the planned order.

The verdict: exactly one entry per job run, the one the run published (its `status` query names
the entry id); for each game, each entry with the outcome, code and container id that the order
its jobs ran in implies, the game's container state that of its last job, nothing else left; and
that order (the entries' order) is the order the jobs were started in, except where the README's
stated limit applies: an earlier-started job whose lock request came later than
RTJOBS_ORDER_SETTLE_S after the later job's start (its first workflow task sat in a backlog) is
ordered at its arrival. Such inversions are counted and printed; any other inversion fails the test.
Worker RSS and CPU are printed for the README.

No bound on the total time: how long 500 jobs take is a figure of the machine (printed, like the
RSS), not of the product. What fails is a hang: no job finishing for STALL_S while some are still
running; the failure then says what the stuck jobs are doing.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import aiodocker
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client

from contract.models import LABEL_GAME_ID, JobResult, JobStatus
from contract.settings import Settings
from rtjobs.client import start_job, stop_job
from tests.support.proc_stats import ProcSampler
from tests.support.runs import Run
from tests.support.stack import Stack
from tests.support.streams import read_entries_at

START, STOP = "start", "stop"
FRESH, REPLAY = ("success", ""), ("success", "replay_no_op")
TOTAL_JOBS = 500
# (label, games, each game's jobs in order). Fresh container starts: 15 + 15 + 8 x 2 = 46.
SHAPES: list[tuple[str, int, list[str]]] = [
    ("replay", 15, [START, START]),  # a fresh start, then a start replay: left running
    ("cycle", 15, [START, STOP]),  # a fresh start, then a fresh stop: left without a container
    ("chain", 8, [STOP, START, STOP, START, START]),  # replay, fresh, fresh, fresh, replay: left running
    ("stops", 20, [STOP] * 5),  # five stop replays in a row: order seen only through the entry ids
    ("stop", 300, [STOP]),  # one stop replay each: the cheap bulk
]
STOP_GRACE_S = 2
# How long no job may finish while some are still running. Not a speed bound: it has to exceed the
# longest silence of a healthy run on a slow machine, and that is the wait for the first result
# (every job's first workflow tasks and the locks' are queued before any job's later ones, so it
# grows with the machine's slowness): measured 7-14 s on this 2-core machine (shared with other test
# runs), 30 s with the test's processes pinned to one core, where the whole wait took 248 s (the old
# 240 s total bound failed there). At the tail one job can go quiet for a missed 20 s heartbeat or a
# 10 s workflow-task timeout. A hang (a job whose workflow task fails on every attempt, a turn never
# granted) stays silent for good and fails here, naming the stuck jobs and their last task failure.
STALL_S = 300.0
QUERY_CONCURRENCY = 20
ORDER_SETTLE_S = Settings.model_fields["order_settle_s"].default  # the worker runs with the default


@dataclass
class PlannedRun:
    """A run, its kind, and what it reports when its game's jobs run in the planned order."""

    run: Run
    kind: str
    expected: tuple[str, str]


def plan(prefix: str) -> dict[str, list[str]]:
    games = {f"{prefix}-{label}{i}": list(jobs) for label, count, jobs in SHAPES for i in range(count)}
    assert sum(len(jobs) for jobs in games.values()) == TOTAL_JOBS
    return games


def expected_codes(jobs: list[str]) -> list[tuple[str, str]]:
    """What each job of a game reports when the game starts without a container and its jobs run in order."""
    running = False
    codes = []
    for kind in jobs:
        codes.append(REPLAY if (kind == START) == running else FRESH)
        running = kind == START
    return codes


async def send_game(client: Client, task_queue: str, image: str, game_id: str, jobs: list[str]) -> list[PlannedRun]:
    """One game's jobs, each sent once the previous one was accepted (so its start time is later)."""
    sent = []
    for i, (kind, expected) in enumerate(zip(jobs, expected_codes(jobs), strict=True)):
        job = f"{i}"
        if kind == START:
            handle = await start_job(client, game_id, image=image, job=job, task_queue=task_queue)
        else:
            handle = await stop_job(client, game_id, stop_timeout_s=STOP_GRACE_S, job=job, task_queue=task_queue)
        sent.append(PlannedRun(Run(game_id, handle, frozenset({expected})), kind, expected))
    return sent


@dataclass
class Finished:
    results: list[JobResult]
    at: list[float]  # when each run was seen finished (time.monotonic())

    def first_after(self, since: float) -> float:
        return min(self.at) - since

    def longest_gap(self, since: float) -> float:
        """The longest time without a job finishing, from `since` to the last one."""
        times = sorted([since, *self.at])
        return max(later - earlier for earlier, later in itertools.pairwise(times))


async def finish_all(runs: list[PlannedRun]) -> Finished:
    """Every run's result, in order; fails as soon as no run has finished for STALL_S."""
    tasks: dict[asyncio.Future[JobResult], int] = {
        asyncio.ensure_future(p.run.handle.result()): i for i, p in enumerate(runs)
    }
    found: dict[int, tuple[JobResult, float]] = {}
    pending: set[asyncio.Future[JobResult]] = set(tasks)
    try:
        while pending:
            done, pending = await asyncio.wait(pending, timeout=STALL_S, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                stuck = [runs[tasks[t]] for t in pending]
                details = [await stuck_detail(p) for p in stuck[:3]]
                raise AssertionError(
                    f"no job finished for {STALL_S:.0f} s; {len(stuck)} of {len(runs)} still running:\n"
                    + "\n".join(details)
                )
            now = time.monotonic()
            for task in done:
                found[tasks[task]] = (task.result(), now)
    finally:
        for task in pending:
            task.cancel()
    return Finished([found[i][0] for i in range(len(runs))], [found[i][1] for i in range(len(runs))])


async def stuck_detail(planned: PlannedRun) -> str:
    """What a run that does not finish is doing: its pending activities and its last failed task."""
    handle = planned.run.handle
    desc = await handle.describe()
    pending = [
        f"{p.activity_type.name} attempt {p.attempt} {p.last_failure.message[:150]!r}"
        for p in desc.raw_description.pending_activities
    ]
    failed = [
        e.workflow_task_failed_event_attributes.failure.message[:300]
        async for e in handle.fetch_history_events()
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
    ]
    return (
        f"  {handle.id}: {desc.status.name if desc.status else '?'}, pending activities {pending}, "
        f"{len(failed)} failed workflow task(s){': ' + failed[-1] if failed else ''}"
    )


def entry_key(entry_id: str) -> tuple[int, int]:
    millis, _, seq = entry_id.partition("-")
    return int(millis), int(seq)


async def entry_ids(runs: list[PlannedRun]) -> list[str]:
    """Each run's own entry id, from its `status` query (a few at a time: each replays a closed run)."""
    gate = asyncio.Semaphore(QUERY_CONCURRENCY)

    async def one(planned: PlannedRun) -> str:
        async with gate:
            status: JobStatus = await planned.run.handle.query("status", result_type=JobStatus)
        return status.entry_id or ""

    return list(await asyncio.gather(*(one(p) for p in runs)))


def in_order(ids: list[str]) -> bool:
    keys = [entry_key(i) for i in ids]
    return keys == sorted(keys) and len(set(keys)) == len(keys)


async def first_task_delays(runs: list[PlannedRun]) -> list[str]:
    """Evidence for an order failure: per run, its start time and how long after it the run's first
    workflow task started and its lock request was made (an acquire activity scheduled, or a local
    activity's marker recorded).
    """
    lines = []
    for planned in runs:
        events = [e async for e in planned.run.handle.fetch_history_events()]
        first = events[0]
        task = next((e for e in events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED), None)
        lock = next((e for e in events if is_lock_request(e)), None)
        lines.append(
            f"{planned.run.handle.id}: started {first.event_time.ToDatetime():%H:%M:%S.%f}, "
            f"first task {since(first, task)}, lock request {since(first, lock)}"
        )
    return lines


async def start_and_lock_times(runs: list[PlannedRun]) -> list[tuple[float, float]]:
    """Per run: its start time and the time of its lock request (epoch seconds, server clock)."""
    times = []
    for planned in runs:
        events = [e async for e in planned.run.handle.fetch_history_events()]
        lock = next(e for e in events if is_lock_request(e))
        times.append((events[0].event_time.ToDatetime().timestamp(), lock.event_time.ToDatetime().timestamp()))
    return times


async def unexplained_inversions(game_runs: list[PlannedRun], game_ids: list[str]) -> list[str]:
    """Pairs run out of start order that the settle window does not explain: job A started before B,
    B's entry came first, yet A asked for its turn within the settle window after B's start.
    """
    times = await start_and_lock_times(game_runs)
    keys = [entry_key(i) for i in game_ids]
    bad = []
    for a in range(len(game_runs)):
        for b in range(a + 1, len(game_runs)):
            if keys[b] < keys[a] and times[a][1] <= times[b][0] + ORDER_SETTLE_S:
                bad.append(f"{game_runs[a].run.handle.id} before {game_runs[b].run.handle.id}")
    return bad


def since(first: HistoryEvent, event: HistoryEvent | None) -> str:
    if event is None:
        return "none"
    return f"+{(event.event_time.ToDatetime() - first.event_time.ToDatetime()).total_seconds():.2f} s"


def is_lock_request(event: HistoryEvent) -> bool:
    # A job's first local activity (the first marker of its history) is its request for the turn.
    return event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED


def check_game(runs: list[PlannedRun], ids: list[str], finished: list[JobResult]) -> str | None:
    """Codes and container ids of one game's results, in the order its jobs actually ran (their
    entries' order), so that this holds even where the start order was not kept; returns the
    container id the game's last job left running, if any.

    A start replay and a fresh stop name the container the game runs; a fresh start makes a new one.
    """
    ran = sorted(zip(runs, ids, finished, strict=True), key=lambda r: entry_key(r[1]))
    expected = expected_codes([planned.kind for planned, _, _ in ran])
    live: str | None = None
    made: set[str] = set()
    for (planned, _, result), want in zip(ran, expected, strict=True):
        job = planned.run.handle.id
        got = (result.outcome, result.error_code)
        assert got == want, (job, result, [p.run.handle.id for p, _, _ in ran])
        if planned.kind == START and got == FRESH:
            assert result.container_id and result.container_id not in made, (job, result)
            made.add(result.container_id)
            live = result.container_id
        elif planned.kind == START:
            assert result.container_id == live, (job, result, live)
        elif got == FRESH:
            assert result.container_id == live, (job, result, live)
            live = None
        else:
            assert result.container_id == "", (job, result)
    return live


async def containers_by_game(docker_url: str, prefix: str) -> dict[str, list[dict[str, Any]]]:
    """Every container (any state) whose name carries the test's prefix, by its game label."""
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    async with aiodocker.Docker(url=docker_url) as docker:
        for summary in await docker.containers.list(all=True, filters={"name": [f"galaxy-game-{prefix}"]}):
            found[summary["Labels"].get(LABEL_GAME_ID, "?")].append(dict(summary._container))
    return found


@pytest.mark.slow
@pytest.mark.docker
async def test_500_jobs_in_flight(stack: Stack) -> None:
    worker = await stack.start_worker()
    client = stack.client
    games = plan(stack.game_prefix)

    async with ProcSampler(worker.proc.pid) as sampler:
        t0 = time.monotonic()
        sent = await asyncio.gather(
            *(send_game(client, stack.task_queue, stack.images.healthy, g, jobs) for g, jobs in games.items())
        )
        sent_s = time.monotonic() - t0
        runs = [p for game_runs in sent for p in game_runs]
        waited = time.monotonic()
        done = await finish_all(runs)
        wall, waited_s = time.monotonic() - t0, time.monotonic() - waited
    finished = done.results
    assert worker.proc.poll() is None, f"the worker died under load:\n{worker.output()[-3000:]}"
    print(
        f"\n[load] {len(runs)} jobs ({sum(p.kind == START for p in runs)} starts, "
        f"{sum(p.expected == FRESH and p.kind == START for p in runs)} fresh containers) sent in {sent_s:.1f} s; "
        f"all finished in {wall:.1f} s: {len(runs) / wall:.1f} jobs/s; {sampler.summary(wall)}; "
        f"waited {waited_s:.1f} s after the last was sent; first result after {done.first_after(waited):.1f} s, "
        f"longest time without a job finishing {done.longest_gap(waited):.1f} s (fails at {STALL_S:.0f} s)"
    )

    # Exactly one entry per run, under the id the run recorded, with the run's own result.
    ids = await entry_ids(runs)
    entries = dict(await read_entries_at(stack.redis.url, stack.stream))
    assert len(entries) == TOTAL_JOBS, f"{len(entries)} entries for {TOTAL_JOBS} job runs"
    assert len(set(ids)) == TOTAL_JOBS, "two runs name the same entry"
    for planned, entry_id, result in zip(runs, ids, finished, strict=True):
        assert entry_id in entries, f"{planned.run.handle.id}: entry {entry_id!r} not on the stream"
        assert JobResult.model_validate(entries[entry_id]) == result, (planned.run.handle.id, entries[entry_id])

    # Per game: codes, container ids and final state as the order its jobs ran implies; that order
    # is the one they were started in.
    position = 0
    left_running: dict[str, str] = {}
    out_of_order: list[tuple[list[PlannedRun], list[str]]] = []
    for game_runs in sent:
        n = len(game_runs)
        game_ids = ids[position : position + n]
        live = check_game(game_runs, game_ids, finished[position : position + n])
        if live is not None:
            left_running[game_runs[0].run.game_id] = live
        if not in_order(game_ids):
            out_of_order.append((game_runs, game_ids))
        position += n

    found = await containers_by_game(stack.docker_url, stack.game_prefix)
    strays = {g: [c["Id"][:12] for c in cs] for g, cs in found.items() if g not in left_running}
    assert not strays, f"containers left by games whose last job removed (or never made) one: {strays}"
    for game_id, container_id in left_running.items():
        states = [(c["Id"], c["State"]) for c in found.get(game_id, [])]
        assert states == [(container_id, "running")], (game_id, container_id, states)

    unexplained = []
    for game_runs, game_ids in out_of_order:
        unexplained += await unexplained_inversions(game_runs, game_ids)
    multi = sum(len(g) > 1 for g in sent)
    print(
        f"load order: {len(out_of_order)} of {multi} games with several jobs ran out of start order "
        f"(an earlier job's first workflow task came > {ORDER_SETTLE_S} s late); "
        f"unexplained inversions: {len(unexplained)}"
    )
    if unexplained:
        evidence = []
        for game_runs, game_ids in out_of_order[:3]:
            delays = await first_task_delays(game_runs)
            evidence += [f"  {line}; entry {entry_id}" for line, entry_id in zip(delays, game_ids, strict=True)]
        raise AssertionError(
            f"jobs ran out of start order though the earlier one asked for its turn within the {ORDER_SETTLE_S} s "
            f"settle window: {unexplained[:5]}\n" + "\n".join(evidence)
        )
