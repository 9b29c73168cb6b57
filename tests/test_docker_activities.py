"""The Docker activities against a real engine (contract sections 3-4, issue 3)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import aiodocker
import pytest
from aiodocker.exceptions import DockerError, DockerStreamError
from aiodocker.networks import DockerNetwork
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.docker import EngineActivities
from activities.docker_gateway import DockerGateway, Inspect
from activities.engine_spec import UnsafeEngineConfig, check_locked_down, container_config, normalize_image_ref
from activities.readiness import Readiness, seconds_since
from contract.engine import (
    DOCKER_UNAVAILABLE_TYPE,
    EngineOutcome,
    EnsureEngineRemoved,
    EnsureEngineRunning,
    FailedStartRemoved,
    RemoveFailedStart,
)
from contract.image_policy import parse_allow, refusal
from contract.models import LABEL_GAME_ID, LABEL_JOB_RUN, LABEL_MANAGED_BY, MANAGED_BY, ErrorCode, container_name
from contract.policies import DOCKER_RETRY_POLICY
from contract.settings import Settings
from tests.support.docker_engine import (
    IMAGE_CHANGES,
    TEST_REPO,
    DockerEngine,
    EngineImages,
    image_ref,
    import_image,
    rootfs_tar,
)
from tests.support.restartable_dockerd import RestartableDockerd, own_dockerd
from tests.support.tiny_registry import TinyRegistry

pytestmark = pytest.mark.docker

# No registry answers on loopback port 9: the pull fails at once, without leaving this machine.
ABSENT_REPO = "127.0.0.1:9/rtjobs-test/absent"
ABSENT_IMAGE = f"{ABSENT_REPO}:1"

MakeActivities = Callable[..., EngineActivities]
# The scratch tmpfs's options for the default engine user (before its size).
SCRATCH = "rw,noexec,nosuid,nodev,mode=1777,uid=65534,gid=65534"


def settings_for(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "DOCKER_HOST": url,
        "engine_image": "rtjobs-test/engine:healthy",
        "game_network": "rtjobs-test-games",
        "start_timeout_s": 20.0,
        "stop_timeout_s": 5,
        "docker_call_timeout_s": 10.0,
        "engine_memory_bytes": 64 * 1024 * 1024,
        "engine_nano_cpus": 500_000_000,
        "engine_pids_limit": 64,
        "docker_poll_interval_s": 0.1,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
async def make_activities(docker_engine: DockerEngine) -> AsyncIterator[MakeActivities]:
    made: list[EngineActivities] = []

    def make(**overrides: Any) -> EngineActivities:
        acts = EngineActivities(settings_for(docker_engine.url, **overrides))
        made.append(acts)
        return acts

    yield make
    for acts in made:
        await acts.close()


def job_env() -> ActivityEnvironment:
    """An activity environment as a fresh job run sees it: its own workflow id and run id."""
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info, workflow_id=f"runtime-test-{uuid.uuid4().hex[:8]}", workflow_run_id=str(uuid.uuid4())
    )
    return env


async def start(acts: EngineActivities, game_id: str, image: str | None = None) -> EngineOutcome:
    env = job_env()
    outcome: EngineOutcome = await env.run(
        acts.ensure_engine_running, EnsureEngineRunning(game_id=game_id, image=image)
    )
    return outcome


async def stop(acts: EngineActivities, game_id: str, stop_timeout_s: int | None = None) -> EngineOutcome:
    env = job_env()
    request = EnsureEngineRemoved(game_id=game_id, stop_timeout_s=stop_timeout_s)
    outcome: EngineOutcome = await env.run(acts.ensure_engine_removed, request)
    return outcome


async def inspect(docker: aiodocker.Docker, ref: str) -> dict[str, Any] | None:
    try:
        info: dict[str, Any] = await docker.containers.container(ref).show()
    except DockerError as err:
        assert err.status == 404, err
        return None
    return info


async def foreign_container(docker: aiodocker.Docker, game_id: str, image: str) -> str:
    """A container with the game's name that rtjobs does not own (no labels), running."""
    c = await docker.containers.create({"Image": image}, name=container_name(game_id))
    await c.start()
    return str(c.id)


async def expect_error(coro: Any, code: str) -> ApplicationError:
    with pytest.raises(ApplicationError) as caught:
        await coro
    err = caught.value
    assert err.type == code, f"{err.type}: {err.message}"
    assert err.non_retryable is (code != DOCKER_UNAVAILABLE_TYPE)
    assert "\n" not in err.message
    return err


