"""Reconciliation with real parts: two private dockerds as two hosts, a real `python worker.py` per host, the
session's dev server and the shared Redis (tests/support/fleet.py); `rtjobs reconcile` as operators run it.

Orphans of every kind are planted on both hosts with aiodocker (never through a job): a container of ours
that exited, one only created, a running engine without record, a record whose engine was removed, a
recorded engine killed (as an OOM kill leaves it), and a foreign container with a `galaxy-game-` name but
not our label. What each became is read back from the daemons and from the games' own workflows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiodocker
import pytest
from temporalio.client import ScheduleActionStartWorkflow, ScheduleOverlapPolicy
from temporalio.service import RPCError, RPCStatusCode

from activities.publish import redis_client
from contract.lock import LockGrant
from contract.models import LABEL_GAME_ID, LABEL_MANAGED_BY, MANAGED_BY, container_name
from contract.reconcile import RECONCILE_WORKFLOW, Action, EngineEvent, FindingKind, ReconcileSummary, schedule_id
from tests.support.fleet import (
    FLEET_IMAGE,
    FRESH,
    HANG_S,
    HOST_NAMES,
    START,
    Fleet,
    FleetHost,
    fleet_hosts,
    game_ids,
    send,
    start_on,
)
from tests.support.runs import results
from tests.support.streams import read_entries_at

pytestmark = [pytest.mark.docker, pytest.mark.slow]

H1, H2 = HOST_NAMES[:2]
Kinds = dict[str, tuple[str, list[str], bool]]


@pytest.fixture(scope="module", name="fleet_daemons")
async def two_hosts() -> AsyncIterator[dict[str, FleetHost]]:
    """Two hosts are enough for every rule here (a record on one host, an engine on the other)."""
    async with fleet_hosts(HOST_NAMES[:2]) as started:
        yield started


async def plant(host: FleetHost, game_id: str, state: str, *, ours: bool = True) -> str:
    """A container named as the game's engine, made by hand: ours (labelled) or foreign; `running`,
    `exited` (its command ended) or `created` (never started).
    """
    labels = {LABEL_GAME_ID: game_id, LABEL_MANAGED_BY: MANAGED_BY} if ours else {"owner": "someone-else"}
    config: dict[str, Any] = {"Image": FLEET_IMAGE, "Labels": labels, "HostConfig": {"NetworkMode": "none"}}
    if state == "exited":
        config["Cmd"] = ["/bin/sh", "-c", "exit 3"]
    async with aiodocker.Docker(url=host.url) as docker:
        container = await docker.containers.create(config, name=container_name(game_id))
        if state != "created":
            await container.start()
        if state == "exited":
            await container.wait()
        return str(container.id)


async def containers_on(host: FleetHost) -> dict[str, tuple[str, str]]:
    """Every container on the host (ours or not): name -> (id, state)."""
    async with aiodocker.Docker(url=host.url) as docker:
        listed = await docker.containers.list(all=True)
    return {str(c._container["Names"][0]).lstrip("/"): (str(c.id), str(c._container["State"])) for c in listed}


async def record_of(fleet: Fleet, game_id: str) -> LockGrant | None:
    """What the game's own workflow remembers (None: it has none)."""
    try:
        return await fleet.placement(game_id)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return None
        raise


async def on_host(fleet: Fleet, host: str, ids: list[str]) -> dict[str, str]:
    """Fresh starts of these games, all placed on `host`."""
    _runs, finished = await start_on(fleet, {host: ids}, HANG_S)
    return {g: r.container_id for g, r in finished.items()}


async def reconcile(fleet: Fleet, *args: str, expect_exit: int = 0) -> dict[str, ReconcileSummary]:
    proc = await fleet.cli("reconcile", "-o", "json", *args)
    assert proc.returncode == expect_exit, (proc.returncode, proc.stdout, proc.stderr)
    return {s.host.name: s for s in (ReconcileSummary.model_validate(x) for x in json.loads(proc.stdout)["summaries"])}


