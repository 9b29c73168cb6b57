"""The readiness wait of a start against a real engine: an engine that exits, never turns healthy, is
reported unhealthy or is slow; engines without a healthcheck and their stability window; a daemon that
shuts down during the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import aiodocker
import pytest
from aiodocker.exceptions import DockerError
from temporalio.exceptions import ApplicationError

from activities.docker import EngineActivities
from activities.docker_gateway import DockerGateway, Inspect
from activities.readiness import Readiness, seconds_since
from contract.engine import (
    DOCKER_UNAVAILABLE_TYPE,
    EngineOutcome,
)
from contract.models import ErrorCode, container_name
from contract.settings import Settings
from tests.support.docker_engine import (
    IMAGE_CHANGES,
    EngineImages,
    image_ref,
    import_image,
    rootfs_tar,
)
from tests.support.restartable_dockerd import RestartableDockerd, own_dockerd
from tests.unit.activities.docker.engines import (
    MakeActivities,
    expect_error,
    inspect,
    settings_for,
    start,
)

pytestmark = pytest.mark.docker


async def test_exiting_engine_is_container_exited(
    make_activities: MakeActivities, docker: aiodocker.Docker, images: EngineImages, game_id: str
) -> None:
    """Engine exiting at once fails `container_exited` with code and log tail."""
    err = await expect_error(start(make_activities(), game_id, images.exits), ErrorCode.CONTAINER_EXITED)
    assert "exited with code 3" in err.message
    assert "fatal: no map" in err.message and "loading map" in err.message
    assert len(err.message) <= 1100
    assert await inspect(docker, container_name(game_id)) is None


async def test_never_healthy_engine_times_out(
    make_activities: MakeActivities, docker: aiodocker.Docker, images: EngineImages, game_id: str
) -> None:
    """Engine never healthy fails `engine_unhealthy` after start timeout leaving nothing."""
    acts = make_activities(start_timeout_s=3.0)
    t0 = time.monotonic()
    err = await expect_error(start(acts, game_id, images.never_healthy), ErrorCode.ENGINE_UNHEALTHY)
    elapsed = time.monotonic() - t0
    assert 3.0 <= elapsed < 60.0, elapsed  # waited the timeout out, then gave up (did not wait forever)
    assert "not healthy within 3s" in err.message
    assert await inspect(docker, container_name(game_id)) is None


async def test_unhealthy_engine_fails_at_once(
    make_activities: MakeActivities, docker: aiodocker.Docker, images: EngineImages, game_id: str
) -> None:
    """Engine reported unhealthy fails `engine_unhealthy` at once leaving nothing."""
    acts = make_activities(start_timeout_s=600.0)
    t0 = time.monotonic()
    err = await expect_error(start(acts, game_id, images.unhealthy), ErrorCode.ENGINE_UNHEALTHY)
    assert time.monotonic() - t0 < 300  # reported when Docker said unhealthy, not at the 600 s timeout
    assert "reported unhealthy" in err.message
    assert await inspect(docker, container_name(game_id)) is None


async def test_slow_engine_healthy_in_time_succeeds(
    make_activities: MakeActivities, docker: aiodocker.Docker, images: EngineImages, game_id: str
) -> None:
    """Slow engine that becomes healthy within the timeout succeeds."""
    t0 = time.monotonic()
    outcome = await start(make_activities(start_timeout_s=20.0), game_id, images.slow_healthy)
    assert time.monotonic() - t0 >= 3.0  # it really waited for the health check
    info = await inspect(docker, outcome.container_id)
    assert info is not None and info["State"]["Health"]["Status"] == "healthy"


async def test_no_healthcheck_ready_after_window(
    make_activities: MakeActivities, docker: aiodocker.Docker, images: EngineImages, game_id: str
) -> None:
    """Engine without healthcheck is ready once it ran for the stability window."""
    acts = make_activities(engine_min_running_s=2.0)
    t0 = time.monotonic()
    outcome = await start(acts, game_id, images.ignores_term)
    elapsed = time.monotonic() - t0
    info = await inspect(docker, outcome.container_id)
    assert info is not None and info["State"]["Running"] and "Health" not in info["State"]
    # The window counts from the container's StartedAt, which lies after t0: success came no earlier.
    # (A lower bound only; 0.05 s allows for the wall clock StartedAt is on being slewed meanwhile.)
    assert elapsed >= 2.0 - 0.05, elapsed
    assert seconds_since(info["State"]["StartedAt"]) >= 2.0 - 0.05


async def test_replay_after_window_does_not_wait(
    make_activities: MakeActivities, images: EngineImages, game_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replay of an engine running longer than the window does not wait again.

    Counted from State.StartedAt, not from when this attempt first looked: one look suffices.
    """
    acts = make_activities(engine_min_running_s=1.0)
    first = await start(acts, game_id, images.ignores_term)  # returns once it has run for 1 s
    looks = 0
    real_inspect = acts.gateway.inspect

    async def counting(ref: str, code: ErrorCode) -> dict[str, Any] | None:
        nonlocal looks
        looks += 1
        return await real_inspect(ref, code)

    monkeypatch.setattr(acts.gateway, "inspect", counting)
    assert await start(acts, game_id, images.ignores_term) == EngineOutcome(
        container_id=first.container_id, replay=True
    )
    assert looks == 2  # the replay's own inspect and one readiness look; a re-counted window needs ~10


