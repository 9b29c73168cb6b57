"""The Docker activities against a real engine (contract sections 3-4, issue 3)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiodocker
import pytest
from aiodocker.exceptions import DockerError
from aiodocker.networks import DockerNetwork
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.docker import EngineActivities, normalize_image_ref
from contract.engine import DOCKER_UNAVAILABLE_TYPE, EngineOutcome, EnsureEngineRemoved, EnsureEngineRunning
from contract.models import LABEL_GAME_ID, LABEL_MANAGED_BY, MANAGED_BY, ErrorCode, container_name
from contract.policies import DOCKER_RETRY_POLICY
from contract.settings import Settings
from tests.support.docker_engine import DockerEngine, EngineImages

pytestmark = pytest.mark.docker

# No registry answers on loopback port 9: the pull fails at once, without leaving this machine.
ABSENT_IMAGE = "127.0.0.1:9/rtjobs-test/absent:1"

MakeActivities = Callable[..., EngineActivities]


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


@pytest.fixture
async def game_id(docker: aiodocker.Docker) -> AsyncIterator[str]:
    """A game of the test's own; its container is removed afterwards whatever happened."""
    gid = f"t-{uuid.uuid4().hex[:10]}"
    yield gid
    with contextlib.suppress(DockerError):
        await docker.containers.container(container_name(gid)).delete(force=True, v=True)


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
        assert "no-new-privileges" in host["SecurityOpt"]
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
    err = await expect_error(start(make_activities(), game_id, ABSENT_IMAGE), ErrorCode.IMAGE_PULL_FAILED)
    assert time.monotonic() - t0 < 15
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
    assert 3.0 <= elapsed < 8.0, elapsed
    assert "not healthy within 3s" in err.message
    assert await inspect(docker, container_name(game_id)) is None


async def test_engine_reported_unhealthy_fails_engine_unhealthy_at_once_leaving_nothing(
    make_activities: MakeActivities, docker: aiodocker.Docker, images: EngineImages, game_id: str
) -> None:
    acts = make_activities(start_timeout_s=30.0)
    t0 = time.monotonic()
    err = await expect_error(start(acts, game_id, images.unhealthy), ErrorCode.ENGINE_UNHEALTHY)
    assert time.monotonic() - t0 < 15  # reported, not waited out
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


async def test_engine_without_healthcheck_is_ready_when_running(
    make_activities: MakeActivities, docker: aiodocker.Docker, images: EngineImages, game_id: str
) -> None:
    outcome = await start(make_activities(), game_id, images.ignores_term)
    info = await inspect(docker, outcome.container_id)
    assert info is not None and info["State"]["Running"] and "Health" not in info["State"]


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
    real_inspect = acts._inspect
    calls = 0

    async def first_inspect_misses(ref: str, code: ErrorCode) -> dict[str, Any] | None:
        # The concurrent creator's container appears between our inspect and our create.
        nonlocal calls
        calls += 1
        return None if calls == 1 else await real_inspect(ref, code)

    monkeypatch.setattr(acts, "_inspect", first_inspect_misses)
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
    real_inspect = acts._inspect
    calls = 0

    async def first_inspect_misses(ref: str, code: ErrorCode) -> dict[str, Any] | None:
        nonlocal calls
        calls += 1
        return None if calls == 1 else await real_inspect(ref, code)

    monkeypatch.setattr(acts, "_inspect", first_inspect_misses)
    await expect_error(start(acts, game_id, images.healthy), ErrorCode.CONTAINER_CONFLICT)
    info = await inspect(docker, container_name(game_id))
    assert info is not None and info["Id"] == foreign


async def test_stop_removes_the_engine_and_reports_its_id(
    make_activities: MakeActivities, docker: aiodocker.Docker, images: EngineImages, game_id: str
) -> None:
    acts = make_activities()
    started = await start(acts, game_id, images.healthy)
    t0 = time.monotonic()
    stopped = await stop(acts, game_id, stop_timeout_s=10)
    assert time.monotonic() - t0 < 5  # it honoured SIGTERM; no grace period waited out
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
    assert 2.0 <= elapsed < 6.0, elapsed
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
        assert time.monotonic() - t0 < 3
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
        acts = make_activities(docker_pull_timeout_s=2.0)
        t0 = time.monotonic()
        err = await expect_error(
            start(acts, game_id, f"127.0.0.1:{port}/rtjobs-test/silent:1"), ErrorCode.IMAGE_PULL_FAILED
        )
        assert 2.0 <= time.monotonic() - t0 < 6.0
        assert "did not finish within 2s" in err.message
        assert await inspect(docker, container_name(game_id)) is None
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_docker_call_classification(make_activities: MakeActivities) -> None:
    """Which daemon answers are retryable (DockerUnavailable) and which are the permanent code."""
    acts = make_activities(docker_call_timeout_s=0.2)
    code = ErrorCode.CONTAINER_START_FAILED

    def failing(status: int) -> Callable[[], Any]:
        async def call() -> None:
            raise DockerError(status, f"status {status}")

        return call

    async def hangs() -> None:
        await asyncio.sleep(5)

    for status in (900, 500, 502, 503):  # connection failure, daemon errors, proxy in front of it
        await expect_error(acts._call("op", failing(status), code), DOCKER_UNAVAILABLE_TYPE)
    await expect_error(acts._call("op", failing(500), code, daemon_errors_permanent=True), code.value)
    await expect_error(acts._call("op", failing(400), code), code.value)
    err = await expect_error(acts._call("op", hangs, code), DOCKER_UNAVAILABLE_TYPE)
    assert "within 0.2s" in err.message
    with pytest.raises(DockerError):
        await acts._call("op", failing(404), code, passthrough={404})


async def test_engine_oom_killed_before_healthy_fails_container_exited_saying_so(
    make_activities: MakeActivities, docker: aiodocker.Docker, images: EngineImages, game_id: str
) -> None:
    acts = make_activities(engine_memory_bytes=16 * 1024 * 1024)
    err = await expect_error(start(acts, game_id, images.oom), ErrorCode.CONTAINER_EXITED)
    assert "(OOM-killed)" in err.message
    assert "filling memory" in err.message and "survived" not in err.message
    assert await inspect(docker, container_name(game_id)) is None
