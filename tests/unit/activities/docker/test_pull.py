"""Pulling the engine image: an image that cannot be pulled and a registry that never answers; how image
references normalise.
"""

from __future__ import annotations

import asyncio
import time

import aiodocker
import pytest

from activities.engine_spec import normalize_image_ref
from contract.models import ErrorCode, container_name
from tests.support.docker_engine import TEST_REPO
from tests.unit.activities.docker.engines import (
    ABSENT_IMAGE,
    ABSENT_REPO,
    MakeActivities,
    expect_error,
    inspect,
    start,
)

pytestmark = pytest.mark.docker


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