@pytest.mark.parametrize("image", ["exits_at_once", "exits_soon"])
async def test_no_healthcheck_crash_is_container_exited(
    image: str, make_activities: MakeActivities, docker: aiodocker.Docker, images: EngineImages
) -> None:
    """Engine without healthcheck crashing at start is always `container_exited`.

    Measured before the window existed: the at-once image was reported a success in 4-5 of 10 starts
    (the first inspect found it still running), the 0.3 s one in all of them. With the default window
    (1 s) every start must be container_exited with the log tail, and leave nothing.
    """
    acts = make_activities()
    assert acts.settings.engine_min_running_s == 1.0
    for attempt in range(10):
        gid = f"t-{uuid.uuid4().hex[:10]}"
        try:
            err = await expect_error(start(acts, gid, getattr(images, image)), ErrorCode.CONTAINER_EXITED)
            assert "exited with code 3" in err.message, (attempt, err.message)
            assert "fatal: no map" in err.message and "engine booting" in err.message, (attempt, err.message)
            assert await inspect(docker, container_name(gid)) is None
        finally:
            with contextlib.suppress(DockerError):
                await docker.containers.container(container_name(gid)).delete(force=True, v=True)


class ScriptedGateway(DockerGateway):
    """Inspect answers from a script (state of the n-th look): readiness decisions without a daemon."""

    def __init__(self, settings: Settings, state: Callable[[int], dict[str, Any]]) -> None:
        super().__init__(settings)
        self.state = state
        self.looks = 0

    async def inspect(self, ref: str, code: ErrorCode) -> Inspect | None:
        state = self.state(self.looks)
        self.looks += 1
        restarts = state.pop("RestartCount", 0)
        return {"State": {"Status": "running", "Running": True, **state}, "RestartCount": restarts}


async def test_stability_window_counts_from_started_at() -> None:
    """Stability window counts from `StartedAt` and restarts count again."""
    settings = settings_for("unix:///nonexistent.sock", start_timeout_s=2.0, engine_min_running_s=0.5)
    loop = asyncio.get_running_loop()

    async def wait(gateway: ScriptedGateway, deadline_s: float = 60) -> None:
        await Readiness(gateway, settings).until_ready("c", "engine", loop.time() + deadline_s)

    def now() -> str:
        return datetime.now(UTC).isoformat()

    # Started long ago (a replay, a retried attempt): ready at the first look.
    old = ScriptedGateway(settings, lambda _: {"StartedAt": "2000-01-01T00:00:00.123456789Z"})
    await wait(old)
    assert old.looks == 1

    # StartedAt unknown: the wait counts the time it watched the same run itself.
    unknown = ScriptedGateway(settings, lambda _: {"StartedAt": ""})
    await wait(unknown)
    assert unknown.looks >= 2

    # Restarted at every look (StartedAt moves on, or the restart count grows): never stable, so the
    # start fails engine_unhealthy when its timeout ends instead of passing a crash-looping engine.
    for restarting in (
        ScriptedGateway(settings, lambda _: {"StartedAt": now()}),
        ScriptedGateway(settings, lambda n: {"StartedAt": "", "RestartCount": n}),
    ):
        with pytest.raises(ApplicationError) as caught:
            await wait(restarting, deadline_s=2.0)
        assert caught.value.type == ErrorCode.ENGINE_UNHEALTHY.value, caught.value
        assert restarting.looks >= 5


