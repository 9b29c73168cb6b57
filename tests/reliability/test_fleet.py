"""The fleet with real parts: three private dockerds as three hosts, one real `python worker.py` per host on
one task queue, the session's dev server and the shared Redis (tests/support/fleet.py).

Each scenario checks what is really there: the result stream (one entry per job run, the run's own), the
engine containers on every host's daemon, the hosts' own workflows' view, and what each game's own workflow
remembers of its placement. The faults (workers killed, a load) are in test_fleet_faults.py.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest

from contract.hosts import HostView
from contract.lock import lock_workflow_id
from tests.support.fleet import (
    FRESH,
    HANG_S,
    REPLAY,
    START,
    STOP,
    Fleet,
    assert_engines_as,
    game_ids,
    one_entry_per_run,
    ran_on,
    run_jobs,
    start_on,
)
from tests.support.runs import Run
from workflows.search import RUNTIME_HOST

pytestmark = [pytest.mark.docker, pytest.mark.slow]

CAPACITY_FULL = frozenset({("failure", "container_start_failed")})


async def served_on_their_hosts(
    fleet: Fleet,
    kind: str,
    ids: list[str],
    accepted: frozenset[tuple[str, str]],
    engines: dict[str, str | None],
    where: dict[str, str],
) -> list[Run]:
    """Jobs of placed games: each reports its game's engine, and ran its Docker step on the game's host."""
    runs, finished = await run_jobs(fleet, kind, ids, accepted, HANG_S)
    assert [r.container_id for r in finished] == [engines[g] for g in ids], finished
    assert [await ran_on(r) for r in runs] == [where[g] for g in ids], [r.handle.id for r in runs]
    return runs


async def lose_placements(fleet: Fleet, ids: list[str]) -> None:
    """An operator terminates the games' own workflows: what they remembered is gone."""
    for game_id in ids:
        await fleet.client.get_workflow_handle(lock_workflow_id(game_id, fleet.task_queue)).terminate("test")


async def test_thirty_games_at_once_spread_over_the_hosts_one_engine_each(fleet: Fleet) -> None:
    fleet.settings["RTJOBS_HOST_MAX_ENGINES"] = "12"
    await fleet.start_workers()
    ids = game_ids(30)
    runs, finished = await run_jobs(fleet, START, ids, FRESH, HANG_S)
    await one_entry_per_run(fleet, runs, HANG_S)

    where = await assert_engines_as(fleet, {g: r.container_id for g, r in zip(ids, finished, strict=True)})
    per_host = Counter(where.values())
    assert set(per_host) == set(fleet.hosts) and max(per_host.values()) <= 12, per_host
    turns = await asyncio.gather(*(fleet.placement(g) for g in ids))
    assert all(t.placement_known for t in turns), turns
    # Each host counts its engines, nothing reserved any more.
    await fleet.until_hosts(
        lambda v: all((v[h].engines, v[h].reserved) == (per_host[h], 0) for h in fleet.hosts), f"counting {per_host}"
    )
    print(f"\n[30 at once] engines per host {dict(sorted(per_host.items()))}")


async def test_full_capacity_fails_only_the_overflow(fleet: Fleet) -> None:
    """Capacity full only the overflow fails and nothing is made for it."""
    fleet.settings["RTJOBS_HOST_MAX_ENGINES"] = "2"
    await fleet.start_workers()
    ids = game_ids(7)
    runs, finished = await run_jobs(fleet, START, ids, FRESH | CAPACITY_FULL, HANG_S)
    await one_entry_per_run(fleet, runs, HANG_S)

    failed = [(g, r) for g, r in zip(ids, finished, strict=True) if r.outcome == "failure"]
    assert len(failed) == 1, finished
    [(overflow, result)] = failed
    assert "no host has free capacity (h1 2/2, h2 2/2, h3 2/2)" in result.error_message, result
    placed = {g: r.container_id for g, r in zip(ids, finished, strict=True) if g != overflow}
    where = await assert_engines_as(fleet, {**placed, overflow: None})
    assert Counter(where.values()) == dict.fromkeys(fleet.hosts, 2), where
    turn = await fleet.placement(overflow)
    assert turn.placement is None, turn


