"""How the Docker activities fail: an unreachable daemon, the classification of the daemon's answers, and
the retry policy that follows from it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiodocker.exceptions import DockerError, DockerStreamError

from activities.docker import EngineActivities
from activities.docker_gateway import DockerGateway
from contract.engine import DOCKER_UNAVAILABLE_TYPE
from contract.models import ErrorCode
from contract.policies import DOCKER_RETRY_POLICY
from tests.support.docker_engine import DockerEngine
from tests.unit.activities.docker.engines import (
    MakeActivities,
    expect_error,
    settings_for,
    start,
    stop,
)

pytestmark = pytest.mark.docker


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


async def test_docker_call_classification(make_activities: MakeActivities, tmp_path: Any) -> None:
    """The one classification: which daemon answers are retryable (DockerUnavailable), which the
    permanent code, and that a daemon's error verdict counts only while the daemon still answers.
    """
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
