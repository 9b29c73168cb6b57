"""Starting an engine (ensure_engine_running) against a real engine: a fresh start, its replays and
retried attempts, conflicts with containers already there, and a start cancelled or raced.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from typing import Any

import aiodocker
import pytest
from aiodocker.networks import DockerNetwork

from contract.engine import (
    EngineOutcome,
    EnsureEngineRunning,
)
from contract.models import LABEL_GAME_ID, LABEL_MANAGED_BY, MANAGED_BY, ErrorCode, container_name
from tests.support.docker_engine import EngineImages
from tests.unit.activities.docker.engines import (
    SCRATCH,
    MakeActivities,
    expect_error,
    foreign_container,
    inspect,
    job_env,
    start,
    stop,
)

pytestmark = pytest.mark.docker


async def test_fresh_start_runs_hardened_engine(
    make_activities: MakeActivities, docker: aiodocker.Docker, images: EngineImages, game_id: str
) -> None:
    """Fresh start runs hardened labelled engine reachable by name on game network."""
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


async def test_retried_attempt_knows_container_by_label(
    make_activities: MakeActivities, docker: aiodocker.Docker, images: EngineImages, game_id: str
) -> None:
    """Retried attempt without heartbeat details knows its container by the job run label.

    The worker died before any heartbeat carried the id: the `galaxy.job-run` label still tells.
    """
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


async def test_start_conflicts_with_foreign_container(
    make_activities: MakeActivities, docker: aiodocker.Docker, images: EngineImages, game_id: str
) -> None:
    """Start conflicts with a foreign container and leaves it alone."""
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


async def test_our_raced_container_is_adopted(
    make_activities: MakeActivities,
    docker: aiodocker.Docker,
    images: EngineImages,
    game_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Concurrently created container of ours is adopted after a 409."""
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


async def test_foreign_raced_container_is_a_conflict(
    make_activities: MakeActivities,
    docker: aiodocker.Docker,
    images: EngineImages,
    game_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Concurrently created foreign container is a clean conflict after a 409."""
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


async def test_invalid_input_is_rejected_without_touching_docker(make_activities: MakeActivities) -> None:
    acts = make_activities()
    await expect_error(start(acts, "Bad_Id"), ErrorCode.INVALID_REQUEST)
    await expect_error(start(acts, "g-1", "no spaces allowed"), ErrorCode.INVALID_REQUEST)
    await expect_error(stop(acts, "g-1", stop_timeout_s=3601), ErrorCode.INVALID_REQUEST)