async def fleet_redis_delete(fleet: Fleet, key: str) -> None:
    redis = redis_client(fleet.redis_url)
    try:
        await redis.delete(key)
    finally:
        await redis.aclose()


def kinds(summary: ReconcileSummary) -> Kinds:
    return {f.game_id: (f.kind.value, [a.value for a in f.actions], f.done) for f in summary.findings}


async def world(fleet: Fleet, games: list[str]) -> tuple[dict[str, dict[str, tuple[str, str]]], dict[str, Any]]:
    """Every container on both hosts and every game's record: what a dry run must leave as it was."""
    hosts = {name: await containers_on(h) for name, h in fleet.hosts.items()}
    records = {g: r.model_dump() if (r := await record_of(fleet, g)) else None for g in games}
    return hosts, records


async def test_orphans_of_every_kind_on_both_hosts_and_a_start_in_flight(fleet: Fleet) -> None:
    # Every start holds the lock for 25 s of running: long enough for a reconcile (a CLI process that
    # starts, asks the registry and starts the runs) to meet one in flight on a loaded machine.
    events_stream = f"{fleet.stream}:engine_events"
    fleet.settings.update(
        RTJOBS_RECONCILE_GRACE_S="0",
        RTJOBS_ENGINE_MIN_RUNNING_S="25",
        RTJOBS_START_TIMEOUT_S="60",
        RTJOBS_ENGINE_EVENTS_STREAM=events_stream,
    )
    await fleet.start_workers()
    planted: dict[str, dict[str, str]] = {}  # host -> role -> game id
    ids: dict[str, str] = {}  # game id -> container id (of the planted or first engine)
    for host in (H1, H2):
        kept, gone, killed, exited, created, unrecorded, foreign = game_ids(7, f"{host}-")
        planted[host] = {
            "kept": kept,
            "gone": gone,
            "killed": killed,
            "exited": exited,
            "created": created,
            "unrecorded": unrecorded,
            "foreign": foreign,
        }
        ids.update(await on_host(fleet, host, [kept, gone, killed]))
        daemon = fleet.hosts[host]
        async with aiodocker.Docker(url=daemon.url) as docker:
            await docker.containers.container(ids[gone]).delete(force=True)  # removed by hand: record left
            await docker.containers.container(ids[killed]).kill()  # OOM-killed after it became healthy
        ids[exited] = await plant(daemon, exited, "exited")
        ids[created] = await plant(daemon, created, "created")
        ids[unrecorded] = await plant(daemon, unrecorded, "running")
        ids[foreign] = await plant(daemon, foreign, "running", ours=False)
    every_game = [g for roles in planted.values() for g in roles.values()]

    expected: dict[str, Kinds] = {
        host: {
            p["gone"]: (FindingKind.ENGINE_GONE.value, [Action.CLEARED.value], True),
            p["killed"]: (FindingKind.ENGINE_NOT_RUNNING.value, [Action.REMOVED.value, Action.CLEARED.value], True),
            p["exited"]: (FindingKind.STOPPED_CONTAINER.value, [Action.REMOVED.value], True),
            p["created"]: (FindingKind.STOPPED_CONTAINER.value, [Action.REMOVED.value], True),
            p["unrecorded"]: (FindingKind.RUNNING_UNRECORDED.value, [Action.ADOPTED.value], True),
        }
        for host, p in planted.items()
    }

    # --dry-run: everything found, nothing done, nothing changed.
    before = await world(fleet, every_game)
    dry = await reconcile(fleet, "--dry-run")
    assert set(dry) == {H1, H2}, dry
    for host in (H1, H2):
        would = {g: (k, a, False) for g, (k, a, _done) in expected[host].items()}
        assert kinds(dry[host]) == would, (host, dry[host])
    assert await world(fleet, every_game) == before
    assert await read_entries_at(fleet.redis_url, events_stream) == []

    # A start job in flight on a new game while reconcile runs: its engine runs, its record is not
    # written yet (the job still holds the turn).
    in_flight = game_ids(1, "inflight")[0]
    run = await send(fleet, START, in_flight, FRESH)
    deadline = time.monotonic() + HANG_S
    while not any(e.game_id == in_flight and e.state == "running" for e in await fleet.engines()):
        assert time.monotonic() < deadline, "the in-flight start never ran its engine"
        await asyncio.sleep(0.1)
    done = await reconcile(fleet)
    [started] = await results([run], HANG_S)
    assert (started.outcome, started.error_code) == ("success", ""), started

    for host in (H1, H2):
        assert kinds(done[host]) == expected[host], (host, done[host])
        assert done[host].error == "", done[host]
    # The reconcile that met the in-flight start took the game's turn after the job: it began while the
    # job ran and ended after it, and did nothing to its engine.
    job = await run.handle.describe()
    reconciles = [
        await fleet.client.get_workflow_handle(w.id, run_id=w.run_id).describe()
        async for w in fleet.client.list_workflows(
            f'WorkflowType="{RECONCILE_WORKFLOW}" AND TaskQueue="{fleet.task_queue}"'
        )
    ]
    assert job.close_time is not None
    overlapping = [r for r in reconciles if r.close_time and r.start_time < job.close_time < r.close_time]
    assert overlapping, ([(r.id, r.start_time, r.close_time) for r in reconciles], job.close_time)

    # What each planted orphan became, on the daemons and in the games' records.
    engines = {(e.host, e.game_id): (e.container_id, e.state) for e in await fleet.engines()}
    turn = await record_of(fleet, in_flight)
    assert turn is not None and turn.placement is not None, turn
    assert engines[(turn.placement.host.name, in_flight)] == (started.container_id, "running")
    assert turn.placement.container_id == started.container_id
    for host, p in planted.items():
        assert engines[(host, p["kept"])] == (ids[p["kept"]], "running"), host
        assert engines[(host, p["unrecorded"])] == (ids[p["unrecorded"]], "running"), host
        for role in ("gone", "killed", "exited", "created"):
            assert (host, p[role]) not in engines, (host, role, engines)
        assert (await containers_on(fleet.hosts[host]))[container_name(p["foreign"])] == (ids[p["foreign"]], "running")
        records = {role: await record_of(fleet, p[role]) for role in p}
        still, adopted = records["kept"], records["unrecorded"]
        assert still is not None and still.placement is not None and still.placement.container_id == ids[p["kept"]]
        assert adopted is not None and adopted.placement_known and adopted.placement is not None, adopted
        assert (adopted.placement.host.name, adopted.placement.container_id) == (host, ids[p["unrecorded"]])
        for role in ("gone", "killed"):
            cleared = records[role]
            assert cleared is not None and not cleared.placement_known and cleared.placement is None, (role, cleared)
        assert records["foreign"] is None  # never even asked for its turn
        print(f"\n[reconcile {host}] " + "; ".join(f.line() for f in done[host].findings))

    # The Lobby learns of the engines it was told run and that died outside any job: one event each.
    events = [
        EngineEvent.model_validate(fields) for _id, fields in await read_entries_at(fleet.redis_url, events_stream)
    ]
    lost = {(e.host, e.game_id): (e.event, e.state, e.container_id) for e in events}
    assert len(events) == len(lost) == 4, events
    assert lost == {
        **{(h, p["gone"]): ("engine_lost", "gone", ids[p["gone"]]) for h, p in planted.items()},
        **{(h, p["killed"]): ("engine_lost", "exited", ids[p["killed"]]) for h, p in planted.items()},
    }

    # Run again: nothing is off any more, nothing more is published.
    again = await reconcile(fleet)
    assert {h: s.findings for h, s in again.items()} == {H1: [], H2: []}, again
    assert len(await read_entries_at(fleet.redis_url, events_stream)) == 4
    await fleet_redis_delete(fleet, events_stream)


