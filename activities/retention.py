"""Retention of the result stream that never drops an unread result (`RTJOBS_RESULTS_RETENTION`).

Once a minute the worker trims (`XTRIM MINID`) the entries both older than the retention and
acknowledged by every consumer group; a stream without a group is never trimmed. The bound comes from
separate reads, and that is safe: consumers only move their bounds forward, so a bound safe when read
stays safe, and several workers trimming at once are harmless (docs/results.md, "Retention
that never drops an unread result").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError

from activities.redis_topology import RedisClient
from contract.models import one_line
from contract.settings import Settings

log = logging.getLogger("rtjobs.retention")

RETENTION_INTERVAL_S = 60.0
_MAX_SEQ = 2**64 - 1

StreamId = tuple[int, int]


def parse_id(entry_id: str) -> StreamId:
    """`1700000000000-3` → (1700000000000, 3), so that ids compare in stream order."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def format_id(stream_id: StreamId) -> str:
    return f"{stream_id[0]}-{stream_id[1]}"


def next_id(stream_id: StreamId) -> StreamId:
    """The smallest id after `stream_id`."""
    ms, seq = stream_id
    return (ms + 1, 0) if seq == _MAX_SEQ else (ms, seq + 1)


@dataclass(frozen=True)
class TrimPass:
    """What one pass decided: the MINID used (None: nothing may be trimmed), how many entries went, and
    which group, if any, keeps entries older than the retention (it has not acknowledged, or not even
    been delivered, entries that old).
    """

    min_id: str | None
    trimmed: int
    held_by: str | None = None
    reason: str = ""


class ResultRetention:
    """Holds the worker's Redis client; `run()` trims the stream once a minute until cancelled."""

    def __init__(
        self,
        redis: RedisClient,
        *,
        stream: str,
        retention: timedelta,
        interval_s: float = RETENTION_INTERVAL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if retention <= timedelta(0):
            raise ValueError("retention must be longer than 0")
        self._redis = redis
        self._stream = stream
        self._retention_ms = int(retention.total_seconds() * 1000)
        self._interval_s = interval_s
        # The worker's clock against ids made from Redis's clock: a skew moves the age bound by as
        # much, never past what the groups acknowledged.
        self._clock = clock
        self._last_state = ""

    async def trim_once(self) -> TrimPass:
        """One pass: compute the safe MINID and trim below it."""
        age_bound: StreamId = (int(self._clock() * 1000) - self._retention_ms, 0)
        if age_bound[0] <= 0:
            return TrimPass(None, 0, reason="retention reaches before the epoch")
        try:
            groups = await self._redis.xinfo_groups(self._stream)
        except aioredis.ResponseError as err:
            if "no such key" in str(err).lower():
                return TrimPass(None, 0, reason="no stream")
            raise
        if not groups:
            return TrimPass(None, 0, reason="the stream has no consumer group")
        bound, lowest = age_bound, None
        for group in groups:
            group_bound = await self._group_bound(group)
            if group_bound < bound:
                bound, lowest = group_bound, str(group["name"])
        # Exact trimming: `~` would keep whole macro nodes (up to 100 entries), so small streams
        # would never shrink; once a minute the exact cost is fine.
        trimmed = int(await self._redis.xtrim(self._stream, minid=format_id(bound), approximate=False))
        held_by = None
        if lowest is not None:
            first = await self._first_id()
            held_by = lowest if first is not None and first < age_bound else None
        return TrimPass(format_id(bound), trimmed, held_by)

    async def _first_id(self) -> StreamId | None:
        """The oldest entry left (XREAD from 0, a command the worker's user already has)."""
        reply = cast(list[tuple[str, list[tuple[str, Any]]]], await self._redis.xread({self._stream: "0-0"}, count=1))
        for _name, entries in reply:
            for entry_id, _fields in entries:
                return parse_id(entry_id)
        return None

    async def _group_bound(self, group: dict[str, Any]) -> StreamId:
        """The lowest id the group may still need: its oldest pending entry, else the first entry it
        has not been delivered. XINFO is read before XPENDING, so deliveries in between (all newer than
        the last-delivered id read) cannot raise the bound past an unacknowledged entry.
        """
        undelivered = next_id(parse_id(str(group["last-delivered-id"])))
        summary = await self._redis.xpending(self._stream, str(group["name"]))
        oldest_pending = summary.get("min")
        if summary.get("pending") and oldest_pending:
            return min(undelivered, parse_id(str(oldest_pending)))
        return undelivered

    async def run(self) -> None:
        """Trim now, then every interval, until cancelled; a failed pass is logged and retried on the
        next one (the worker's jobs never depend on it).
        """
        while True:
            try:
                self._log(await self.trim_once())
            except Exception as err:  # Redis, Cluster or anything else: the next pass tries again
                hint = " (the Redis user needs +xinfo|groups +xpending +xtrim: docs/security.md)"
                noperm = isinstance(err, NoPermissionError) or "noperm" in str(err).lower()
                log.warning(
                    "results retention: pass on %s failed: %s%s",
                    self._stream,
                    one_line(str(err), 300),
                    hint if noperm else "",
                )
            await asyncio.sleep(self._interval_s)

    def _log(self, done: TrimPass) -> None:
        if done.trimmed:
            log.info("results retention: trimmed %d entries of %s below %s", done.trimmed, self._stream, done.min_id)
        # The reasons nothing (or less) was trimmed, logged once each time they change, not every minute.
        state = f"held:{done.held_by}" if done.held_by else done.reason
        if state != self._last_state and state:
            if done.held_by:
                log.warning(
                    "results retention: consumer group %s has not acknowledged entries of %s older than the "
                    "retention; they are kept (a group nobody reads any more holds them for ever: "
                    "XGROUP DESTROY it)",
                    done.held_by,
                    self._stream,
                )
            else:
                log.info("results retention: nothing trimmed from %s: %s", self._stream, done.reason)
        self._last_state = state


@contextlib.asynccontextmanager
async def retention_running(redis: RedisClient, settings: Settings) -> AsyncIterator[ResultRetention | None]:
    """Runs the retention beside the worker while the block runs; nothing when it is off (the default)."""
    if settings.results_retention is None:
        yield None
        return
    retention = ResultRetention(redis, stream=settings.results_stream, retention=settings.results_retention)
    log.info(
        "results retention %s: trimming acknowledged entries of %s every %.0fs",
        settings.results_retention,
        settings.results_stream,
        RETENTION_INTERVAL_S,
    )
    task = asyncio.create_task(retention.run(), name="results-retention")
    try:
        yield retention
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