async def test_fresh_start_runs_hardened_labelled_engine_reachable_by_name_on_game_network(
    make_activities: MakeActivities, docker: aiodocker.Docker, images: EngineImages, game_id: str
) -> None:
    network = f"rtjobs-test-{uuid.uuid4().hex[:8]}"
    acts = make_activities(game_network=network, engine_cap_add=["NET_BIND_SERVICE"])
    beats: list[tuple[Any, ...]] = []
    env = job_env()
    env.on_heartbeat = lambda *details: beats.append(details)
    try:
        outcome = await env.run(acts.ensure_engine_running, EnsureEngineRunning(game_id=game_id))
        assert outcome.replay is False
        info = await inspect(docker, container_name(game_id))
        assert info is not None
        assert info["Id"] == outcome.container_id
        assert info["State"]["Running"] is True
        assert info["State"]["Health"]["Status"] == "healthy"
        assert info["Config"]["Image"] == images.healthy  # RTJOBS_ENGINE_IMAGE when none is given
        assert info["Config"]["Labels"][LABEL_GAME_ID] == game_id
        assert info["Config"]["Labels"][LABEL_MANAGED_BY] == MANAGED_BY
        host = info["HostConfig"]
        assert host["Privileged"] is False
        assert host["CapDrop"] == ["ALL"]
        assert host["CapAdd"] == ["NET_BIND_SERVICE"]
        assert host["SecurityOpt"] == ["no-new-privileges"]  # no seccomp option: Docker's default profile
        # Locked down by default: read-only root, a bounded noexec tmpfs at /tmp, uid/gid 65534, no mounts.
        assert host["ReadonlyRootfs"] is True
        assert host["Tmpfs"] == {"/tmp": f"{SCRATCH},size={64 * 1024 * 1024}"}
        assert info["Config"]["User"] == "65534:65534"
        assert not host.get("Binds") and not host.get("Mounts") and not info.get("Mounts")
        assert host["Memory"] == 64 * 1024 * 1024
        assert host["NanoCpus"] == 500_000_000
        assert host["PidsLimit"] == 64
        assert host["AutoRemove"] is False
        assert host["RestartPolicy"]["Name"] in ("", "no")
        endpoint = info["NetworkSettings"]["Networks"][network]
        assert container_name(game_id) in endpoint["Aliases"]
        # The retried attempt must recognise the container: its id went into the heartbeat details.
        assert (outcome.container_id,) in beats

        # Another container on the game network reaches the engine by its name (DNS + HTTP).
        probe = await docker.containers.create(
            {
                "Image": images.ignores_term,
                "Cmd": ["sh", "-c", f"wget -q -O- http://{container_name(game_id)}:8080/healthz"],
                "HostConfig": {"NetworkMode": network},
            }
        )
        try:
            await probe.start()
            result = await asyncio.wait_for(probe.wait(), 20)
            logs = "".join(await probe.log(stdout=True, stderr=True))
            assert result["StatusCode"] == 0, logs
            assert logs.strip() == "ok"
        finally:
            await probe.delete(force=True)
    finally:
        await docker.containers.container(container_name(game_id)).delete(force=True)
        await DockerNetwork(docker, network).delete()  # type: ignore[no-untyped-call]


async def test_start_again_is_a_replay_of_the_same_container(
    make_activities: MakeActivities, images: EngineImages, game_id: str
) -> None:
    acts = make_activities()
    first = await start(acts, game_id, images.healthy)
    again = await start(acts, game_id, images.healthy)
    assert again == EngineOutcome(container_id=first.container_id, replay=True)
    # No image given means RTJOBS_ENGINE_IMAGE, the same image here: still a replay.
    assert await start(acts, game_id) == again


async def test_retried_attempt_finding_its_own_container_is_a_fresh_start(
    make_activities: MakeActivities, images: EngineImages, game_id: str
) -> None:
    acts = make_activities()
    first = await start(acts, game_id, images.healthy)
    env = job_env()
    env.info = dataclasses.replace(env.info, attempt=2, heartbeat_details=[first.container_id])
    retried = await env.run(acts.ensure_engine_running, EnsureEngineRunning(game_id=game_id))
    assert retried == EngineOutcome(container_id=first.container_id, replay=False)


async def test_retried_attempt_without_heartbeat_details_knows_its_container_by_the_job_run_label(
    make_activities: MakeActivities, docker: aiodocker.Docker, images: EngineImages, game_id: str
) -> None:
    """The worker died before any heartbeat carried the id: the `galaxy.job-run` label still tells."""
    acts = make_activities()
    env = job_env()
    first = await env.run(acts.ensure_engine_running, EnsureEngineRunning(game_id=game_id, image=images.healthy))
    info = await inspect(docker, first.container_id)
    assert info is not None
    assert info["Config"]["Labels"]["galaxy.job-run"] == f"{env.info.workflow_id}/{env.info.workflow_run_id}"
    env.info = dataclasses.replace(env.info, attempt=2, heartbeat_details=[])
    retried = await env.run(acts.ensure_engine_running, EnsureEngineRunning(game_id=game_id, image=images.healthy))
    assert retried == EngineOutcome(container_id=first.container_id, replay=False)
    # Another job run finding the same container is a replay.
    assert await start(acts, game_id, images.healthy) == EngineOutcome(container_id=first.container_id, replay=True)


async def test_start_conflicts_with_our_container_running_another_image(
    make_activities: MakeActivities, docker: aiodocker.Docker, images: EngineImages, game_id: str
) -> None:
    acts = make_activities()
    first = await start(acts, game_id, images.healthy)
    err = await expect_error(start(acts, game_id, images.healthy_b), ErrorCode.CONTAINER_CONFLICT)
    assert images.healthy_b in err.message
    info = await inspect(docker, container_name(game_id))
    assert info is not None and info["Id"] == first.container_id and info["State"]["Running"]


async def test_start_conflicts_with_a_foreign_container_and_leaves_it_alone(
    make_activities: MakeActivities, docker: aiodocker.Docker, images: EngineImages, game_id: str
) -> None:
    foreign = await foreign_container(docker, game_id, images.healthy)
    err = await expect_error(start(make_activities(), game_id, images.healthy), ErrorCode.CONTAINER_CONFLICT)
    assert "not managed by rtjobs" in err.message
    info = await inspect(docker, container_name(game_id))
    assert info is not None and info["Id"] == foreign and info["State"]["Running"]


async def test_stopped_container_of_ours_is_removed_and_made_anew(
    make_activities: MakeActivities, docker: aiodocker.Docker, images: EngineImages, game_id: str
) -> None:
    acts = make_activities()
    first = await start(acts, game_id, images.healthy)
    await docker.containers.container(first.container_id).stop(t=5)
    again = await start(acts, game_id, images.healthy)
    assert again.replay is False
    assert again.container_id != first.container_id
    assert await inspect(docker, first.container_id) is None
    info = await inspect(docker, again.container_id)
    assert info is not None and info["State"]["Health"]["Status"] == "healthy"


async def test_missing_image_that_cannot_be_pulled_fails_image_pull_failed(
    make_activities: MakeActivities, docker: aiodocker.Docker, game_id: str
) -> None:
    t0 = time.monotonic()
    acts = make_activities(image_allow=f"{TEST_REPO},{ABSENT_REPO}")
    err = await expect_error(start(acts, game_id, ABSENT_IMAGE), ErrorCode.IMAGE_PULL_FAILED)
    # Upper bounds in this file are generous on purpose (a loaded 2-core machine): each is far below
    # the wait it proves was not taken (here the 600 s pull bound), so only a real hang fails it.
    assert time.monotonic() - t0 < 120
    assert ABSENT_IMAGE in err.message
    assert "connection refused" in err.message  # the reason is in the message
    assert await inspect(docker, container_name(game_id)) is None