def test_a_window_as_long_as_the_start_timeout_is_rejected() -> None:
    with pytest.raises(ValueError, match="RTJOBS_ENGINE_MIN_RUNNING_S"):
        settings_for("unix:///x.sock", start_timeout_s=5.0, engine_min_running_s=5.0)
    assert settings_for("unix:///x.sock", engine_min_running_s=0).engine_min_running_s == 0


async def test_replay_of_a_starting_engine_waits_until_it_is_healthy(
    make_activities: MakeActivities, docker: aiodocker.Docker, images: EngineImages, game_id: str
) -> None:
    first_start = asyncio.create_task(start(make_activities(), game_id, images.slow_healthy))
    deadline = time.monotonic() + 20
    while True:  # until the first job's container runs but is not healthy yet
        info = await inspect(docker, container_name(game_id))
        if info is not None and info["State"]["Running"]:
            break
        assert time.monotonic() < deadline and not first_start.done()
        await asyncio.sleep(0.05)
    assert info["State"]["Health"]["Status"] == "starting"
    replay = await start(make_activities(), game_id, images.slow_healthy)
    assert replay.replay is True and replay.container_id == info["Id"]
    healthy = await inspect(docker, info["Id"])
    assert healthy is not None and healthy["State"]["Health"]["Status"] == "healthy"
    assert (await first_start) == EngineOutcome(container_id=info["Id"], replay=False)


async def test_oom_killed_engine_is_container_exited(
    make_activities: MakeActivities, docker: aiodocker.Docker, images: EngineImages, game_id: str
) -> None:
    """Engine oom killed before healthy fails `container_exited` saying so."""
    acts = make_activities(engine_memory_bytes=16 * 1024 * 1024)
    err = await expect_error(start(acts, game_id, images.oom), ErrorCode.CONTAINER_EXITED)
    assert "(OOM-killed)" in err.message
    assert "filling memory" in err.message and "survived" not in err.message
    assert await inspect(docker, container_name(game_id)) is None


# --- a daemon that shuts down during the readiness wait ------------------------------------------------


@pytest.fixture
async def stoppable_dockerd() -> AsyncIterator[RestartableDockerd]:
    """A dockerd of this test's own (it will be SIGTERMed), with the never-healthy image."""

    async def never_healthy(client: aiodocker.Docker) -> None:
        await import_image(client, image_ref("never-healthy"), rootfs_tar(), IMAGE_CHANGES["never-healthy"])

    async with own_dockerd(never_healthy) as daemon:
        yield daemon


async def test_daemon_shutdown_is_docker_unavailable(
    stoppable_dockerd: RestartableDockerd,
) -> None:
    """Engine stopped by its daemon shutting down is `docker_unavailable` not `container_exited`.

    dockerd on SIGTERM closes its listener at once, then stops its containers while it still answers
    on open connections: the waiting start sees its engine `exited with code 0`. That is the daemon
    going away, not the engine failing: retryable DockerUnavailable, not a permanent container_exited.
    """
    daemon = stoppable_dockerd
    acts = EngineActivities(settings_for(daemon.url, start_timeout_s=120.0, docker_poll_interval_s=0.05))
    gid = f"t-{uuid.uuid4().hex[:10]}"
    try:
        task = asyncio.create_task(start(acts, gid, image_ref("never-healthy")))
        async with aiodocker.Docker(url=daemon.url) as client:
            deadline = time.monotonic() + 60  # generous: creating on vfs is slow on a loaded 2-core machine
            while True:
                info = await inspect(client, container_name(gid))
                if info is not None and info["State"]["Running"]:
                    break
                assert time.monotonic() < deadline and not task.done(), task
                await asyncio.sleep(0.05)
        assert info["State"]["Health"]["Status"] == "starting"
        await asyncio.to_thread(daemon.stop_daemon)
        err = await expect_error(task, DOCKER_UNAVAILABLE_TYPE)
        # The scenario really happened: the start saw its engine exited (over the open connection), and
        # it was a new connection's refusal that made this unavailability rather than container_exited.
        assert "exited with code" in err.message and "going away" in err.message, err.message
    finally:
        await acts.close()
