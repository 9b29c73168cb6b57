"""Fixtures of the Docker activity tests: activities on the session's engine, closed at teardown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from activities.docker import EngineActivities
from tests.support.docker_engine import DockerEngine
from tests.unit.activities.docker.engines import (
    MakeActivities,
    settings_for,
)


@pytest.fixture
async def make_activities(docker_engine: DockerEngine) -> AsyncIterator[MakeActivities]:
    made: list[EngineActivities] = []

    def make(**overrides: Any) -> EngineActivities:
        acts = EngineActivities(settings_for(docker_engine.url, **overrides))
        made.append(acts)
        return acts

    yield make
    for acts in made:
        await acts.close()
