"""A private redis-server with `default` off and an admin, to run clients as the users docs/security.md documents."""

from __future__ import annotations

import shlex
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import redis.asyncio as aioredis

from tests.support.processes import ROOT
from tests.support.redis_server import RedisServer

SECURITY_DOC = ROOT / "docs" / "security.md"
ADMIN_PASSWORD = "admin-" + uuid.uuid4().hex


def documented_line(prefix: str) -> list[str]:
    """The words of the one line of docs/security.md that starts with `prefix` (shell quoting undone)."""
    lines = [ln.strip() for ln in SECURITY_DOC.read_text().splitlines() if ln.strip().startswith(prefix)]
    assert len(lines) == 1, f"expected one line starting {prefix!r} in {SECURITY_DOC}, found {lines}"
    return shlex.split(lines[0])


@contextmanager
def acl_redis() -> Iterator[RedisServer]:
    """Only `admin` (password ADMIN_PASSWORD) may log in until a test adds users."""
    server = RedisServer(
        extra_args=["--user", "admin", "on", f">{ADMIN_PASSWORD}", "~*", "&*", "+@all", "--user", "default", "off"]
    ).start()
    try:
        yield server
    finally:
        server.close()


def url_as(server: RedisServer, user: str, password: str) -> str:
    return f"redis://{user}:{password}@127.0.0.1:{server.port}/0"


def admin_client(server: RedisServer) -> aioredis.Redis:
    client: aioredis.Redis = aioredis.Redis.from_url(url_as(server, "admin", ADMIN_PASSWORD), decode_responses=True)
    return client


async def run_acl_command(server: RedisServer, words: list[str]) -> None:
    admin = admin_client(server)
    try:
        reply = await admin.execute_command(*words)  # type: ignore[no-untyped-call]
        assert reply in (True, "OK"), reply
    finally:
        await admin.aclose()


async def refusals_of(server: RedisServer, user: str) -> list[dict[str, Any]]:
    """`ACL LOG` entries of `user`, except redis-py's optional CLIENT SETINFO (see docs/security.md)."""
    admin = admin_client(server)
    try:
        log = cast(list[dict[str, Any]], await admin.acl_log())
    finally:
        await admin.aclose()
    return [e for e in log if e.get("username") == user and "setinfo" not in str(e.get("object", "")).lower()]
