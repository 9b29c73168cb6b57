"""RTJOBS_HOST_DOCKER_CONCURRENCY: how many Docker steps a worker runs at once on its host's queue, by
default derived from the host's capacity, and what the host Worker is really given.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from temporalio.client import Client

from activities.docker import EngineActivities
from activities.hosts import HostFacts
from contract.hosts import HostRef
from contract.settings import Settings, host_docker_concurrency_for
from rtjobs.workers import build_host_worker


def facts(capacity: int, queue: str = "q@host-id-1") -> HostFacts:
    ref = HostRef(host_id="id-1", name="h1", queue=queue)
    return HostFacts(ref=ref, capacity=capacity, capacity_from="test", docker_version="", network_driver="")


@pytest.mark.parametrize(("capacity", "slots"), [(0, 4), (1, 4), (2, 4), (12, 14), (40, 42), (98, 100), (1000, 100)])
def test_the_default_is_the_capacity_plus_two_within_4_and_100(capacity: int, slots: int) -> None:
    assert host_docker_concurrency_for(capacity) == slots


def test_the_setting_is_read_from_the_environment_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTJOBS_HOST_DOCKER_CONCURRENCY", "7")
    assert Settings().host_docker_concurrency == 7
    monkeypatch.setenv("RTJOBS_HOST_DOCKER_CONCURRENCY", "0")
    with pytest.raises(ValidationError, match="host_docker_concurrency"):
        Settings()


@pytest.mark.parametrize(("setting", "capacity", "slots"), [(None, 40, 42), (None, 1000, 100), (7, 1000, 7)])
async def test_the_host_worker_runs_that_many_activities_at_once(
    client: Client, task_queue: str, setting: int | None, capacity: int, slots: int
) -> None:
    settings = Settings(host_docker_concurrency=setting)
    worker = build_host_worker(client, settings, EngineActivities(settings), facts(capacity, f"{task_queue}@host-id-1"))
    assert worker.config()["max_concurrent_activities"] == slots