async def test_engine_exiting_at_once_fails_container_exited_with_code_and_log_tail(
    make_activities: MakeActivities, docker: aiodocker.Docker, images: EngineImages, game_id: str
) -> None:
    err = await expect_error(start(make_activities(), game_id, images.exits), ErrorCode.CONTAINER_EXITED)
    assert "exited with code 3" in err.message
    assert "fatal: no map" in err.message and "loading map" in err.message
    assert len(err.message) <= 1100
    assert await inspect(docker, container_name(game_id)) is None


async def test_engine_never_healthy_fails_engine_unhealthy_after_start_timeout_leaving_nothing(
    make_activities: MakeActivities, docker: aiodocker.Docker, images: EngineImages, game_id: str
) -> None:
    acts = make_activities(start_timeout_s=3.0)
    t0 = time.monotonic()
    err = await expect_error(start(acts, game_id, images.never_healthy), ErrorCode.ENGINE_UNHEALTHY)
    elapsed = time.monotonic() - t0
    assert 3.0 <= elapsed < 60.0, elapsed  # waited the timeout out, then gave up (did not wait forever)
    assert "not healthy within 3s" in err.message
    assert await inspect(docker, container_name(game_id)) is None


async def test_engine_reported_unhealthy_fails_engine_unhealthy_at_once_leaving_nothing(
    make_activities: MakeActivities, docker: aiodocker.Docker, images: EngineImages, game_id: str
) -> None:
    acts = make_activities(start_timeout_s=600.0)
    t0 = time.monotonic()
    err = await expect_error(start(acts, game_id, images.unhealthy), ErrorCode.ENGINE_UNHEALTHY)
    assert time.monotonic() - t0 < 300  # reported when Docker said unhealthy, not at the 600 s timeout
    assert "reported unhealthy" in err.message
    assert await inspect(docker, container_name(game_id)) is None


async def test_slow_engine_that_becomes_healthy_within_the_timeout_succeeds(
    make_activities: MakeActivities, docker: aiodocker.Docker, images: EngineImages, game_id: str
) -> None:
    t0 = time.monotonic()
    outcome = await start(make_activities(start_timeout_s=20.0), game_id, images.slow_healthy)
    assert time.monotonic() - t0 >= 3.0  # it really waited for the health check
    info = await inspect(docker, outcome.container_id)
    assert info is not None and info["State"]["Health"]["Status"] == "healthy"


async def test_engine_without_healthcheck_is_ready_once_it_ran_for_the_stability_window(
    make_activities: MakeActivities, docker: aiodocker.Docker, images: EngineImages, game_id: str
) -> None:
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