async def test_schedule_fires_within_the_grace_period(fleet: Fleet) -> None:
    """The schedule exists and fires within the grace period nothing is removed."""
    fleet.settings.update(RTJOBS_RECONCILE_EVERY="2s", RTJOBS_RECONCILE_GRACE_S="3600")
    await fleet.start_workers()
    unrecorded, exited = game_ids(2, "sched")
    unrecorded_id = await plant(fleet.hosts[H1], unrecorded, "running")
    exited_id = await plant(fleet.hosts[H2], exited, "exited")

    for host in (H1, H2):
        desc = await fleet.client.get_schedule_handle(
            schedule_id(fleet.task_queue, fleet.hosts[host].host_id)
        ).describe()
        action = desc.schedule.action
        assert isinstance(action, ScheduleActionStartWorkflow) and action.workflow == RECONCILE_WORKFLOW
        assert action.task_queue == fleet.task_queue
        assert [i.every.total_seconds() for i in desc.schedule.spec.intervals] == [2.0]
        assert desc.schedule.policy.overlap == ScheduleOverlapPolicy.SKIP

    # The schedule's runs adopt the running engine into its game's record ...
    deadline = time.monotonic() + 60
    while True:
        turn = await record_of(fleet, unrecorded)
        if turn is not None and turn.placement_known:
            break
        assert time.monotonic() < deadline, "no scheduled run adopted the engine"
        await asyncio.sleep(0.5)
    assert turn.placement is not None
    assert (turn.placement.host.name, turn.placement.container_id) == (H1, unrecorded_id)
    # ... and report the exited container, left within the grace period, in every run that saw it (runs
    # that began before it was planted did not).
    h2_runs = schedule_id(fleet.task_queue, fleet.hosts[H2].host_id)
    query = f'WorkflowType="{RECONCILE_WORKFLOW}" AND TaskQueue="{fleet.task_queue}" AND ExecutionStatus="Completed"'
    deadline = time.monotonic() + 60
    while True:
        summaries = [
            await fleet.client.get_workflow_handle(w.id, run_id=w.run_id, result_type=ReconcileSummary).result()
            async for w in fleet.client.list_workflows(query)
            if w.id.startswith(h2_runs)
        ]
        saw = [kinds(s)[exited] for s in summaries if exited in kinds(s)]
        if saw:
            break
        assert time.monotonic() < deadline, f"no scheduled run of h2 saw the exited container: {summaries}"
        await asyncio.sleep(0.5)
    assert all(k == (FindingKind.STOPPED_CONTAINER.value, [], False) for k in saw), summaries
    assert (await containers_on(fleet.hosts[H2]))[container_name(exited)] == (exited_id, "exited")


async def test_host_with_stopped_engine_is_only_reported(fleet: Fleet) -> None:
    """A host whose Docker engine stopped is reported and nothing is changed there."""
    fleet.settings["RTJOBS_RECONCILE_GRACE_S"] = "0"
    await fleet.start_workers()
    [exited] = game_ids(1, "down")
    daemon = fleet.hosts[H2].daemon
    exited_id = await plant(fleet.hosts[H2], exited, "exited")
    await asyncio.to_thread(daemon.stop_daemon)
    try:
        summaries = await reconcile(fleet, "--host", H2, expect_exit=1)
    finally:
        await asyncio.to_thread(daemon.start)
    summary = summaries[H2]
    assert "Docker engine of host h2 did not answer" in summary.error, summary
    assert summary.findings == [] and summary.containers == 0, summary
    # The exited container (removable at once with a grace of 0) is still there.
    assert (await containers_on(fleet.hosts[H2]))[container_name(exited)] == (exited_id, "exited")
    with contextlib.suppress(RPCError):
        assert await record_of(fleet, exited) is None
