"""Reading the result stream as one consumer of a consumer group: the Game Lobby's way (`rtjobs results
--group` reads with it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import redis.asyncio as aioredis

from activities.redis_topology import RedisClient

Entry = tuple[str, dict[str, str]]  # a stream entry: its id and its fields
GROUP_READ_COUNT = 100
FOLLOW_BLOCK_MS = 1000  # below the Redis client's 3 s socket timeout


class GroupReader:
    """Reads the stream as one consumer of a consumer group, so that every entry is processed at least
    once: handed to `handle` first (which must have processed it when it returns), acknowledged (XACK)
    after. A consumer that dies between the two leaves the entry pending: under the same consumer name it
    is read again at the next start; under any other, XAUTOCLAIM hands it over once it has been idle for
    the claim time. Duplicates are possible, losses are not; entries deleted from the stream while pending
    (trimmed, XDEL) cannot be processed, and are passed to `lost` by id.
    """

    def __init__(
        self,
        redis: RedisClient,
        stream: str,
        group: str,
        consumer: str,
        *,
        handle: Callable[[Entry], None],
        lost: Callable[[list[str]], None],
    ) -> None:
        self._redis = redis
        self._stream = stream
        self._group = group
        self._consumer = consumer
        self._handle = handle
        self._lost = lost

    async def ensure_group(self, *, new_only: bool) -> str | None:
        """XGROUP CREATE ... MKSTREAM at 0 (every entry the stream still holds), or at $ with
        `new_only`; an existing group is left as it is. Returns where a new group starts (None: it existed).
        """
        start = "$" if new_only else "0"
        try:
            await self._redis.xgroup_create(self._stream, self._group, id=start, mkstream=True)
        except aioredis.ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise
            return None
        return start

    async def consume(self, *, follow: bool, claim_idle_ms: int) -> None:
        """Own pending entries first, then (each round) entries dead consumers left pending, then new
        ones; without `follow`, until a round finds nothing. The group must exist (`ensure_group`).
        """
        await self._own_pending()
        while True:
            claimed = await self._claim_abandoned(claim_idle_ms)
            new = await self._read(">", block_ms=FOLLOW_BLOCK_MS if follow else None)
            if not follow and not claimed and not new:
                return

    async def _own_pending(self) -> None:
        """Entries delivered to this consumer name and never acknowledged (it died): again, at once."""
        after = "0"
        while entries := await self._read_batch(after, block_ms=None):
            await self._process(entries)
            after = entries[-1][0]

    async def _claim_abandoned(self, min_idle_ms: int) -> int:
        """XAUTOCLAIM every entry pending longer than `min_idle_ms` to any consumer; returns how many."""
        cursor, count = "0-0", 0
        while True:
            reply = await self._redis.xautoclaim(
                self._stream,
                self._group,
                self._consumer,
                min_idle_time=min_idle_ms,
                start_id=cursor,
                count=GROUP_READ_COUNT,
            )
            cursor, entries = str(reply[0]), cast(list[Entry], reply[1])
            if len(reply) > 2 and reply[2]:  # Redis 7 removed these from the group's pending list
                self._lost(cast(list[str], reply[2]))
            await self._process(entries)
            count += len(entries)
            if cursor == "0-0":
                return count

    async def _read(self, after: str, *, block_ms: int | None) -> int:
        entries = await self._read_batch(after, block_ms=block_ms)
        await self._process(entries)
        return len(entries)

    async def _read_batch(self, after: str, *, block_ms: int | None) -> list[Entry]:
        reply = cast(
            list[tuple[str, list[Entry]]],
            await self._redis.xreadgroup(
                self._group, self._consumer, {self._stream: after}, count=GROUP_READ_COUNT, block=block_ms
            ),
        )
        return [entry for _name, entries in reply or [] for entry in entries]

    async def _process(self, entries: list[Entry]) -> None:
        for entry_id, fields in entries:
            if not fields:  # pending, but trimmed away (RTJOBS_RESULTS_MAXLEN, XDEL): nothing to process
                self._lost([entry_id])
            else:
                self._handle((entry_id, fields))
            await self._redis.xack(self._stream, self._group, entry_id)
