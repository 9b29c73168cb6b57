"""End to end: the real dev server, real Redis, real Docker and the real worker (`rtjobs.workers.build_worker`).

Each test has its own task queue, result stream and game ids, and removes its games' containers.
What a test claims is checked on the real outputs: the stream entries, Docker's own view of the
game's containers, and the workflow histories on the server. Here: start, stop, their replays, a
cancelled start, and the image policy.
"""

from __future__ import annotations

from collections.abc import Callable

import aiodocker
import pytest
import redis.asyncio as aioredis
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from contract.models import LABEL_GAME_ID, LABEL_MANAGED_BY
from contract.settings import Settings
from rtjobs.client import start_job, stop_job
from tests.e2e.outputs import (
    RESULT_WAIT_S,
    STARTED,
    activity_trail,
    inspect_container,
    result_of,
    stream_results,
)
from tests.support.docker_engine import EngineImages
from tests.support.job_worker import (
    MakeSettings,
    game_containers,
    real_worker,
    until_running_container,
)

pytestmark = pytest.mark.docker


# --- start, stop and their replays ------------------------------------------------------------------


async def test_start_stop_and_their_replays_reach_the_stream(
    client: Client,
    worker: Settings,
    docker: aiodocker.Docker,
    redis: aioredis.Redis,
    stream: str,
    games: Callable[[], str],
) -> None:
    gid = games()
    endpoint = f"http://galaxy-game-{gid}:8080"
    started = await result_of(await start_job(client, gid, task_queue=worker.task_queue))
    info = await inspect_container(docker, gid)
    assert info["State"]["Running"] and info["State"]["Health"]["Status"] == "healthy"
    assert info["Config"]["Labels"][LABEL_GAME_ID] == gid and info["Config"]["Labels"][LABEL_MANAGED_BY] == "rtjobs"
    cid = info["Id"]
    assert (started.outcome, started.container_id, started.engine_endpoint, started.error_code) == (
        "success",
        cid,
        endpoint,
        "",
    )

    again = await result_of(await start_job(client, gid, task_queue=worker.task_queue))
    assert (again.outcome, again.container_id, again.engine_endpoint, again.error_code) == (
        "success",
        cid,
        endpoint,
        "replay_no_op",
    )
    assert (await inspect_container(docker, gid))["Id"] == cid, "a replay must not touch the container"

    stopped = await result_of(await stop_job(client, gid, task_queue=worker.task_queue))
    assert (stopped.outcome, stopped.container_id, stopped.engine_endpoint, stopped.error_code) == (
        "success",
        cid,
        endpoint,
        "",
    )
    assert await game_containers(docker, gid) == []

    stopped_again = await result_of(await stop_job(client, gid, task_queue=worker.task_queue))
    assert (stopped_again.outcome, stopped_again.container_id, stopped_again.engine_endpoint) == ("success", "", "")
    assert stopped_again.error_code == "replay_no_op"

    assert await stream_results(redis, stream) == [started, again, stopped, stopped_again]


async def test_exiting_engine_reports_container_exited(
    client: Client,
    worker: Settings,
    docker: aiodocker.Docker,
    redis: aioredis.Redis,
    stream: str,
    games: Callable[[], str],
    images: EngineImages,
) -> None:
    """Engine exiting at once reports `container_exited` with its log tail and leaves nothing."""
    gid = games()
    result = await result_of(await start_job(client, gid, image=images.exits, task_queue=worker.task_queue))
    assert (result.outcome, result.error_code, result.container_id, result.engine_endpoint) == (
        "failure",
        "container_exited",
        "",
        "",
    )
    assert "exited with code 3" in result.error_message
    assert "loading map" in result.error_message and "fatal: no map" in result.error_message
    assert await game_containers(docker, gid) == []
    assert await stream_results(redis, stream) == [result]


async def test_cancel_mid_start_publishes_cancelled(
    client: Client,
    make_settings: MakeSettings,
    docker: aiodocker.Docker,
    redis: aioredis.Redis,
    stream: str,
    games: Callable[[], str],
    images: EngineImages,
) -> None:
    """Cancel mid start publishes cancelled and leaves no container."""
    gid = games()
    # Never healthy: the start can end only by its readiness limit (engine_unhealthy) or by the
    # cancellation. The limit is far beyond what a cancellation takes to land (0.9 s from the request to
    # the result, measured by bench/latency.py), so that a slow machine cannot turn this into a race;
    # how fast it lands is the benchmark's figure, not a bound here.
    settings = make_settings(start_timeout_s=RESULT_WAIT_S / 2)
    async with real_worker(client, settings):
        handle = await start_job(client, gid, image=images.never_healthy, task_queue=settings.task_queue)
        await until_running_container(docker, gid)
        await handle.cancel()
        result = await result_of(handle)
    assert (result.outcome, result.error_code, result.container_id) == ("failure", "cancelled", ""), result
    assert await game_containers(docker, gid) == []
    assert await stream_results(redis, stream) == [result]

    # The cancellation reached the running Docker activity, which ended as cancelled (not completed, failed
    # or timed out), and the publish was scheduled only after that.
    events = list((await handle.fetch_history()).events)
    docker_step = [(kind, i) for kind, i in activity_trail(events, "ensure_engine_running") if kind != STARTED]
    assert [kind for kind, _i in docker_step] == [
        EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
        EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED,
        EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED,
    ], [EventType.Name(kind) for kind, _i in docker_step]
    publish_scheduled = activity_trail(events, "publish_job_result")[0][1]
    assert publish_scheduled > docker_step[-1][1], "the publish must follow the Docker activity's cancellation"


# --- the image policy and the engines' lock-down ----------------------------------------------------


async def test_image_policy_and_lock_down(
    client: Client,
    worker: Settings,
    docker: aiodocker.Docker,
    redis: aioredis.Redis,
    stream: str,
    games: Callable[[], str],
    images: EngineImages,
) -> None:
    """An image outside the policy is `invalid_request` never pulled and an allowed one runs locked down.

    The default policy (RTJOBS_IMAGE_ALLOW unset) admits the engine image's repository only: the same
    repository name on another registry is refused before Docker sees it; the allowed one runs read-only
    as 65534 with its scratch tmpfs (the test image's HEALTHCHECK passes under those defaults).
    """
    refused_gid, allowed_gid = games(), games()
    impostor = f"127.0.0.1:9/{images.healthy}"  # other registry, same repository name; nothing answers there
    refused = await result_of(await start_job(client, refused_gid, image=impostor, task_queue=worker.task_queue))
    assert (refused.outcome, refused.error_code, refused.container_id) == ("failure", "invalid_request", "")
    assert "not allowed by RTJOBS_IMAGE_ALLOW" in refused.error_message and impostor in refused.error_message
    assert await game_containers(docker, refused_gid) == []
    with pytest.raises(aiodocker.DockerError) as missing:
        await docker.images.inspect(impostor)
    assert missing.value.status == 404  # never pulled (a pull would have said image_pull_failed)

    allowed = await result_of(await start_job(client, allowed_gid, image=images.healthy, task_queue=worker.task_queue))
    assert (allowed.outcome, allowed.error_code) == ("success", "")
    info = await inspect_container(docker, allowed_gid)
    assert info["State"]["Health"]["Status"] == "healthy"
    assert info["HostConfig"]["ReadonlyRootfs"] is True and info["Config"]["User"] == "65534:65534"
    assert list(info["HostConfig"]["Tmpfs"]) == ["/tmp"]
    assert await stream_results(redis, stream) == [refused, allowed]