async def test_replay_of_an_engine_running_longer_than_the_window_does_not_wait_again(
    make_activities: MakeActivities, images: EngineImages, game_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counted from State.StartedAt, not from when this attempt first looked: one look suffices."""
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
async def test_engine_without_healthcheck_crashing_at_start_is_always_container_exited(
    image: str, make_activities: MakeActivities, docker: aiodocker.Docker, images: EngineImages
) -> None:
    """Measured before the window existed: the at-once image was reported a success in 4-5 of 10 starts
    (the first inspect found it still running), the 0.3 s one in all of them. With the default window
    (1 s) every start must be container_exited with the log tail, and leave nothing."""
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


async def test_stability_window_counts_from_started_at_and_restarts_count_again() -> None:
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


async def test_cancelled_start_removes_the_container_it_made(
    make_activities: MakeActivities, docker: aiodocker.Docker, images: EngineImages, game_id: str
) -> None:
    acts = make_activities(start_timeout_s=60.0)
    env = job_env()
    task = asyncio.create_task(
        env.run(acts.ensure_engine_running, EnsureEngineRunning(game_id=game_id, image=images.never_healthy))
    )
    deadline = time.monotonic() + 20
    while await inspect(docker, container_name(game_id)) is None:
        assert time.monotonic() < deadline and not task.done()
        await asyncio.sleep(0.1)
    env.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await inspect(docker, container_name(game_id)) is None


async def test_concurrently_created_container_of_ours_is_adopted_after_a_409(
    make_activities: MakeActivities,
    docker: aiodocker.Docker,
    images: EngineImages,
    game_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    other = await start(make_activities(), game_id, images.healthy)
    acts = make_activities()
    real_inspect = acts.gateway.inspect
    calls = 0

    async def first_inspect_misses(ref: str, code: ErrorCode) -> dict[str, Any] | None:
        # The concurrent creator's container appears between our inspect and our create.
        nonlocal calls
        calls += 1
        return None if calls == 1 else await real_inspect(ref, code)

    monkeypatch.setattr(acts.gateway, "inspect", first_inspect_misses)
    outcome = await start(acts, game_id, images.healthy)
    assert outcome == EngineOutcome(container_id=other.container_id, replay=True)


async def test_concurrently_created_foreign_container_is_a_clean_conflict_after_a_409(
    make_activities: MakeActivities,
    docker: aiodocker.Docker,
    images: EngineImages,
    game_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    foreign = await foreign_container(docker, game_id, images.healthy)
    acts = make_activities()
    real_inspect = acts.gateway.inspect
    calls = 0

    async def first_inspect_misses(ref: str, code: ErrorCode) -> dict[str, Any] | None:
        nonlocal calls
        calls += 1
        return None if calls == 1 else await real_inspect(ref, code)

    monkeypatch.setattr(acts.gateway, "inspect", first_inspect_misses)
    await expect_error(start(acts, game_id, images.healthy), ErrorCode.CONTAINER_CONFLICT)
    info = await inspect(docker, container_name(game_id))
    assert info is not None and info["Id"] == foreign


async def test_stop_removes_the_engine_and_reports_its_id(
    make_activities: MakeActivities, docker: aiodocker.Docker, images: EngineImages, game_id: str
) -> None:
    acts = make_activities()
    started = await start(acts, game_id, images.healthy)
    t0 = time.monotonic()
    stopped = await stop(acts, game_id, stop_timeout_s=600)
    assert time.monotonic() - t0 < 300  # it honoured SIGTERM: the 600 s grace period was not waited out
    assert stopped == EngineOutcome(container_id=started.container_id, replay=False)
    assert await inspect(docker, started.container_id) is None


async def test_stop_without_a_container_is_a_replay_with_empty_id(
    make_activities: MakeActivities, game_id: str
) -> None:
    assert await stop(make_activities(), game_id) == EngineOutcome(container_id="", replay=True)


async def test_stop_of_a_foreign_container_conflicts_and_leaves_it_alone(
    make_activities: MakeActivities, docker: aiodocker.Docker, images: EngineImages, game_id: str
) -> None:
    foreign = await foreign_container(docker, game_id, images.healthy)
    await expect_error(stop(make_activities(), game_id), ErrorCode.CONTAINER_CONFLICT)
    info = await inspect(docker, foreign)
    assert info is not None and info["State"]["Running"]


async def test_engine_ignoring_sigterm_is_killed_after_the_grace_period(
    make_activities: MakeActivities, docker: aiodocker.Docker, images: EngineImages, game_id: str
) -> None:
    acts = make_activities(docker_call_timeout_s=5.0)
    started = await start(acts, game_id, images.ignores_term)
    t0 = time.monotonic()
    stopped = await stop(acts, game_id, stop_timeout_s=2)
    elapsed = time.monotonic() - t0
    # Waited the grace period; that the kill followed is proven by the removal below, not by a clock.
    assert elapsed >= 2.0, elapsed
    assert stopped == EngineOutcome(container_id=started.container_id, replay=False)
    assert await inspect(docker, started.container_id) is None


async def test_unreachable_docker_is_a_quick_retryable_docker_unavailable(
    docker_engine: DockerEngine, tmp_path: Any, game_id: str
) -> None:
    dead = f"unix://{tmp_path}/no-docker.sock"
    acts = EngineActivities(settings_for(dead))
    try:
        t0 = time.monotonic()
        err = await expect_error(start(acts, game_id), DOCKER_UNAVAILABLE_TYPE)
        assert "unavailable" in err.message.lower()
        err = await expect_error(stop(acts, game_id), DOCKER_UNAVAILABLE_TYPE)
        assert time.monotonic() - t0 < 20  # refused at once, not after the 10 s call deadline of each call
    finally:
        await acts.close()


async def test_invalid_input_is_rejected_without_touching_docker(make_activities: MakeActivities) -> None:
    acts = make_activities()
    await expect_error(start(acts, "Bad_Id"), ErrorCode.INVALID_REQUEST)
    await expect_error(start(acts, "g-1", "no spaces allowed"), ErrorCode.INVALID_REQUEST)
    await expect_error(stop(acts, "g-1", stop_timeout_s=3601), ErrorCode.INVALID_REQUEST)


def test_retry_policy_is_bounded_and_never_retries_permanent_codes() -> None:
    assert DOCKER_RETRY_POLICY.maximum_attempts == 5
    assert DOCKER_UNAVAILABLE_TYPE not in (DOCKER_RETRY_POLICY.non_retryable_error_types or [])
    for code in (
        ErrorCode.IMAGE_PULL_FAILED,
        ErrorCode.CONTAINER_CONFLICT,
        ErrorCode.CONTAINER_EXITED,
        ErrorCode.ENGINE_UNHEALTHY,
        ErrorCode.CONTAINER_STOP_FAILED,
        ErrorCode.CONTAINER_START_FAILED,
        ErrorCode.INVALID_REQUEST,
    ):
        assert code.value in (DOCKER_RETRY_POLICY.non_retryable_error_types or [])


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("galaxy/engine", "galaxy/engine:latest"),
        ("registry:5000/x/y:2", "registry:5000/x/y:2"),
    ],
)
def test_image_references_naming_the_same_image_normalize_equal(a: str, b: str) -> None:
    assert normalize_image_ref(a) == normalize_image_ref(b)


def test_different_image_references_normalize_differently() -> None:
    assert normalize_image_ref("registry:5000/x/y") != normalize_image_ref("registry:5000/x/y:2")
    assert normalize_image_ref("galaxy/engine:1") != normalize_image_ref("galaxy/engine:2")


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


async def test_pull_from_a_registry_that_never_answers_is_bounded(
    make_activities: MakeActivities, docker: aiodocker.Docker, game_id: str
) -> None:
    """A registry that accepts the connection and then says nothing must not hang the start."""
    held: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        acts = make_activities(docker_pull_timeout_s=2.0, image_allow=f"{TEST_REPO},127.0.0.1:{port}/rtjobs-test/*")
        t0 = time.monotonic()
        err = await expect_error(
            start(acts, game_id, f"127.0.0.1:{port}/rtjobs-test/silent:1"), ErrorCode.IMAGE_PULL_FAILED
        )
        assert 2.0 <= time.monotonic() - t0 < 120  # stopped at its 2 s bound (the default is 600 s)
        assert "did not finish within 2s" in err.message
        assert await inspect(docker, container_name(game_id)) is None
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_docker_call_classification(make_activities: MakeActivities, tmp_path: Any) -> None:
    """The one classification: which daemon answers are retryable (DockerUnavailable), which the
    permanent code, and that a daemon's error verdict counts only while the daemon still answers."""
    gateway = make_activities().gateway
    quick = make_activities(docker_call_timeout_s=0.2).gateway  # for the deadline cases only
    code = ErrorCode.CONTAINER_START_FAILED

    def failing(status: int) -> Callable[[], Any]:
        async def call() -> None:
            raise DockerError(status, f"status {status}")

        return call

    async def in_stream_error() -> None:
        raise DockerStreamError("manifest unknown")

    async def hangs() -> None:
        await asyncio.sleep(5)

    for status in (900, 500, 502, 503):  # connection failure, daemon errors, proxy in front of it
        await expect_error(gateway.call("op", failing(status), code), DOCKER_UNAVAILABLE_TYPE)
    await expect_error(gateway.call("op", failing(500), code, daemon_errors_permanent=True), code.value)
    await expect_error(gateway.call("op", in_stream_error, code, daemon_errors_permanent=True), code.value)
    await expect_error(gateway.call("op", failing(400), code), code.value)
    err = await expect_error(quick.call("op", hangs, code), DOCKER_UNAVAILABLE_TYPE)
    assert "within 0.2s" in err.message
    # A bound on work the daemon does while answering (a pull) is that work's failure, not unavailability.
    err = await expect_error(
        quick.call("op", hangs, code, overrun_code=ErrorCode.IMAGE_PULL_FAILED), "image_pull_failed"
    )
    assert "did not finish within 0.2s" in err.message
    with pytest.raises(DockerError):
        await gateway.call("op", failing(404), code, passthrough={404})

    # The same 500 from a daemon that no longer answers a new connection (one shutting down fails what
    # is in flight on its open connections) is unavailability, not the request's fault.
    gone = DockerGateway(settings_for(f"unix://{tmp_path}/no-docker.sock"))
    try:
        assert await gateway.daemon_is_up() and not await gone.daemon_is_up()
        err = await expect_error(
            gone.call("op", failing(500), code, daemon_errors_permanent=True), DOCKER_UNAVAILABLE_TYPE
        )
        assert "going away" in err.message
        await expect_error(
            gone.call("op", in_stream_error, code, daemon_errors_permanent=True), DOCKER_UNAVAILABLE_TYPE
        )
    finally:
        await gone.close()


async def test_engine_oom_killed_before_healthy_fails_container_exited_saying_so(
    make_activities: MakeActivities, docker: aiodocker.Docker, images: EngineImages, game_id: str
) -> None:
    acts = make_activities(engine_memory_bytes=16 * 1024 * 1024)
    err = await expect_error(start(acts, game_id, images.oom), ErrorCode.CONTAINER_EXITED)
    assert "(OOM-killed)" in err.message
    assert "filling memory" in err.message and "survived" not in err.message
    assert await inspect(docker, container_name(game_id)) is None


# --- compensation of a failed start (remove_failed_start) -------------------------------------------


def job_run_of(env: ActivityEnvironment) -> str:
    return f"{env.info.workflow_id}/{env.info.workflow_run_id}"


async def test_remove_failed_start_removes_this_runs_containers_in_any_state_and_nothing_else(
    make_activities: MakeActivities, docker: aiodocker.Docker, images: EngineImages, game_id: str
) -> None:
    acts = make_activities()
    env = job_env()
    run = job_run_of(env)
    made: list[str] = []

    async def labelled(image: str, labels: dict[str, str], *, started: bool = True) -> str:
        container = await docker.containers.create(
            {"Image": image, "Labels": labels, "HostConfig": {"NetworkMode": "none"}}
        )
        made.append(str(container.id))
        if started:
            await container.start()
        return str(container.id)

    ours = {LABEL_GAME_ID: game_id, LABEL_MANAGED_BY: MANAGED_BY, LABEL_JOB_RUN: run}
    try:
        # Running: the engine this run's own start made, labelled by the create itself.
        request = EnsureEngineRunning(game_id=game_id, image=images.healthy)
        running = (await env.run(acts.ensure_engine_running, request)).container_id
        created = await labelled(images.healthy, ours, started=False)
        exited = await labelled(images.exits, ours)
        await docker.containers.container(exited).wait()
        kept = [
            await labelled(images.ignores_term, {**ours, LABEL_JOB_RUN: job_run_of(job_env())}),  # another run's
            await labelled(images.ignores_term, {**ours, LABEL_GAME_ID: f"{game_id}-x"}),  # another game's
            await labelled(images.ignores_term, {LABEL_GAME_ID: game_id, LABEL_JOB_RUN: run}),  # not rtjobs'
            await labelled(images.ignores_term, {}),  # foreign
        ]
        states = {}
        for container_id in (running, created, exited):
            info = await inspect(docker, container_id)
            assert info is not None
            states[container_id] = info["State"]["Status"]
        assert states == {running: "running", created: "created", exited: "exited"}

        removed = await env.run(acts.remove_failed_start, RemoveFailedStart(game_id=game_id))

        assert sorted(removed.removed) == sorted([running, created, exited])
        for container_id in (running, created, exited):
            assert await inspect(docker, container_id) is None
        for container_id in kept:
            info = await inspect(docker, container_id)
            assert info is not None and info["State"]["Running"], container_id
        # A retried attempt (its reply was lost) finds nothing more to do.
        assert await env.run(acts.remove_failed_start, RemoveFailedStart(game_id=game_id)) == FailedStartRemoved(
            removed=[]
        )
    finally:
        for container_id in made:
            with contextlib.suppress(DockerError):
                await docker.containers.container(container_id).delete(force=True, v=True)


async def test_remove_failed_start_with_docker_unreachable_is_retryable_docker_unavailable(
    docker_engine: DockerEngine, tmp_path: Any
) -> None:
    acts = EngineActivities(settings_for(f"unix://{tmp_path}/no-docker.sock"))
    try:
        err = await expect_error(
            job_env().run(acts.remove_failed_start, RemoveFailedStart(game_id="g-1")), DOCKER_UNAVAILABLE_TYPE
        )
        assert "unavailable" in err.message.lower()
        # A start with an invalid game id never made anything: nothing to ask Docker.
        nothing = await job_env().run(acts.remove_failed_start, RemoveFailedStart(game_id="Bad_Id"))
        assert nothing == FailedStartRemoved(removed=[])
    finally:
        await acts.close()


# --- a daemon that shuts down during the readiness wait ------------------------------------------------


@pytest.fixture
async def stoppable_dockerd() -> AsyncIterator[RestartableDockerd]:
    """A dockerd of this test's own (it will be SIGTERMed), with the never-healthy image."""

    async def never_healthy(client: aiodocker.Docker) -> None:
        await import_image(client, image_ref("never-healthy"), rootfs_tar(), IMAGE_CHANGES["never-healthy"])

    async with own_dockerd(never_healthy) as daemon:
        yield daemon


async def test_engine_stopped_by_its_daemon_shutting_down_is_docker_unavailable_not_container_exited(
    stoppable_dockerd: RestartableDockerd,
) -> None:
    """dockerd on SIGTERM closes its listener at once, then stops its containers while it still answers
    on open connections: the waiting start sees its engine `exited with code 0`. That is the daemon
    going away, not the engine failing: retryable DockerUnavailable, not a permanent container_exited."""
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


# --- the image policy (RTJOBS_IMAGE_ALLOW, RTJOBS_IMAGE_REQUIRE_DIGEST) ----------------------------------


class CallCounter:
    """Counts every Docker call the activities make (all go through `DockerGateway.call` or `pull`)."""

    def __init__(self, acts: EngineActivities, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        real_call, real_pull = acts.gateway.call, acts.gateway.pull

        async def call(what: str, *args: Any, **kwargs: Any) -> Any:
            self.calls.append(what)
            return await real_call(what, *args, **kwargs)

        async def pull(image: str, *args: Any) -> None:
            self.calls.append(f"pull {image}")
            await real_pull(image, *args)

        monkeypatch.setattr(acts.gateway, "call", call)
        monkeypatch.setattr(acts.gateway, "pull", pull)


async def expect_refused(acts: EngineActivities, game_id: str, image: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The start fails `invalid_request` saying the image is not allowed, before any Docker call."""
    counter = CallCounter(acts, monkeypatch)
    err = await expect_error(start(acts, game_id, image), ErrorCode.INVALID_REQUEST)
    assert "not allowed" in err.message and image in err.message, err.message
    assert counter.calls == [], f"a refused image reached Docker: {counter.calls}"
    return err.message


@pytest.fixture
async def extra_tags(docker: aiodocker.Docker) -> AsyncIterator[Callable[[str, str], Any]]:
    """`await tag(source, "repo:tag")`: a local tag of an image, removed (untagged) at teardown."""
    made: list[str] = []

    async def tag(source: str, target: str) -> None:
        repo, name = target.rsplit(":", 1)
        await docker.images.tag(source, repo, tag=name)
        made.append(target)

    yield tag
    for target in made:
        with contextlib.suppress(DockerError):
            await docker.images.delete(target)


async def test_image_policy_runs_allowed_tags_and_refuses_other_tags_repositories_and_registries(
    make_activities: MakeActivities,
    docker: aiodocker.Docker,
    images: EngineImages,
    game_id: str,
    extra_tags: Callable[[str, str], Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = uuid.uuid4().hex[:8]
    other_repo = f"rtjobs-test/other-{run}"
    await extra_tags(images.healthy, f"{other_repo}:healthy")  # present locally: refused all the same
    # Explicit patterns, spelled differently from the references (docker.io/ prefix, tag glob).
    acts = make_activities(image_allow=f"docker.io/{TEST_REPO}:healthy*, {ABSENT_REPO}:1")

    # Allowed: a tag matching the pattern, the same repository after normalisation.
    outcome = await start(acts, game_id, images.healthy)
    assert outcome.replay is False
    await stop(acts, game_id, stop_timeout_s=0)

    refused = [
        images.exits,  # the same repository, a tag outside the pattern
        f"{other_repo}:healthy",  # another repository, even though the image is here
        f"127.0.0.1:9/{TEST_REPO}:healthy",  # another registry with the same repository name
        f"{ABSENT_REPO}:2",  # the allowed closed registry's repository, another tag
    ]
    for image in refused:
        message = await expect_refused(acts, game_id, image, monkeypatch)
        assert "RTJOBS_IMAGE_ALLOW" in message
        assert await inspect(docker, container_name(game_id)) is None
    # Never pulled: Docker has no image of the closed registry's name (a pull would have failed anyway,
    # but the start says `invalid_request`, not `image_pull_failed`, because it never asked Docker).
    for image in (f"127.0.0.1:9/{TEST_REPO}:healthy", f"{ABSENT_REPO}:2"):
        with pytest.raises(DockerError) as missing:
            await docker.images.inspect(image)
        assert missing.value.status == 404
    # The allowed reference of the closed registry does reach Docker (and fails its pull): the policy let
    # it through, and only it.
    await expect_error(start(acts, game_id, ABSENT_IMAGE), ErrorCode.IMAGE_PULL_FAILED)


async def test_default_image_policy_is_the_engine_images_repository_any_tag(
    make_activities: MakeActivities, images: EngineImages, game_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    acts = make_activities()  # RTJOBS_IMAGE_ALLOW unset; RTJOBS_ENGINE_IMAGE=rtjobs-test/engine:healthy
    assert [p.text for p in acts.settings.image_allow_patterns] == [f"docker.io/{TEST_REPO}"]
    assert (await start(acts, game_id, images.healthy_b)).replay is False
    await stop(acts, game_id, stop_timeout_s=0)
    await expect_refused(acts, game_id, "busybox:latest", monkeypatch)
    await expect_refused(acts, game_id, f"evil.example.com/{TEST_REPO}:healthy", monkeypatch)


async def test_a_tag_that_moves_still_runs_the_policy_is_about_names(
    make_activities: MakeActivities,
    docker: aiodocker.Docker,
    images: EngineImages,
    game_id: str,
    extra_tags: Callable[[str, str], Any],
) -> None:
    """Tags are mutable: an allowed tag re-pointed to another image still runs, now that other image.
    Only RTJOBS_IMAGE_REQUIRE_DIGEST pins content; the allow list is about names."""
    moving = f"{TEST_REPO}:moving-{uuid.uuid4().hex[:8]}"
    acts = make_activities(engine_image=moving, image_allow=f"{TEST_REPO}:moving-*")
    await extra_tags(images.healthy, moving)
    first = await start(acts, game_id, moving)
    first_info = await inspect(docker, first.container_id)
    await stop(acts, game_id, stop_timeout_s=0)

    await extra_tags(images.healthy_b, moving)  # the same name, another image
    second = await start(acts, game_id, moving)
    second_info = await inspect(docker, second.container_id)
    assert first_info is not None and second_info is not None
    assert first_info["Config"]["Image"] == second_info["Config"]["Image"] == moving
    assert first_info["Image"] == (await docker.images.inspect(images.healthy))["Id"]
    assert second_info["Image"] == (await docker.images.inspect(images.healthy_b))["Id"] != first_info["Image"]


async def test_require_digest_refuses_tags_and_lets_a_digest_reference_through(
    make_activities: MakeActivities, docker: aiodocker.Docker, game_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = "sha256:" + "0" * 64
    pinned_default = f"{TEST_REPO}@{digest}"
    acts = make_activities(
        engine_image=pinned_default, image_allow=f"{TEST_REPO}@*,{ABSENT_REPO}@*", image_require_digest=True
    )
    message = await expect_refused(acts, game_id, ABSENT_IMAGE, monkeypatch)
    assert "RTJOBS_IMAGE_REQUIRE_DIGEST" in message
    await expect_refused(acts, game_id, image_ref("healthy"), monkeypatch)  # present here: still a tag
    assert await inspect(docker, container_name(game_id)) is None
    # A digest reference of an allowed repository passes the policy and reaches Docker (here: a pull from
    # the closed registry, which fails; no registry holds a digest offline).
    err = await expect_error(start(acts, game_id, f"{ABSENT_REPO}@{digest}"), ErrorCode.IMAGE_PULL_FAILED)
    assert "connection refused" in err.message


@pytest.mark.parametrize(
    ("pattern", "allowed", "refused"),
    [
        ("busybox", ["busybox", "busybox:1.36", "docker.io/library/busybox:latest", "index.docker.io/busybox"],
         ["busyboxx", "library/busybox-x", "evil.example.com/busybox", "evil.example.com/library/busybox",
          "x/busybox"]),
        ("galaxy/engine", ["galaxy/engine", "docker.io/galaxy/engine:1.4", f"galaxy/engine@sha256:{'a' * 64}"],
         ["evil.example.com/galaxy/engine", "galaxy/engine-x", "galaxy/engine/x", "galaxy/other", "engine"]),
        ("galaxy/engine:*", ["galaxy/engine:1", f"galaxy/engine@sha256:{'a' * 64}"], ["galaxy/other:1"]),
        ("galaxy/engine:1.*", ["galaxy/engine:1.4", "galaxy/engine:1."],
         ["galaxy/engine:2.0", "galaxy/engine", "galaxy/engine:11", f"galaxy/engine:1.4@sha256:{'a' * 64}"]),
        ("galaxy/engine@*", [f"galaxy/engine@sha256:{'a' * 64}", f"galaxy/engine:1@sha256:{'b' * 64}"],
         ["galaxy/engine:1", "galaxy/engine"]),
        (f"galaxy/engine@sha256:{'a' * 64}", [f"galaxy/engine@sha256:{'a' * 64}"],
         [f"galaxy/engine@sha256:{'b' * 64}", "galaxy/engine:latest"]),
        ("registry.example.com/team/*", ["registry.example.com/team/engine:1", "registry.example.com/team/a/b"],
         ["registry.example.com/team", "registry.example.com/teamx/engine", "registry.example.com/other/engine",
          "evil.example.com/registry.example.com/team/engine", "team/engine"]),
        ("registry.example.com:5000/*", ["registry.example.com:5000/x", "registry.example.com:5000/x/y:1"],
         ["registry.example.com/x", "registry.example.com:5001/x"]),
        ("galaxy/*", ["galaxy/engine", "docker.io/galaxy/engine:2", "galaxy/a/b"], ["busybox", "x.io/galaxy/engine"]),
        ("localhost:5000/team/*:v*", ["localhost:5000/team/e:v1"], ["localhost:5000/team/e:1", "localhost:5000/e:v1"]),
        ("*", ["busybox", "evil.example.com/x:1"], []),
    ],
)  # fmt: skip
def test_image_policy_patterns_match_normalised_references(
    pattern: str, allowed: list[str], refused: list[str]
) -> None:
    policy = parse_allow(pattern)
    for ref in allowed:
        assert refusal(ref, policy, require_digest=False) is None, (pattern, ref)
    for ref in refused:
        why = refusal(ref, policy, require_digest=False)
        assert why is not None and "not allowed" in why, (pattern, ref)


@pytest.mark.parametrize(
    "bad",
    ["Galaxy/engine", "galaxy/engine:1.*@*", "galaxy/engine@sha1:00", "registry.example.com/*/x", ":1", "a b"],
)
def test_a_malformed_image_pattern_is_a_configuration_error(bad: str) -> None:
    with pytest.raises(ValueError, match="RTJOBS_IMAGE_ALLOW"):
        settings_for("unix:///x.sock", image_allow=f"{TEST_REPO},{bad}")


def test_the_engine_image_must_pass_its_own_policy() -> None:
    with pytest.raises(ValueError, match=r"RTJOBS_ENGINE_IMAGE.*not allowed by RTJOBS_IMAGE_ALLOW"):
        settings_for("unix:///x.sock", image_allow="galaxy/engine")
    with pytest.raises(ValueError, match=r"RTJOBS_ENGINE_IMAGE.*RTJOBS_IMAGE_REQUIRE_DIGEST"):
        settings_for("unix:///x.sock", image_require_digest=True)
    pinned = settings_for("unix:///x.sock", engine_image=f"{TEST_REPO}@sha256:{'a' * 64}", image_require_digest=True)
    assert pinned.image_refusal(f"{TEST_REPO}@sha256:{'b' * 64}") is None
    # Empty means unset: the default (a list allowing nothing would refuse even the engine image).
    assert settings_for("unix:///x.sock", image_allow=" ").image_refusal(image_ref("healthy")) is None


# --- the lock-down of the create body --------------------------------------------------------------------


def test_create_body_is_locked_down_and_configurable() -> None:
    locked = container_config(settings_for("unix:///x.sock"), "g-1", image_ref("healthy"), "net")
    host = locked["HostConfig"]
    assert host["ReadonlyRootfs"] is True and locked["User"] == "65534:65534"
    assert host["Tmpfs"] == {"/tmp": f"{SCRATCH},size={64 * 1024 * 1024}"}
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert not any(key in host for key in ("Binds", "Mounts", "Devices", "VolumesFrom")) and "Volumes" not in locked

    sized = container_config(settings_for("unix:///x.sock", engine_tmpfs_bytes=8 << 20), "g-1", "x", "net")
    assert sized["HostConfig"]["Tmpfs"] == {"/tmp": f"{SCRATCH},size={8 << 20}"}
    # Opting out: the image's writable layer (no tmpfs) and the image's own USER.
    loose = container_config(settings_for("unix:///x.sock", engine_read_only=False, engine_user=""), "g-1", "x", "net")
    assert loose["HostConfig"]["ReadonlyRootfs"] is False and "Tmpfs" not in loose["HostConfig"]
    assert "User" not in loose
    for bad_user in ("a b", "65534:", ":65534", "x;y"):
        with pytest.raises(ValueError, match="engine_user"):
            settings_for("unix:///x.sock", engine_user=bad_user)


@pytest.mark.parametrize(
    "loosen",
    [
        {"SecurityOpt": ["no-new-privileges", "seccomp=unconfined"]},
        {"SecurityOpt": ["seccomp:unconfined"]},
        {"SecurityOpt": ["seccomp=/etc/docker/custom.json"]},
        {"SecurityOpt": ["apparmor=unconfined"]},
        {"Privileged": True},
        {"Binds": ["/:/host"]},
        {"Mounts": [{"Type": "bind", "Source": "/var/run/docker.sock", "Target": "/var/run/docker.sock"}]},
        {"Mounts": [{"Type": "volume", "Source": "data", "Target": "/data"}]},
        {"Devices": [{"PathOnHost": "/dev/kmsg", "PathInContainer": "/dev/kmsg"}]},
        {"VolumesFrom": ["other"]},
        {"PidMode": "host"},
        {"NetworkMode": "host"},
        {"Tmpfs": {"/tmp": "rw", "/etc": "rw"}},
    ],
)
def test_a_create_body_that_loosens_the_lock_down_is_refused(loosen: dict[str, Any]) -> None:
    config = container_config(settings_for("unix:///x.sock"), "g-1", image_ref("healthy"), "net")
    check_locked_down(config)  # the real one passes
    tampered = {**config, "HostConfig": {**config["HostConfig"], **loosen}}
    with pytest.raises(UnsafeEngineConfig, match="loosen the lock-down"):
        check_locked_down(tampered)


@pytest.fixture
async def registry() -> AsyncIterator[TinyRegistry]:
    reg = await TinyRegistry().start()
    yield reg
    await reg.close()


async def push_to(docker: aiodocker.Docker, registry: TinyRegistry, source: str, repo: str, tag: str) -> str:
    """Tag `source` as registry/repo:tag, push it, untag it locally; the manifest digest the push reported."""
    name = f"{registry.host}/{repo}"
    await docker.images.tag(source, name, tag=tag)
    try:
        messages = await docker.images.push(name, tag=tag, auth={"serveraddress": registry.host})
    finally:
        with contextlib.suppress(DockerError):
            await docker.images.delete(f"{name}:{tag}")
    errors = [m for m in messages if m.get("error") or m.get("errorDetail")]
    assert not errors, errors
    [digest] = [str(m["aux"]["Digest"]) for m in messages if "Digest" in (m.get("aux") or {})]
    with contextlib.suppress(DockerError):  # the push may have recorded the digest reference locally
        await docker.images.delete(f"{name}@{digest}")
    return digest


async def test_an_allowed_digest_runs_and_require_digest_refuses_a_tag_without_asking_the_registry(
    make_activities: MakeActivities,
    docker: aiodocker.Docker,
    images: EngineImages,
    game_id: str,
    registry: TinyRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real digest reference: the healthy test image pushed to a registry of the test's own (imported
    images have no registry digest). Pinned by digest it runs, pulled by that digest when absent; a tag of
    the same repository is refused under RTJOBS_IMAGE_REQUIRE_DIGEST before anyone asks the registry."""
    repo = f"rtjobs-test/pinned-{uuid.uuid4().hex[:8]}"
    digest = await push_to(docker, registry, images.healthy, repo, "v1")
    pinned = f"{registry.host}/{repo}@{digest}"
    acts = make_activities(
        engine_image=pinned, image_allow=f"{registry.host}/rtjobs-test/*@*", image_require_digest=True
    )
    healthy_id = (await docker.images.inspect(images.healthy))["Id"]
    try:
        # Absent locally under that name: pulled by digest from the registry, then run.
        with pytest.raises(DockerError):
            await docker.images.inspect(pinned)
        outcome = await start(acts, game_id)  # no image given: RTJOBS_ENGINE_IMAGE, the pinned reference
        info = await inspect(docker, outcome.container_id)
        assert info is not None and info["Config"]["Image"] == pinned and info["Image"] == healthy_id
        assert f"GET /v2/{repo}/manifests/{digest}" in registry.requests
        assert pinned in (await docker.images.inspect(pinned))["RepoDigests"]
        await stop(acts, game_id, stop_timeout_s=0)

        asked = len(registry.requests)
        message = await expect_refused(acts, game_id, f"{registry.host}/{repo}:v1", monkeypatch)
        assert "RTJOBS_IMAGE_REQUIRE_DIGEST" in message
        # A digest of another repository (not under the allowed prefix) is refused as well.
        await expect_refused(acts, game_id, f"{registry.host}/other/{repo}@{digest}", monkeypatch)
        assert len(registry.requests) == asked, registry.requests[asked:]
        assert await inspect(docker, container_name(game_id)) is None
    finally:
        with contextlib.suppress(DockerError):
            await docker.images.delete(pinned)