async def test_replays_and_stops_reach_their_host(fleet: Fleet) -> None:
    """Replays and stops of placed games reach their host every time."""
    # Two places a host: six games started together take two on each (each host's reserve checks it).
    fleet.settings["RTJOBS_HOST_MAX_ENGINES"] = "2"
    await fleet.start_workers()
    ids = game_ids(6)
    every_run, first = await run_jobs(fleet, START, ids, FRESH, HANG_S)
    engines: dict[str, str | None] = {g: r.container_id for g, r in zip(ids, first, strict=True)}
    where = await assert_engines_as(fleet, engines)
    assert Counter(where.values()) == dict.fromkeys(fleet.hosts, 2), where

    for cycle, half in enumerate((ids[::2], ids[1::2])):
        # A start of a running engine: a replay on its own host, the same container.
        every_run += await served_on_their_hosts(fleet, START, ids, REPLAY, engines, where)
        assert await assert_engines_as(fleet, engines) == where, cycle

        # A stop removes the engine from its host; the other games' engines stay where they were.
        every_run += await served_on_their_hosts(fleet, STOP, half, FRESH, engines, where)
        engines.update(dict.fromkeys(half, None))
        still = {g: h for g, h in where.items() if g not in half}
        assert await assert_engines_as(fleet, engines) == still, cycle
        turns = await asyncio.gather(*(fleet.placement(g) for g in half))
        assert all(t.placement_known and t.placement is None for t in turns), turns

        # Stopped again: nothing to stop, known without asking any host.
        runs, _ = await run_jobs(fleet, STOP, half, REPLAY, HANG_S)
        every_run += runs
        assert [await ran_on(r) for r in runs] == [None] * len(half), cycle

        # Started again: a new engine on a host with room, then found there.
        runs, starts = await run_jobs(fleet, START, half, FRESH, HANG_S)
        every_run += runs
        engines.update({g: r.container_id for g, r in zip(half, starts, strict=True)})
        where = await assert_engines_as(fleet, engines)
        assert [await ran_on(r) for r in runs] == [where[g] for g in half], cycle
        assert max(Counter(where.values()).values()) <= 2, where

    await one_entry_per_run(fleet, every_run, HANG_S)


async def test_a_lost_placement_record_finds_the_engine_where_it_is(fleet: Fleet) -> None:
    await fleet.start_workers()
    ids = game_ids(3)
    every_run, first = await run_jobs(fleet, START, ids, FRESH, HANG_S)
    engines: dict[str, str | None] = {g: r.container_id for g, r in zip(ids, first, strict=True)}
    where = await assert_engines_as(fleet, engines)

    await lose_placements(fleet, ids)
    every_run += await served_on_their_hosts(fleet, START, ids, REPLAY, engines, where)
    turns = await asyncio.gather(*(fleet.placement(g) for g in ids))
    assert [(t.placement.host.name, t.placement.container_id) for t in turns if t.placement] == [
        (where[g], engines[g]) for g in ids
    ], turns
    assert await assert_engines_as(fleet, engines) == where

    # Lost again, then a stop: it finds the engine too, on its host.
    await lose_placements(fleet, ids)
    every_run += await served_on_their_hosts(fleet, STOP, ids, FRESH, engines, where)
    await assert_engines_as(fleet, dict.fromkeys(ids, None))
    await one_entry_per_run(fleet, every_run, HANG_S)


async def cli_ok(fleet: Fleet, *args: str) -> str:
    done = await fleet.cli(*args)
    assert done.returncode == 0, (args, done.returncode, done.stdout, done.stderr)
    return done.stdout


