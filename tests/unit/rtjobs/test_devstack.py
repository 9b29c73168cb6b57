"""The dev stack after a run that was killed (SIGKILL: nothing stopped its redis-server and dockerd):
the next run adopts both, from their pid files under the state dir, and stops them when it ends.

(A fresh `make run`, its jobs and its clean stop are tested from a fresh clone in
tests/reliability/test_dev_stack.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from contract.settings import Settings
from rtjobs.dev import stack as dev_stack
from rtjobs.dev.stack import (
    DEFAULT_DOCKER_SOCKET,
    EngineUnavailable,
    PrivateDockerd,
    engine_answers,
    running,
    start_redis_server,
    stop_process,
)
from tests.support.redis_server import free_port

pytestmark = pytest.mark.docker


@pytest.fixture
def nothing_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_URL", "RTJOBS_REDIS_URL", "DOCKER_HOST", "RTJOBS_DOCKER_HOST", "RTJOBS_ENGINE_IMAGE"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("nothing_configured")
async def test_killed_runs_stack_is_adopted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A killed run's Redis-server and dockerd are adopted and stopped with the next run."""
    if await engine_answers(DEFAULT_DOCKER_SOCKET):
        pytest.fail(f"a Docker engine answers at {DEFAULT_DOCKER_SOCKET}: the dev stack would use it, not its own")
    # What a killed run leaves: the dev stack's own redis-server and dockerd, with their pid files.
    port = free_port()
    redis = start_redis_server(port, tmp_path / "redis", ["--save", "", "--pidfile", str(tmp_path / "redis/redis.pid")])
    try:
        daemon = PrivateDockerd(tmp_path / "docker")
        await asyncio.to_thread(daemon.start)
    except EngineUnavailable as err:
        stop_process(redis)
        pytest.skip(f"no private dockerd: {err}")
    assert daemon.proc is not None
    dockerd_pid = daemon.proc.pid
    try:
        settings = Settings(state_dir=tmp_path, dev_redis_port=port)
        async with contextlib.AsyncExitStack() as stack:
            used = await dev_stack.start(settings, stack)
            assert used.redis_url == f"redis://127.0.0.1:{port}/0"
            assert used.docker_host == daemon.url
            assert used.engine_image == dev_stack.DEMO_IMAGE
            assert running(redis.pid) and running(dockerd_pid)
        lines = capsys.readouterr().err
        assert f"Redis: adopted the redis-server (pid {redis.pid})" in lines, lines
        assert f"Docker: adopted the private dockerd an earlier run left (pid {dockerd_pid})" in lines, lines
        assert f"Redis: stopped redis-server (pid {redis.pid})" in lines, lines
        assert f"Docker: stopped the private dockerd (pid {dockerd_pid})" in lines, lines
        assert not running(redis.pid) and not running(dockerd_pid)  # (zombies until reaped below)
    finally:
        stop_process(redis)
        daemon.close()
