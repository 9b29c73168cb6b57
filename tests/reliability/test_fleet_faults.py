"""The fleet when workers die: three private dockerds as three hosts, real `python worker.py` processes
SIGKILLed mid-load or for good, the session's dev server and the shared Redis (tests/support/fleet.py).

The verdict of every scenario: each job run has exactly one entry on the stream (its own), the results
of each game, in the order its jobs ran, fit one another (a replay names the running engine, a stop the
one it removed), and what is on the hosts' daemons is what the last job of each game left: its one
engine, on one host, or nothing anywhere.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from contract.engine import ENSURE_REMOVED_ACTIVITY
from tests.support.fleet import (
    FRESH,
    HANG_S,
    REPLAY,
    START,
    STOP,
    Done,
    Fleet,
    assert_engines_as,
    game_ids,
    one_entry_per_run,
    ran_on,
    replay_states,
    run_jobs,
    send,
    send_games,
    start_on,
    until_stream_holds,
)
from tests.support.runs import Run, results

pytestmark = [pytest.mark.docker, pytest.mark.slow]

# Not a speed bound: a job whose worker was SIGKILLed waits out a workflow task timeout (10 s) or a
# Docker activity's heartbeat timeout (20 s) before another worker takes it over.
LOAD_HANG_S = 420.0
# How long a job of a game whose host has no live worker waits for one. Above the time a worker takes
# to start here (a few seconds), so that the restart scenario's worker comes within it.
HOST_WAIT_S = 15
UNAVAILABLE = frozenset({("failure", "docker_unavailable")})


def inversions(done: list[Done]) -> int:
    """Jobs of a game that ran before one of the same game sent earlier (the README's stated limit of
    start order: a job whose first workflow task sat in a backlog is ordered at its arrival).
    """
    sent_index = {d.run.handle.id: int(d.run.handle.id.rsplit("-", 1)[1]) for d in done}
    seen: dict[str, int] = {}
    count = 0
    for d in done:
        index = sent_index[d.run.handle.id]
        if index < seen.get(d.run.game_id, -1):
            count += 1
        seen[d.run.game_id] = max(index, seen.get(d.run.game_id, -1))
    return count


async def fits_the_hosts(fleet: Fleet, runs: list[Run], timeout_s: float) -> dict[str, str]:
    """The verdict (see the module's docstring); also that the hosts count every engine where it
    is. Returns the host of each game left with an engine.
    """
    done = await one_entry_per_run(fleet, runs, timeout_s)
    state = replay_states(done)
    where = await assert_engines_as(fleet, state)
    per_host = Counter(where.values())
    await fleet.until_hosts(
        lambda v: all(v[h].engines == per_host[h] for h in v if v[h].live), f"counting {dict(per_host)}"
    )
    print(
        f"\n{len(runs)} jobs of {len(state)} games: {Counter((d.result.outcome, d.result.error_code) for d in done)};"
        f" left {dict(sorted(per_host.items()))} engines; {inversions(done)} jobs ran before one sent earlier"
    )
    return where


async def test_two_workers_share_one_engines_queue(fleet: Fleet) -> None:
    """Two workers on one engine share its queue and one may die mid load."""
    fleet.settings["RTJOBS_HOST_MAX_ENGINES"] = "20"
    await fleet.start_workers()
    await fleet.start_worker("h1")
    await fleet.until_hosts(lambda v: len(v["h1"].live_workers) == 2, "two live workers on h1")

    plan = {g: [START, START, STOP, START] for g in game_ids(24)}
    runs = await send_games(fleet, plan, FRESH | REPLAY)
    await until_stream_holds(fleet, len(runs) // 4, HANG_S)
    fleet.kill_worker("h1", 0)
    killed = time.monotonic()

    where = await fits_the_hosts(fleet, runs, HANG_S)
    print(f"[two workers on h1] all ended {time.monotonic() - killed:.1f}s after the kill")
    assert set(where.values()) == set(fleet.hosts), where
    views = await fleet.host_views()
    assert views["h1"].live and len(views["h1"].live_workers) == 1, views["h1"]


async def until_scheduled(run: Run, activity_type: str, timeout_s: float = 60.0) -> None:
    """Until the run's `activity_type` is pending: scheduled, waiting for a worker of its queue."""
    deadline = time.monotonic() + timeout_s
    while True:
        desc = await run.handle.describe()
        if any(p.activity_type.name == activity_type for p in desc.raw_description.pending_activities):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{run.handle.id}: no pending {activity_type} within {timeout_s}s ({desc.status})")
        await asyncio.sleep(0.1)


async def test_a_dead_hosts_games_wait_for_it_and_new_games_go_elsewhere(fleet: Fleet) -> None:
    fleet.settings.update(RTJOBS_HOST_MAX_ENGINES="10", RTJOBS_HOST_WAIT_S=str(HOST_WAIT_S))
    await fleet.start_workers()
    ids = game_ids(6, "a")
    every_run, first = await start_on(fleet, {"h1": ids[:2], "h2": ids[2:4], "h3": ids[4:]}, HANG_S)
    engines: dict[str, str | None] = {g: r.container_id for g, r in first.items()}
    where = await assert_engines_as(fleet, engines)
    waits, comes_back = [g for g in ids if where[g] == "h2"]

    fleet.kill_workers("h2")
    await fleet.until_hosts(lambda v: not v["h2"].live, "h2 silent")

    # New games: only on the hosts that are alive.
    more = game_ids(4, "b")
    runs, starts = await run_jobs(fleet, START, more, FRESH, HANG_S)
    every_run += runs
    engines.update({g: r.container_id for g, r in zip(more, starts, strict=True)})
    where = await assert_engines_as(fleet, engines)
    assert {where[g] for g in more} <= {"h1", "h3"}, where

    # A stop of a game on h2 waits RTJOBS_HOST_WAIT_S for a worker of h2 to report, then says which host
    # it waited for.
    runs, [failed] = await run_jobs(fleet, STOP, [waits], UNAVAILABLE, HANG_S)
    every_run += runs
    h2 = fleet.hosts["h2"].host_id
    assert f"the workers of host h2 ({h2}) have not reported for" in failed.error_message, failed
    assert await ran_on(runs[0]) == "h2"
    assert await assert_engines_as(fleet, engines) == where  # untouched

    # A worker of h2 back within the wait: the waiting job goes on there.
    run = await send(fleet, STOP, comes_back, FRESH)
    every_run.append(run)
    await until_scheduled(run, ENSURE_REMOVED_ACTIVITY)
    await fleet.start_worker("h2")
    [stopped] = await results([run], HANG_S)
    assert stopped.container_id == engines[comes_back] and await ran_on(run) == "h2", stopped
    engines[comes_back] = None
    # And the game whose stop gave up: its engine is where it was, served again.
    runs, [replay] = await run_jobs(fleet, START, [waits], REPLAY, HANG_S)
    every_run += runs
    assert replay.container_id == engines[waits] and await ran_on(runs[0]) == "h2", replay
    await assert_engines_as(fleet, engines)
    await one_entry_per_run(fleet, every_run, HANG_S)


# Each game's jobs, in the order sent; the shapes are dealt round the games. Run in that order they
# make 2, 2, 1 and 1 engines and remove 1, 2, 1 and 1: 200 jobs, 60 engines made, 50 removed.
LOAD_SHAPES = [
    [START, START, STOP, START, START],
    [START, STOP, STOP, START, STOP],
    [STOP, START, START, STOP, STOP],
    [START, START, START, START, STOP],
]
LOAD_GAMES = 40


async def test_a_load_on_two_hosts_with_a_worker_killed_and_restarted(fleet: Fleet) -> None:
    fleet.settings["RTJOBS_HOST_MAX_ENGINES"] = str(LOAD_GAMES)
    await fleet.start_workers(["h1", "h2"])
    ids = game_ids(LOAD_GAMES)
    plan = {g: LOAD_SHAPES[i % len(LOAD_SHAPES)] for i, g in enumerate(ids)}
    began = time.monotonic()
    runs = await send_games(fleet, plan, FRESH | REPLAY)
    sent = time.monotonic()
    await until_stream_holds(fleet, len(runs) // 3, LOAD_HANG_S)
    fleet.kill_worker("h1")
    killed = time.monotonic()
    await fleet.start_worker("h1")
    back = time.monotonic()
    await results(runs, LOAD_HANG_S)
    ended = time.monotonic()

    where = await fits_the_hosts(fleet, runs, LOAD_HANG_S)
    print(
        f"[load on two hosts] {len(runs)} jobs sent in {sent - began:.1f}s, a third ended {killed - sent:.1f}s later;"
        f" the worker back {back - killed:.1f}s after the kill; all ended {ended - back:.1f}s later;"
        f" checked in {time.monotonic() - ended:.1f}s"
    )
    assert set(where.values()) <= {"h1", "h2"}, where