async def test_drain_undrain_and_forget_through_the_cli(fleet: Fleet) -> None:
    fleet.settings["RTJOBS_HOST_MAX_ENGINES"] = "10"
    await fleet.start_workers()
    ids = game_ids(6, "a")
    every_run, first = await start_on(fleet, {"h1": ids[:2], "h2": ids[2:4], "h3": ids[4:]}, HANG_S)
    engines: dict[str, str | None] = {g: r.container_id for g, r in first.items()}
    where = await assert_engines_as(fleet, engines)
    on_h1 = [g for g in ids if where[g] == "h1"]
    assert len(on_h1) == 2, where

    # Drained: no new engine on h1, while its own engines are still served through it.
    await cli_ok(fleet, "host", "drain", "h1")
    views = await fleet.host_views()
    assert [views[h].draining for h in ("h1", "h2", "h3")] == [True, False, False], views
    more = game_ids(4, "b")
    runs, starts = await run_jobs(fleet, START, more, FRESH, HANG_S)
    every_run += runs
    engines.update({g: r.container_id for g, r in zip(more, starts, strict=True)})
    where = await assert_engines_as(fleet, engines)
    assert "h1" not in {where[g] for g in more}, where
    runs, replays = await run_jobs(fleet, START, on_h1[:1], REPLAY, HANG_S)
    every_run += runs
    assert [r.container_id for r in replays] == [engines[on_h1[0]]] and await ran_on(runs[0]) == "h1"
    runs, stops = await run_jobs(fleet, STOP, on_h1[1:], FRESH, HANG_S)
    every_run += runs
    assert [r.container_id for r in stops] == [engines[on_h1[1]]] and await ran_on(runs[0]) == "h1"
    engines[on_h1[1]] = None
    where = await assert_engines_as(fleet, engines)

    # Undrained: h1 takes new games again (the only host open to them, the others drained meanwhile).
    await cli_ok(fleet, "host", "undrain", "h1")
    assert not (await fleet.host_views())["h1"].draining
    again = game_ids(3, "c")
    runs, placed = await start_on(fleet, {"h1": again}, HANG_S)
    every_run += runs
    engines.update({g: r.container_id for g, r in placed.items()})
    where = await assert_engines_as(fleet, engines)
    assert [where[g] for g in again] == ["h1"] * 3, where

    # h3 dies for good (its workers killed) and is forgotten: its games start anew elsewhere.
    on_h3 = [g for g, h in where.items() if h == "h3"]
    assert on_h3, where
    fleet.kill_workers("h3")
    await fleet.until_hosts(lambda v: not v["h3"].live, "h3 silent")
    # `host forget` finds the games placed on h3 by their `RuntimeHost`, which visibility shows a little
    # after it was set.
    placed_on_h3 = f'{RUNTIME_HOST.name}="h3" AND ExecutionStatus="Running"'
    for _ in range(300):
        if len([w async for w in fleet.client.list_workflows(placed_on_h3)]) >= len(on_h3):
            break
        await asyncio.sleep(0.1)
    said = await cli_ok(fleet, "host", "forget", "h3")
    assert "h3" in said and f"{len(on_h3)} games placed on it released" in said, said
    listed = [HostView.model_validate(h) for h in json.loads(await cli_ok(fleet, "hosts", "-o", "json"))["hosts"]]
    assert sorted(h.name for h in listed) == ["h1", "h2"], listed

    runs, starts = await run_jobs(fleet, START, on_h3, FRESH, HANG_S)
    every_run += runs
    by_game = await fleet.engines_by_game()
    for game_id, run, result in zip(on_h3, runs, starts, strict=True):
        # A new engine on a live host; the old one is still on h3's daemon, which nobody serves now.
        found = {(e.host, e.container_id, e.state) for e in by_game[game_id]}
        new_host = await ran_on(run)
        assert new_host in ("h1", "h2"), (game_id, new_host)
        assert found == {("h3", engines[game_id], "running"), (new_host, result.container_id, "running")}, found
        turn = await fleet.placement(game_id)
        assert turn.placement is not None and turn.placement.host.name == new_host, turn
    await one_entry_per_run(fleet, every_run, HANG_S)
