"""Reading the result stream back, typed (redis-py's own return types are loose unions)."""

from __future__ import annotations

from typing import cast

import redis.asyncio as aioredis

Entry = tuple[str, dict[str, str]]


async def read_entries(redis: aioredis.Redis, stream: str) -> list[Entry]:
    """All entries of `stream`, oldest first; `redis` must decode responses."""
    return cast(list[Entry], await redis.xrange(stream))


async def read_entries_at(url: str, stream: str) -> list[Entry]:
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        return await read_entries(client, stream)
    finally:
        await client.aclose()
