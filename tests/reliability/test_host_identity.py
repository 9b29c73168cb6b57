"""What identifies a host, with real dockerds: the marker volume, not the engine ID that Docker 20.10
takes from a key file.

Two private dockerds sharing one key file (the engine ID of machines cloned from one image) and one
RTJOBS_HOST_NAME are two hosts to the fleet, each with its own id and queue, and a game's stop is served
by the host its start ran on; a host whose marker was removed while it runs a game takes back its id.
On one engine, workers that make the marker at the same moment all end with the one id the volume
holds; a missing marker over engines of ours takes back the id the fleet knows them under; a marker
copied from another engine is told apart.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import aiodocker
import pytest
from temporalio.testing import WorkflowEnvironment

from activities.docker_gateway import DockerGateway
from activities.fleet import Fleet as TemporalFleet
from activities.hosts import (
    HOST_ID_LABEL,
    HOST_VOLUME,
    MARKER_ENGINE_ID_LABEL,
    MARKER_ENGINE_NAME_LABEL,
    host_marker,
    identify_host,
)
from contract.models import LABEL_GAME_ID, LABEL_MANAGED_BY, MANAGED_BY, ErrorCode
from contract.settings import Settings
from tests.support.docker_engine import EngineUnavailable, PrivateDockerd, import_image, rootfs_tar, static_busybox
from tests.support.fleet import (
    FLEET_IMAGE,
    FLEET_IMAGE_CHANGES,
    FRESH,
    HANG_S,
    START,
    STOP,
    Fleet,
    FleetHost,
    fleet_hosts,
    game_ids,
    one_entry_per_run,
    open_fleet,
    run_jobs,
    start_on,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow]

T = TypeVar("T")
TWIN_NAME = "twin"
RACERS = 8


# --- two engines, one key file, one name -------------------------------------------------------------


@pytest.fixture(scope="module")
async def twin_daemons() -> AsyncIterator[dict[str, FleetHost]]:
    async with fleet_hosts(("a", "b"), shared_key=True) as started:
        yield started


@pytest.fixture
async def twin_fleet(
    twin_daemons: dict[str, FleetHost], temporal_env: WorkflowEnvironment, redis_url: str, task_queue: str, stream: str
) -> AsyncIterator[Fleet]:
    async with open_fleet(twin_daemons, temporal_env, redis_url, task_queue, stream) as made:
        yield made


async def test_engines_sharing_a_key_file_are_two_hosts(
    twin_fleet: Fleet,
) -> None:
    """Two engines sharing a key file and a name are two hosts each serving its own games."""
    fleet = twin_fleet
    a, b = fleet.hosts["a"], fleet.hosts["b"]
    assert a.engine_id == b.engine_id  # the premise: Docker cannot tell them apart
    assert a.host_id != b.host_id
    fleet.settings["RTJOBS_HOST_MAX_ENGINES"] = "4"
    await asyncio.gather(*(fleet.start_worker(h, RTJOBS_HOST_NAME=TWIN_NAME) for h in ("a", "b")))

    views = await TemporalFleet(fleet.client, fleet.task_queue).views()
    assert sorted(v.host_id for v in views) == sorted([a.host_id, b.host_id]), views
    assert len({v.queue for v in views}) == 2 and all(v.name == TWIN_NAME for v in views), views
    print(f"\n[shared key {a.engine_id}] host ids: a={a.host_id} b={b.host_id}")

    ids = game_ids(4, "twin")
    start_runs, started = await start_on(fleet, {"a": ids[:2], "b": ids[2:]}, HANG_S)
    engines = {g: r.container_id for g, r in started.items()}
    on_host = {e.game_id: e.host for e in await fleet.engines() if e.game_id in engines}
    assert sorted(on_host) == sorted(ids) and set(on_host.values()) == {"a", "b"}, on_host
    for game_id in ids:  # each game's own workflow names the host whose engine runs it
        turn = await fleet.placement(game_id)
        assert turn.placement is not None and turn.placement.host.host_id == fleet.hosts[on_host[game_id]].host_id

    # Each stop runs on its game's host: a fresh removal of the engine its start made (a stop served by
    # the other engine would find nothing there, answer replay_no_op and leave the engine running).
    stop_runs, stopped = await run_jobs(fleet, STOP, ids, FRESH, HANG_S)
    assert [r.container_id for r in stopped] == [engines[g] for g in ids], stopped
    assert [e for e in await fleet.engines() if e.game_id in engines] == []
    await one_entry_per_run(fleet, [*start_runs, *stop_runs], HANG_S)


async def test_removed_marker_takes_back_its_id(twin_fleet: Fleet) -> None:
    """A host whose marker was removed takes back its id from the games it runs.

    A pruned marker (or an upgrade from the release keyed by the engine ID): the worker finds its
    engines' games on the fleet's hosts and keeps their host's id and queue, so their jobs still reach it.
    """
    fleet = twin_fleet
    a = fleet.hosts["a"]
    await fleet.start_worker("a")
    [game] = game_ids(1, "marker")
    _, [started] = await run_jobs(fleet, START, [game], FRESH, HANG_S)
    fleet.kill_workers("a")
    async with aiodocker.Docker(url=a.url) as docker:
        await (await docker.volumes.get(HOST_VOLUME)).delete()  # type: ignore[no-untyped-call]
        # The worker waits for its own line naming the original id (tests/support/fleet.py).
        await fleet.start_worker("a")
        volume = await (await docker.volumes.get(HOST_VOLUME)).show()  # type: ignore[no-untyped-call]
    assert volume["Labels"][HOST_ID_LABEL] == a.host_id
    _, [stopped] = await run_jobs(fleet, STOP, [game], FRESH, HANG_S)
    assert stopped.container_id == started.container_id, stopped


# --- one engine: the marker made at once, adopted, copied ---------------------------------------------


@pytest.fixture(scope="module")
async def engine_url() -> AsyncIterator[str]:
    """A private dockerd of this module's own (its marker volume is made and removed by the tests)."""
    try:
        static_busybox()
        daemon = await asyncio.to_thread(PrivateDockerd().start)
    except EngineUnavailable as err:
        pytest.skip(f"no private dockerd: {err}")
    try:
        async with aiodocker.Docker(url=daemon.url) as docker:
            await import_image(docker, FLEET_IMAGE, rootfs_tar(), FLEET_IMAGE_CHANGES)
        yield daemon.url
    finally:
        await asyncio.to_thread(daemon.close)


