"""What the Docker activity tests share: the activities' settings, a fresh job run's environment, and
the start/stop/inspect calls with the error checks they make.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from typing import Any

import aiodocker
import pytest
from aiodocker.exceptions import DockerError
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.docker import EngineActivities
from contract.engine import (
    DOCKER_UNAVAILABLE_TYPE,
    EngineOutcome,
    EnsureEngineRemoved,
    EnsureEngineRunning,
)
from contract.models import container_name
from contract.settings import Settings

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
