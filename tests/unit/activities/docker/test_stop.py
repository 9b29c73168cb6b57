"""Stopping an engine (ensure_engine_removed) and removing a failed start's containers
(remove_failed_start) against a real engine.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import aiodocker
import pytest
from aiodocker.exceptions import DockerError
from temporalio.testing import ActivityEnvironment

from activities.docker import EngineActivities
from contract.engine import (
    DOCKER_UNAVAILABLE_TYPE,
    EngineOutcome,
    EnsureEngineRunning,
    FailedStartRemoved,
    RemoveFailedStart,
)
from contract.models import LABEL_GAME_ID, LABEL_JOB_RUN, LABEL_MANAGED_BY, MANAGED_BY, ErrorCode
from tests.support.docker_engine import (
    DockerEngine,
    EngineImages,
)
from tests.unit.activities.docker.engines import (
    MakeActivities,
    expect_error,
    foreign_container,
    inspect,
    job_env,
    settings_for,
    start,
    stop,
)

pytestmark = pytest.mark.docker


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


# --- compensation of a failed start (remove_failed_start) -------------------------------------------


def job_run_of(env: ActivityEnvironment) -> str:
    return f"{env.info.workflow_id}/{env.info.workflow_run_id}"


async def test_remove_failed_start_removes_only_its_own(
    make_activities: MakeActivities, docker: aiodocker.Docker, images: EngineImages, game_id: str
) -> None:
    """`remove_failed_start` removes this run's containers in any state and nothing else."""
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


async def test_remove_failed_start_without_docker(docker_engine: DockerEngine, tmp_path: Any) -> None:
    """`remove_failed_start` with Docker unreachable is retryable `docker_unavailable`."""
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