@pytest.fixture
async def docker(engine_url: str) -> AsyncIterator[aiodocker.Docker]:
    """A plain client; the marker and the containers are removed before and after each test."""
    async with aiodocker.Docker(url=engine_url) as client:
        await clean(client)
        try:
            yield client
        finally:
            await clean(client)


async def clean(docker: aiodocker.Docker) -> None:
    for container in await docker.containers.list(all=True):
        await container.delete(force=True)
    with contextlib.suppress(aiodocker.DockerError):
        await (await docker.volumes.get(HOST_VOLUME)).delete()  # type: ignore[no-untyped-call]


class RacingGateway(DockerGateway):
    """Holds its marker create until every racer has reached its own: each has seen no marker and
    chosen an id of its own, so the race is certain, not left to timing.
    """

    def __init__(self, settings: Settings, barrier: asyncio.Barrier) -> None:
        super().__init__(settings)
        self._barrier = barrier

    async def call(self, what: str, fn: Callable[[], Awaitable[T]], code: ErrorCode, **kwargs: Any) -> T:
        if what.startswith(f"create volume {HOST_VOLUME}"):
            await self._barrier.wait()
        return await super().call(what, fn, code, **kwargs)


async def test_workers_racing_for_the_marker_adopt_one_id(engine_url: str, docker: aiodocker.Docker) -> None:
    """Workers making the marker at once all adopt the one id it holds."""
    barrier = asyncio.Barrier(RACERS)
    gateways = [RacingGateway(Settings(docker_host=engine_url), barrier) for _ in range(RACERS)]
    try:
        markers = await asyncio.gather(*(host_marker(g, "ENGINE", "name") for g in gateways))
    finally:
        await asyncio.gather(*(g.close() for g in gateways))
    listed = await docker.volumes.list(filters={"name": [HOST_VOLUME]})  # type: ignore[no-untyped-call]
    volumes = listed["Volumes"]
    assert [v["Name"] for v in volumes] == [HOST_VOLUME]
    assert {m.host_id for m in markers} == {volumes[0]["Labels"][HOST_ID_LABEL]}, markers


async def make_engine_container(docker: aiodocker.Docker, game_id: str) -> None:
    await docker.containers.create(
        {"Image": FLEET_IMAGE, "Labels": {LABEL_MANAGED_BY: MANAGED_BY, LABEL_GAME_ID: game_id}},
        name=f"galaxy-game-{game_id}",
    )


async def test_missing_marker_takes_the_fleets_id(engine_url: str, docker: aiodocker.Docker) -> None:
    """A missing marker over engines of ours takes the id the fleet knows them under."""
    await make_engine_container(docker, "g-adopt")
    asked: list[Sequence[str]] = []

    async def adopt(games: Sequence[str]) -> str | None:
        asked.append(games)
        return "known-host-id"

    gateway = DockerGateway(Settings(docker_host=engine_url))
    try:
        facts = await identify_host(gateway, Settings(docker_host=engine_url), adopt)
        again = await identify_host(gateway, Settings(docker_host=engine_url), adopt)
    finally:
        await gateway.close()
    assert asked == [["g-adopt"]]  # once: the second identify reads the marker
    assert facts.ref.host_id == again.ref.host_id == "known-host-id"
    assert facts.ref.queue.endswith("@host-known-host-id") and facts.clone_hint() == ""


async def test_an_empty_engine_gets_a_fresh_id_without_asking_the_fleet(
    engine_url: str, docker: aiodocker.Docker
) -> None:
    async def adopt(games: Sequence[str]) -> str | None:
        raise AssertionError(f"asked about {games}")

    gateway = DockerGateway(Settings(docker_host=engine_url))
    try:
        facts = await identify_host(gateway, Settings(docker_host=engine_url), adopt)
    finally:
        await gateway.close()
    info = await docker.system.info()
    assert facts.ref.host_id not in ("", info["ID"]) and facts.engine_id == info["ID"]


async def test_a_marker_copied_from_another_engine_is_told_apart(engine_url: str, docker: aiodocker.Docker) -> None:
    labels = {HOST_ID_LABEL: "original-id", MARKER_ENGINE_ID_LABEL: "OTHER:ENGINE", MARKER_ENGINE_NAME_LABEL: "orig"}
    await docker.volumes.create({"Name": HOST_VOLUME, "Labels": labels})  # type: ignore[no-untyped-call]
    gateway = DockerGateway(Settings(docker_host=engine_url))
    try:
        facts = await identify_host(gateway, Settings(docker_host=engine_url))
    finally:
        await gateway.close()
    assert facts.ref.host_id == "original-id"  # still one host with the original: only a warning says so
    hint = facts.clone_hint()
    assert "OTHER:ENGINE" in hint and f"remove the {HOST_VOLUME} volume" in hint, hint
