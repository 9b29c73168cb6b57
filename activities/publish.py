"""The last step of every job: append its `JobResult` to the result stream, exactly once per job run."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from contract.models import JobResult, PublishRequest, one_line
from contract.policies import (
    INVALID_JOB_RESULT,
    PUBLISH_ACTIVITY,
)

# KEYS[1] stream, KEYS[2] idempotency key; ARGV[1] key TTL (s), ARGV[2] MAXLEN (0: no trim), then
# field/value pairs. The GET, XADD and SET run atomically, so a retry of a write whose reply was
# lost finds the key and returns the first entry's id instead of appending again.
_PUBLISH_ONCE_LUA = """
local seen = redis.call('GET', KEYS[2])
if seen then return seen end
local args = {KEYS[1]}
if ARGV[2] ~= '0' then
  table.insert(args, 'MAXLEN'); table.insert(args, '~'); table.insert(args, ARGV[2])
end
table.insert(args, '*')
for i = 3, #ARGV do table.insert(args, ARGV[i]) end
local id = redis.call('XADD', unpack(args))
redis.call('SET', KEYS[2], id, 'EX', tonumber(ARGV[1]))
return id
"""


def idempotency_key(stream: str, workflow_id: str, run_id: str) -> str:
    """Key recording that a job run published; the hash tag keeps it in the stream's cluster slot.

    A Lua script may only touch keys of one slot in Redis Cluster; `{stream}` hashes exactly like
    the untagged stream key, so both live together.
    """
    return f"{{{stream}}}:published:{workflow_id}:{run_id}"


def redis_client(url: str) -> aioredis.Redis:
    """One client per worker process, with bounded socket waits: Temporal's activity retries (and the
    idempotency key) handle a Redis that went away. The client's only retry is one immediate
    reconnect after a connection error: a pooled connection that went stale while Redis was away
    fails its first command, which would otherwise cost a whole activity backoff (up to 10 s) after
    Redis is back. Resending is safe: the publish script is idempotent."""
    client: aioredis.Redis = aioredis.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=2.0,
        socket_timeout=3.0,
        health_check_interval=30,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    return client


class ResultPublisher:
    """Holds the worker's Redis client; its method is the publish activity."""

    def __init__(self, redis: aioredis.Redis, *, stream: str, dedup_ttl_s: int, maxlen: int = 0) -> None:
        self._redis = redis
        self._stream = stream
        self._dedup_ttl_s = dedup_ttl_s
        self._maxlen = maxlen
        self._script = redis.register_script(_PUBLISH_ONCE_LUA)

    async def publish(self, result: JobResult, workflow_id: str, run_id: str) -> str:
        """Append `result` once for the job run (workflow_id, run_id); returns the entry id."""
        fields = result.stream_fields()
        argv: list[Any] = [self._dedup_ttl_s, self._maxlen]
        for name, value in fields.items():
            argv += [name, value]
        keys = [self._stream, idempotency_key(self._stream, workflow_id, run_id)]
        entry_id = await self._script(keys=keys, args=argv)
        return str(entry_id)

    @activity.defn(name=PUBLISH_ACTIVITY)
    async def publish_job_result(self, request: PublishRequest) -> str:
        try:
            result = JobResult.model_validate(request.result)
        except ValidationError as err:
            raise ApplicationError(
                f"invalid JobResult, not published: {one_line(str(err))}",
                type=INVALID_JOB_RESULT,
                non_retryable=True,
            ) from None
        info = activity.info()
        if not (info.workflow_id and info.workflow_run_id):
            # The idempotency key is the job run; without one, a retry could append twice.
            raise ApplicationError(
                "publish_job_result must be called from a job workflow",
                type=INVALID_JOB_RESULT,
                non_retryable=True,
            )
        return await self.publish(result, info.workflow_id, request.first_run_id or info.workflow_run_id)
