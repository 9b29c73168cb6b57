"""Safe deploys with Worker Versioning, on a dev server of the test's own: build v1 serves jobs; a v1 job is
held in flight (its image pull waits on a registry the test holds); build v2 starts and is made current with
the rollout command of the README; the held job finishes on v1, new jobs run on v2, and v1 drains.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiodocker
import pytest
from aiohttp import web
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.common import VersioningBehavior
from temporalio.contrib.pydantic import pydantic_data_converter

from contract.models import JobResult
from contract.settings import Settings
from rtjobs.client import start_job
from tests.support.binaries import temporal_cli
from tests.support.docker_engine import TEST_REPO
from tests.support.job_worker import MakeSettings, real_worker, remove_game_containers
from tests.support.temporal_server import TemporalDevServer

pytestmark = [pytest.mark.docker, pytest.mark.slow]

WAIT_S = 120.0  # only stops a hang
# The server decides a version is drained once no workflow pinned to it is open, as visibility sees it
# after a grace period, rechecked every interval (3 minutes each by default): short here.
DRAINAGE_CONFIG = [
    "--dynamic-config-value",
    'matching.wv.VersionDrainageStatusVisibilityGracePeriod="1s"',
    "--dynamic-config-value",
    'matching.wv.VersionDrainageStatusRefreshInterval="1s"',
]


class HeldRegistry:
    """A registry on loopback whose first answer waits until `release()`: a pull from it (and so the Docker
    step of a start naming it) is in flight for exactly as long as the test wants.
    """

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self._released = asyncio.Event()
        self.answered_after_release = False
        self._runner: web.AppRunner | None = None
        self.host = ""

    async def start(self) -> HeldRegistry:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._hold)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.host = f"127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def _hold(self, request: web.Request) -> web.Response:
        self.asked.set()
        await self._released.wait()
        self.answered_after_release = True
        return web.Response(status=404, text="no such image")

    def release(self) -> None:
        self._released.set()

    async def close(self) -> None:
        self.release()
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def server() -> AsyncIterator[Client]:
    dev = TemporalDevServer(extra_args=DRAINAGE_CONFIG).start()
    try:
        yield await Client.connect(dev.address, data_converter=pydantic_data_converter)
    finally:
        dev.close()


@pytest.fixture
async def registry() -> AsyncIterator[HeldRegistry]:
    held = await HeldRegistry().start()
    yield held
    await held.close()


async def cli(client: Client, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        str(temporal_cli()),
        *args,
        "--address",
        client.service_client.config.target_host,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    if proc.returncode != 0:
        raise RuntimeError(f"temporal {' '.join(args)}: {err.decode().strip()}")
    return out.decode()


async def make_current(client: Client, deployment: str, build_id: str) -> None:
    """The README's rollout command; the version exists once its workers polled, so ask until it does."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            args = ["--deployment-name", deployment, "--build-id", build_id, "--yes"]
            await cli(client, "worker", "deployment", "set-current-version", *args)
            return
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def builds_of(handle: WorkflowHandle[Any, Any]) -> list[str]:
    """The build of every workflow task the run completed, in order."""
    return [
        e.workflow_task_completed_event_attributes.deployment_version.build_id
        for e in (await handle.fetch_history()).events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
    ]


async def pinned_to(handle: WorkflowHandle[Any, Any]) -> tuple[int, str]:
    versioning = (await handle.describe()).raw_description.workflow_execution_info.versioning_info
    return versioning.behavior, versioning.deployment_version.build_id


async def drainage(client: Client, deployment: str, build_id: str) -> str:
    out = await cli(
        client, "worker", "deployment", "describe-version", "--deployment-name", deployment, "--build-id", build_id,
        "--output", "json",
    )  # fmt: skip
    info: dict[str, Any] = json.loads(out)
    return str(info.get("drainageInfo", {}).get("drainageStatus", ""))


async def test_job_finishes_on_its_build_v1_drains(
    server: Client,
    docker: aiodocker.Docker,
    registry: HeldRegistry,
    make_settings: MakeSettings,
    task_queue: str,
) -> None:
    """A job finishes on the build that started it new jobs run on the current one and v1 drains."""
    client = server
    deployment = f"rtjobs-{uuid.uuid4().hex[:8]}"
    games = [f"ver-{uuid.uuid4().hex[:10]}" for _ in range(3)]
    held_image = f"{registry.host}/rtjobs-test/held:1"

    def build(build_id: str) -> Settings:
        return make_settings(
            image_allow=f"{TEST_REPO},{registry.host}/rtjobs-test/*",
            TEMPORAL_DEPLOYMENT_NAME=deployment,
            TEMPORAL_WORKER_BUILD_ID=build_id,
        )

    try:
        async with real_worker(client, build("v1")):
            await make_current(client, deployment, "v1")
            first = await start_job(client, games[0], task_queue=task_queue)
            assert (await asyncio.wait_for(first.result(), WAIT_S)).outcome == "success"
            assert set(await builds_of(first)) == {"v1"}

            held = await start_job(client, games[1], image=held_image, task_queue=task_queue)
            await asyncio.wait_for(registry.asked.wait(), WAIT_S)  # its Docker step is pulling on v1
            async with real_worker(client, build("v2")):
                await make_current(client, deployment, "v2")
                registry.release()
                result: JobResult = await asyncio.wait_for(held.result(), WAIT_S)
                assert registry.answered_after_release  # the pull was still in flight at the switch
                assert (result.outcome, result.error_code) == ("failure", "image_pull_failed")
                assert set(await builds_of(held)) == {"v1"}
                assert await pinned_to(held) == (VersioningBehavior.PINNED, "v1")

                later = await start_job(client, games[2], task_queue=task_queue)
                assert (await asyncio.wait_for(later.result(), WAIT_S)).outcome == "success"
                assert set(await builds_of(later)) == {"v2"}
                assert await pinned_to(later) == (VersioningBehavior.PINNED, "v2")

                deadline = time.monotonic() + WAIT_S
                while (status := await drainage(client, deployment, "v1")) != "drained":
                    assert time.monotonic() < deadline, f"v1 did not drain: {status}"
                    await asyncio.sleep(0.5)
    finally:
        for game_id in games:
            await remove_game_containers(docker, game_id)


def test_deployment_name_needs_a_build_id() -> None:
    """A deployment name without a build id is a configuration error."""
    with pytest.raises(ValueError, match="go together"):
        Settings(TEMPORAL_DEPLOYMENT_NAME="rtjobs")
    assert Settings(TEMPORAL_DEPLOYMENT_NAME="rtjobs", TEMPORAL_WORKER_BUILD_ID="v7").worker_build_id == "v7"
