"""Fixtures of the end-to-end tests: the real worker (`rtjobs.workers.build_worker`) on the test's queue
and stream, and game ids whose containers are removed at teardown.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable

import aiodocker
import pytest
from temporalio.client import Client

from contract.settings import Settings
from tests.support.job_worker import (
    MakeSettings,
    real_worker,
    remove_game_containers,
)


@pytest.fixture
async def games(docker: aiodocker.Docker) -> AsyncIterator[Callable[[], str]]:
    """New unique game ids; every container of these games is removed at teardown."""
    made: list[str] = []

    def new() -> str:
        made.append(f"e2e-{uuid.uuid4().hex[:10]}")
        return made[-1]

    yield new
    for game_id in made:
        await remove_game_containers(docker, game_id)


@pytest.fixture
async def worker(client: Client, make_settings: MakeSettings) -> AsyncIterator[Settings]:
    """The real worker on the test's queue, publishing to the test's stream."""
    settings = make_settings()
    async with real_worker(client, settings):
        yield settings
