"""The last step of every job: append its `JobResult` to the result stream, exactly once per job run."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisClusterException
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.redis_topology import RedisClient, stream_primary
from activities.redis_topology import redis_client as redis_client  # re-exported: tests and benches import it here
from contract.models import FollowUpSignal, JobResult, PublishRequest, one_line
from contract.policies import (
    INVALID_JOB_RESULT,
    PUBLISH_ACTIVITY,
    RESULT_NOT_REPLICATED,
)

# KEYS[1] stream, KEYS[2] idempotency key; ARGV[1] key TTL (s), ARGV[2] MAXLEN (0: no trim), then
# field/value pairs. The GET, XADD and SET run atomically, so a retry of a write whose reply was
# lost finds the key and returns the first entry's id instead of appending again. That retry also
# writes the key again (same id, fresh TTL): a write replicated after the entry, so that the WAIT
# which follows on its connection covers the entry even when the first attempt ran elsewhere.
_PUBLISH_ONCE_LUA = """
local seen = redis.call('GET', KEYS[2])
if seen then
  redis.call('SET', KEYS[2], seen, 'EX', tonumber(ARGV[1]))
  return seen
end
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


# Sends one follow-up signal (activities/lock.py `FollowUpSignals.send`): the fleet's hand-over after a publish.
SignalSender = Callable[[FollowUpSignal], Awaitable[None]]


def idempotency_key(stream: str, workflow_id: str, run_id: str) -> str:
    """Key recording that a job run published; the hash tag keeps it in the stream's cluster slot.

    A Lua script may only touch keys of one slot in Redis Cluster; `{stream}` hashes exactly like
    the untagged stream key, so both live together.
    """
    return f"{{{stream}}}:published:{workflow_id}:{run_id}"


class ResultPublisher:
    """Holds the worker's Redis client (any topology: activities/redis_topology.py); its method is the
    publish activity.

    With `min_replicas` > 0 a publish succeeds only once that many replicas acknowledged the entry
    (`WAIT min_replicas wait_timeout_ms` after the script); fewer raise the retryable
    `ResultNotReplicated`, so an acknowledged result survives the primary's failover.
    """

    def __init__(
        self,
        redis: RedisClient,
        *,
        stream: str,
        dedup_ttl_s: int,
        maxlen: int = 0,
        min_replicas: int = 0,
        wait_timeout_ms: int = 1000,
        signals: SignalSender | None = None,
    ) -> None:
        self._redis = redis
        self._signals = signals
        self._stream = stream
        self._dedup_ttl_s = dedup_ttl_s
        self._maxlen = maxlen
        self._min_replicas = min_replicas
        self._wait_timeout_ms = wait_timeout_ms
        self._sha = hashlib.sha1(_PUBLISH_ONCE_LUA.encode(), usedforsecurity=False).hexdigest()

    async def publish(self, result: JobResult, workflow_id: str, run_id: str) -> str:
        """Append `result` once for the job run (workflow_id, run_id); returns the entry id."""
        return await self.publish_fields(result.stream_fields(), workflow_id, run_id)

    async def publish_fields(self, fields: dict[str, str], workflow_id: str, run_id: str) -> str:
        """Append one entry once for the key (workflow_id, run_id); returns the entry id."""
        argv: list[Any] = [self._dedup_ttl_s, self._maxlen]
        for name, value in fields.items():
            argv += [name, value]
        keys = [self._stream, idempotency_key(self._stream, workflow_id, run_id)]
        if self._min_replicas == 0:
            return str(await self._run_script(keys, argv))
        return await self._publish_replicated(keys, argv)

    async def _run_script(self, keys: list[str], argv: list[Any]) -> Any:
        """EVALSHA (in a Cluster, redis-py routes it by its keys to the stream slot's primary, following
        MOVED after a failover); on NOSCRIPT (first use, a restarted or promoted server, SCRIPT FLUSH)
        load the script and run it again.
        """
        try:
            return await self._redis.evalsha(self._sha, len(keys), *keys, *argv)
        except NoScriptError:
            await self._load_script()
            return await self._redis.evalsha(self._sha, len(keys), *keys, *argv)

    async def _load_script(self) -> None:
        """SCRIPT LOAD where the script runs. In a Cluster only on the stream slot's primary: redis-py's
        own `script_load` goes to every primary and fails while any of them is down.
        """
        if isinstance(self._redis, RedisCluster):
            node = await stream_primary(self._redis, self._stream)
            await self._redis.execute_command("SCRIPT LOAD", _PUBLISH_ONCE_LUA, target_nodes=node)
        else:
            await self._redis.script_load(_PUBLISH_ONCE_LUA)

    async def _publish_replicated(self, keys: list[str], argv: list[Any]) -> str:
        written, acked = await self._script_then_wait(keys, argv)
        if isinstance(written, NoScriptError):
            await self._load_script()
            written, acked = await self._script_then_wait(keys, argv)
        if isinstance(written, Exception):
            raise written
        if isinstance(acked, Exception):  # e.g. the primary was demoted, or the slot moved
            raise self._not_replicated(written, one_line(str(acked), 200))
        if int(acked) < self._min_replicas:
            why = f"{acked} of {self._min_replicas} replicas acknowledged it within {self._wait_timeout_ms} ms"
            raise self._not_replicated(written, why)
        return str(written)

    async def _script_then_wait(self, keys: list[str], argv: list[Any]) -> tuple[Any, Any]:
        """The script, then `WAIT`, in one pipeline: one round trip on one connection. That matters:
        WAIT counts the replicas that acknowledged the writes made *on its own connection*; sent on
        another pooled connection it could count replicas that never saw this entry.
        """
        script = ("EVALSHA", self._sha, len(keys), *keys, *argv)
        wait = ("WAIT", self._min_replicas, self._wait_timeout_ms)
        if not isinstance(self._redis, RedisCluster):
            pipe = self._redis.pipeline(transaction=False)
            pipe.execute_command(*script)
            pipe.execute_command(*wait)
            written, acked = await pipe.execute(raise_on_error=False)
            return written, acked
        # Cluster: the script goes by its keys, WAIT to the same node; the pipeline sends a node's
        # commands in order on one of its connections.
        node = await stream_primary(self._redis, self._stream)
        cluster_pipe = self._redis.pipeline()
        cluster_pipe.execute_command(*script)
        cluster_pipe.execute_command(*wait, target_nodes=node)
        written, acked = await cluster_pipe.execute(raise_on_error=False)
        now = await stream_primary(self._redis, self._stream)
        if now.name != node.name:
            # The slot moved meanwhile (failover, resharding): redis-py resent the script to the new
            # owner on another connection, so this WAIT does not cover it. The retry will.
            acked = RedisClusterException(f"the slot of {self._stream} moved from {node.name} to {now.name}")
        return written, acked

    def _not_replicated(self, entry_id: Any, why: str) -> ApplicationError:
        return ApplicationError(
            f"entry {entry_id} is on the primary but not yet replicated: {why}; "
            "retrying (the retry finds the entry, writes nothing new, and waits again)",
            type=RESULT_NOT_REPLICATED,
            non_retryable=False,
        )

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
        entry_id = await self.publish(result, info.workflow_id, request.first_run_id or info.workflow_run_id)
        if request.then_signal:
            if self._signals is None:
                raise ApplicationError(
                    "this worker's publish activity was built without a Temporal client: it cannot release "
                    "the game's lock",
                    type=INVALID_JOB_RESULT,
                    non_retryable=True,
                )
            for follow_up in request.then_signal:
                await self._signals(follow_up)
        return entry_id
