"""The publish activity against real Redis servers, run inside real workflows on the dev server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot
from temporalio.api.enums.v1 import EventType, RetryState
from temporalio.client import Client, WorkflowFailureError
from temporalio.worker import Worker

from activities.publish import ResultPublisher, idempotency_key, redis_client
from contract.models import ErrorCode, JobResult, PublishRequest
from contract.policies import INVALID_JOB_RESULT
from tests.support.publish_workflow import PublishOnlyWorkflow
from tests.support.redis_server import RedisServer
from tests.support.streams import read_entries, read_entries_at
from tests.support.tcp_proxy import LossyProxy


@asynccontextmanager
async def publishing_worker(
    client: Client, task_queue: str, redis_url: str, stream: str
) -> AsyncIterator[ResultPublisher]:
    redis = redis_client(redis_url)
    publisher = ResultPublisher(redis, stream=stream, dedup_ttl_s=3600)
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[PublishOnlyWorkflow],
        activities=[publisher.publish_job_result],
    ):
        yield publisher
    await redis.aclose()


async def run_publish(client: Client, task_queue: str, result: dict[str, Any]) -> tuple[str, str]:
    workflow_id = f"test-publish-{uuid.uuid4().hex[:10]}"
    entry_id = await client.execute_workflow(PublishOnlyWorkflow.run, result, id=workflow_id, task_queue=task_queue)
    return workflow_id, entry_id


async def test_six_fields_written_verbatim_with_empty_strings_and_unicode(
    client: Client, task_queue: str, redis_url: str, redis: aioredis.Redis, stream: str
) -> None:
    result = JobResult.failure("g-ünï", ErrorCode.CONTAINER_EXITED, "exit 3: “Fehler” — 日本語 ✓")
    async with publishing_worker(client, task_queue, redis_url, stream):
        _wf, entry_id = await run_publish(client, task_queue, PublishRequest.of(result).result)

    entries = await read_entries(redis, stream)
    assert entries == [
        (
            entry_id,
            {
                "game_id": "g-ünï",
                "outcome": "failure",
                "container_id": "",
                "engine_endpoint": "",
                "error_code": "container_exited",
                "error_message": "exit 3: “Fehler” — 日本語 ✓",
            },
        )
    ]


async def test_fresh_success_entry_has_id_and_endpoint(
    client: Client, task_queue: str, redis_url: str, redis: aioredis.Redis, stream: str
) -> None:
    result = JobResult.fresh_success("g-1", "c0ffee")
    async with publishing_worker(client, task_queue, redis_url, stream):
        _wf, entry_id = await run_publish(client, task_queue, result.stream_fields())
    [(got_id, fields)] = await read_entries(redis, stream)
    assert got_id == entry_id
    assert fields == {
        "game_id": "g-1",
        "outcome": "success",
        "container_id": "c0ffee",
        "engine_endpoint": "http://galaxy-game-g-1:8080",
        "error_code": "",
        "error_message": "",
    }


@pytest.mark.parametrize(
    "bad",
    [
        {"game_id": "", "outcome": "success"},
        {"game_id": "   ", "outcome": "failure", "error_code": "internal_error"},
        {"game_id": "g-1", "outcome": "maybe"},
        {"game_id": "g-1", "outcome": "success", "surprise": "extra field"},
    ],
    ids=["empty-game-id", "blank-game-id", "unknown-outcome", "extra-field"],
)
async def test_invalid_result_fails_once_non_retryably_and_writes_nothing(
    client: Client,
    task_queue: str,
    redis_url: str,
    redis: aioredis.Redis,
    stream: str,
    bad: dict[str, Any],
) -> None:
    async with publishing_worker(client, task_queue, redis_url, stream):
        workflow_id = f"test-invalid-{uuid.uuid4().hex[:10]}"
        handle = await client.start_workflow(PublishOnlyWorkflow.run, bad, id=workflow_id, task_queue=task_queue)
        with pytest.raises(WorkflowFailureError):
            await handle.result()

    history = await handle.fetch_history()
    started = [e for e in history.events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED]
    [failed] = [e for e in history.events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED]
    assert [e.activity_task_started_event_attributes.attempt for e in started] == [1]
    attrs = failed.activity_task_failed_event_attributes
    assert attrs.retry_state == RetryState.RETRY_STATE_NON_RETRYABLE_FAILURE
    assert attrs.failure.application_failure_info.type == INVALID_JOB_RESULT
    assert attrs.failure.application_failure_info.non_retryable
    assert await redis.exists(stream) == 0


async def test_redis_down_then_back_publishes_exactly_once(
    client: Client, task_queue: str, redis_server: RedisServer
) -> None:
    stream = "runtime:job_results"
    redis_server.stop()
    async with publishing_worker(client, task_queue, redis_server.url, stream):
        result = JobResult.replay("g-down")
        workflow_id = f"test-down-{uuid.uuid4().hex[:10]}"
        handle = await client.start_workflow(
            PublishOnlyWorkflow.run, result.stream_fields(), id=workflow_id, task_queue=task_queue
        )
        await asyncio.sleep(3.0)
        redis_server.start()
        entry_id = await asyncio.wait_for(handle.result(), timeout=30)

    history = await handle.fetch_history()
    attempts = [
        e.activity_task_started_event_attributes.attempt
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    ]
    assert attempts[-1] >= 2, "the activity should have failed while Redis was down"
    entries = await read_entries_at(redis_server.url, stream)
    assert [(i, f["game_id"], f["error_code"]) for i, f in entries] == [(entry_id, "g-down", "replay_no_op")]


async def test_lost_reply_is_retried_without_a_second_entry(
    client: Client, task_queue: str, redis_server: RedisServer
) -> None:
    stream = "runtime:job_results"
    async with LossyProxy(redis_server.port) as proxy:
        async with publishing_worker(client, task_queue, proxy.url, stream) as publisher:
            # Load the script first, so the armed EVALSHA is the call that really writes.
            await publisher.publish(JobResult.replay("g-warmup"), "warmup", "warmup")
            proxy.lose_next_reply()
            _wf, entry_id = await run_publish(
                client, task_queue, JobResult.fresh_success("g-lost", "abc123").stream_fields()
            )
        assert proxy.cuts == 1

    entries = await read_entries_at(redis_server.url, stream)
    assert [f["game_id"] for _i, f in entries] == ["g-warmup", "g-lost"]
    assert entries[1][0] == entry_id


async def test_same_job_run_publishing_twice_returns_the_first_entry(
    redis_url: str, redis: aioredis.Redis, stream: str
) -> None:
    client = redis_client(redis_url)
    try:
        publisher = ResultPublisher(client, stream=stream, dedup_ttl_s=60)
        first = await publisher.publish(JobResult.replay("g-1"), "wf-1", "run-1")
        again = await publisher.publish(JobResult.replay("g-1"), "wf-1", "run-1")
        other_run = await publisher.publish(JobResult.replay("g-1"), "wf-1", "run-2")
    finally:
        await client.aclose()
    assert again == first
    assert other_run != first
    assert [i for i, _f in await read_entries(redis, stream)] == [first, other_run]
    ttl = await redis.ttl(idempotency_key(stream, "wf-1", "run-1"))
    assert 0 < ttl <= 60


async def test_script_reloaded_after_script_flush(redis_url: str, redis: aioredis.Redis, stream: str) -> None:
    """EVALSHA falls back to loading the script when the server lost it (restart, failover)."""
    client = redis_client(redis_url)
    try:
        publisher = ResultPublisher(client, stream=stream, dedup_ttl_s=60)
        await publisher.publish(JobResult.replay("g-1"), "wf-a", "run")
        await redis.script_flush()
        await publisher.publish(JobResult.replay("g-1"), "wf-b", "run")
    finally:
        await client.aclose()
    assert await redis.xlen(stream) == 2


async def test_maxlen_trims_approximately_when_configured(redis_url: str, redis: aioredis.Redis, stream: str) -> None:
    client = redis_client(redis_url)
    try:
        publisher = ResultPublisher(client, stream=stream, dedup_ttl_s=60, maxlen=10)
        for n in range(500):
            await publisher.publish(JobResult.replay("g-1"), f"wf-{n}", "run")
    finally:
        await client.aclose()
    length = await redis.xlen(stream)
    assert 10 <= length < 500


def test_idempotency_key_lives_in_the_stream_cluster_slot() -> None:
    for stream in ("runtime:job_results", "other:stream"):
        key = idempotency_key(stream, "runtime-start-g-1-abc", "0190-run-id")
        assert key.startswith(f"{{{stream}}}:")
        assert key_slot(key.encode()) == key_slot(stream.encode())
