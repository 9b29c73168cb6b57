"""`rtjobs results --group G --consumer C`: the Game Lobby's way to read the stream, at least once.

Real `python -m rtjobs.cli` processes against a real Redis; a consumer is "killed mid-work" by giving it a 4 KB
stdout pipe that nobody reads: it blocks printing an entry it has been delivered but not acknowledged,
and is then SIGKILLed, as a crashed Lobby instance would be.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError

from tests.support.acl import acl_redis, admin_client, documented_line, refusals_of, url_as
from tests.support.processes import ROOT, Process, process_env

GROUP = "lobby"
HANG_S = 120.0
FIELDS = {"game_id", "outcome", "container_id", "engine_endpoint", "error_code", "error_message"}


def rtjobs(*args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rtjobs.cli", *args],
        cwd=ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=HANG_S,
        stdin=subprocess.DEVNULL,
    )


async def read_group(env: Mapping[str, str], consumer: str, *extra: str) -> list[str]:
    """One `rtjobs results --group` run without --follow (reads until nothing is left); the printed ids."""
    done = await asyncio.to_thread(
        rtjobs, "results", "--group", GROUP, "--consumer", consumer, "-o", "json", *extra, env=env
    )
    assert done.returncode == 0, done
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert all(set(row) == {"id", *FIELDS} for row in rows), rows
    return [str(row["id"]) for row in rows]


def printed_ids(output: str) -> list[str]:
    """Ids of the complete JSON lines in a consumer's output (stderr lines and a torn last line skipped)."""
    ids = []
    for line in output.splitlines():
        try:
            ids.append(str(json.loads(line)["id"]))
        except (ValueError, KeyError, TypeError):
            continue
    return ids


async def add_entries(redis: aioredis.Redis, stream: str, n: int, tag: str) -> list[str]:
    """`n` results of six fields; the message is long so that a few of them fill a 4 KB pipe."""
    ids = []
    for i in range(n):
        fields = {
            "game_id": f"g-{i}",
            "outcome": "failure",
            "container_id": "",
            "engine_endpoint": "",
            "error_code": "internal_error",
            "error_message": f"{tag}-{i} " + "x" * 150,
        }
        ids.append(str(await redis.xadd(stream, fields)))  # type: ignore[arg-type]
    return ids


async def pending_of(redis: aioredis.Redis, stream: str, consumer: str | None = None) -> list[dict[str, Any]]:
    rows = await redis.xpending_range(stream, GROUP, min="-", max="+", count=10_000, consumername=consumer)
    return cast(list[dict[str, Any]], rows)


async def pending_count(redis: aioredis.Redis, stream: str) -> int:
    summary = await redis.xpending(stream, GROUP)
    return int(summary["pending"])


@pytest.fixture
def env(redis_url: str, stream: str) -> dict[str, str]:
    return process_env(REDIS_URL=redis_url, RTJOBS_RESULTS_STREAM=stream, PYTHONUNBUFFERED="1")


# --- the normal path --------------------------------------------------------------------------------


async def test_a_group_reader_prints_then_acknowledges_each_entry_once(
    env: dict[str, str], redis: aioredis.Redis, stream: str
) -> None:
    before = await add_entries(redis, stream, 5, "before")  # the group does not exist yet: created at 0

    first = await asyncio.to_thread(rtjobs, "results", "--group", GROUP, "--consumer", "c1", env=env)
    assert first.returncode == 0, first
    assert f"created consumer group {GROUP} on {stream} at 0" in first.stderr
    header, *rows = first.stdout.splitlines()
    assert header.split()[:3] == ["ENTRY", "GAME", "OUTCOME"]
    assert [row.split()[0] for row in rows] == before
    assert await pending_count(redis, stream) == 0

    after = await add_entries(redis, stream, 3, "after")
    assert await read_group(env, "c2") == after  # another consumer of the group: only what is new
    assert await read_group(env, "c1") == []  # nothing is delivered twice
    [info] = await redis.xinfo_groups(stream)
    assert (info["pending"], info["last-delivered-id"], info["lag"]) == (0, after[-1], 0)


async def test_new_only_creates_the_group_at_the_end_of_the_stream(
    env: dict[str, str], redis: aioredis.Redis, stream: str
) -> None:
    await add_entries(redis, stream, 3, "old")
    assert await read_group(env, "c1", "--new-only") == []
    new = await add_entries(redis, stream, 2, "new")
    assert await read_group(env, "c1", "--new-only") == new  # the group exists: --new-only changes nothing


async def test_two_followers_of_one_group_print_each_entry_once(
    processes: list[Process], env: dict[str, str], redis: aioredis.Redis, stream: str
) -> None:
    followers = []
    for name in ("c1", "c2"):
        proc = Process(
            ["-m", "rtjobs.cli", "results", "--group", GROUP, "--consumer", name, "--follow", "-o", "json"], env
        )
        processes.append(proc)
        followers.append(proc)
    deadline = time.monotonic() + HANG_S
    while len(await _consumers(redis, stream)) < 2:  # both have read once (the group exists)
        assert time.monotonic() < deadline, [p.output() for p in followers]
        await asyncio.sleep(0.05)

    ids: list[str] = []
    for batch in range(10):
        ids += await add_entries(redis, stream, 20, f"b{batch}")
        await asyncio.sleep(0.05)
    while len(set(printed_ids(followers[0].output())) | set(printed_ids(followers[1].output()))) < len(ids):
        assert time.monotonic() < deadline, [p.output() for p in followers]
        await asyncio.sleep(0.1)

    one, two = (printed_ids(p.output()) for p in followers)
    assert len(one) == len(set(one)) and len(two) == len(set(two)), "an entry was printed twice"
    assert not set(one) & set(two), "an entry was delivered to both consumers"
    assert sorted(one + two) == sorted(ids)
    deadline = time.monotonic() + 10
    while await pending_count(redis, stream):  # the last XACK may follow its print by a moment
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    for proc in followers:
        proc.send(signal.SIGTERM)


async def _consumers(redis: aioredis.Redis, stream: str) -> list[dict[str, Any]]:
    try:
        consumers: list[dict[str, Any]] = await redis.xinfo_consumers(stream, GROUP)
        return consumers
    except aioredis.ResponseError:  # no stream or no group yet
        return []


# --- a consumer dies with entries pending -----------------------------------------------------------


@dataclass
class StuckConsumer:
    """A follower whose stdout is a 4 KB pipe nobody reads: it blocks printing, its batch pending."""

    proc: subprocess.Popen[bytes]
    read_fd: int

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def printed(self) -> str:
        """What it wrote before it died (call after kill(): the pipe then ends)."""
        chunks = []
        while chunk := os.read(self.read_fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")


@pytest.fixture
def stuck_consumers() -> Iterator[list[StuckConsumer]]:
    started: list[StuckConsumer] = []
    yield started
    for consumer in started:
        consumer.kill()
        os.close(consumer.read_fd)


def start_stuck_consumer(started: list[StuckConsumer], env: Mapping[str, str], name: str) -> StuckConsumer:
    read_fd, write_fd = os.pipe()
    fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, 4096)
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rtjobs.cli",
                "results",
                "--group",
                GROUP,
                "--consumer",
                name,
                "--follow",
                "-o",
                "json",
            ],
            cwd=ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=write_fd,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        os.close(write_fd)
    consumer = StuckConsumer(proc, read_fd)
    started.append(consumer)
    return consumer


async def kill_when_stuck(consumer: StuckConsumer, redis: aioredis.Redis, stream: str, name: str) -> list[str]:
    """Wait until the consumer holds pending entries and no longer acknowledges any (it is blocked in a
    write), SIGKILL it, and return the ids left pending to it.
    """
    deadline = time.monotonic() + HANG_S
    last, since = -1, time.monotonic()
    while True:
        assert consumer.proc.poll() is None, f"the consumer exited {consumer.proc.returncode}"
        assert time.monotonic() < deadline, "the consumer never got stuck with pending entries"
        now = len(await pending_of(redis, stream, name)) if await _consumers(redis, stream) else 0
        if now != last:
            last, since = now, time.monotonic()
        elif now > 0 and time.monotonic() - since > 1.0:
            break
        await asyncio.sleep(0.1)
    consumer.kill()
    return [str(row["message_id"]) for row in await pending_of(redis, stream, name)]


async def test_pending_entries_are_claimed_after_idle(
    stuck_consumers: list[StuckConsumer], env: dict[str, str], redis: aioredis.Redis, stream: str
) -> None:
    """Entries a killed consumer left pending are claimed by another after the idle time."""
    ids = await add_entries(redis, stream, 60, "a")
    dead = start_stuck_consumer(stuck_consumers, env, "dead")
    left = await kill_when_stuck(dead, redis, stream, "dead")
    by_dead = printed_ids(dead.printed())
    assert left and by_dead, (left, by_dead)
    assert left == ids[len(ids) - len(left) :], "the pending entries are the tail of its batch"
    assert set(ids) - set(left) <= set(by_dead), "it acknowledged an entry it had not printed"
    new = await add_entries(redis, stream, 5, "new")

    # Before the idle time: another consumer reads what is new, and leaves the dead one's entries alone.
    assert await read_group(env, "alive", "--claim-idle-s", "120") == new
    assert [str(r["message_id"]) for r in await pending_of(redis, stream, "dead")] == left

    # Once they have been idle that long, it claims them, prints them and acknowledges them.
    idle_ms = min(int(r["time_since_delivered"]) for r in await pending_of(redis, stream))
    await asyncio.sleep(max(0, 1000 - idle_ms) / 1000 + 0.05)
    assert await read_group(env, "alive", "--claim-idle-s", "1") == left
    assert await pending_count(redis, stream) == 0
    assert set(by_dead) | set(left) | set(new) == set(ids) | set(new), "every entry was printed"


async def test_restarted_consumer_gets_its_pending_back(
    stuck_consumers: list[StuckConsumer], env: dict[str, str], redis: aioredis.Redis, stream: str
) -> None:
    """A restarted consumer gets its own pending entries back at once."""
    await add_entries(redis, stream, 60, "a")
    dead = start_stuck_consumer(stuck_consumers, env, "lobby-1")
    left = await kill_when_stuck(dead, redis, stream, "lobby-1")
    assert left
    # Same consumer name, default claim time (60 s): no wait, it re-reads its own pending entries first.
    started = time.monotonic()
    assert await read_group(env, "lobby-1") == left
    assert time.monotonic() - started < 30
    assert await pending_count(redis, stream) == 0


# --- the documented ACL user --------------------------------------------------------------------------


async def test_the_documented_lobby_user_can_do_all_of_it() -> None:
    """docs/security.md's `ACL SETUSER lobby` line, verbatim: group creation, reads, claims, acks."""
    password = "lobby-pass"
    stream = "runtime:job_results"  # the documented key pattern
    with acl_redis() as server:
        words = documented_line("ACL SETUSER lobby ")
        admin = admin_client(server)
        try:
            await admin.execute_command(*[w.replace(">CHANGE-ME", f">{password}") for w in words])  # type: ignore[no-untyped-call]
            ids = await add_entries(admin, stream, 3, "acl")
            lobby_env = process_env(REDIS_URL=url_as(server, "lobby", password), RTJOBS_RESULTS_STREAM=stream)
            assert await read_group(lobby_env, "c1", "--claim-idle-s", "1") == ids
            assert await pending_count(admin, stream) == 0
        finally:
            await admin.aclose()
        assert await refusals_of(server, "lobby") == [], "the documented ACL lacks something the reader used"


async def test_lobby_user_reads_acks_cannot_write() -> None:
    """The documented Lobby user reads and acknowledges but cannot write.

    The Lobby's user, verbatim from docs/security.md: XREADGROUP and XACK work; XADD (or any other
    write, key or command) is refused NOPERM, so a Lobby bug or a stolen Lobby password cannot forge results.
    """
    password = "lobby-pass"
    stream = "runtime:job_results"  # the documented key pattern
    with acl_redis() as server:
        words = documented_line("ACL SETUSER lobby ")
        admin = admin_client(server)
        lobby: aioredis.Redis = aioredis.Redis.from_url(url_as(server, "lobby", password), decode_responses=True)
        try:
            await admin.execute_command(*[w.replace(">CHANGE-ME", f">{password}") for w in words])  # type: ignore[no-untyped-call]
            ids = await add_entries(admin, stream, 2, "acl")
            await lobby.xgroup_create(stream, GROUP, id="0", mkstream=True)
            read = cast(Any, await lobby.xreadgroup(GROUP, "c1", {stream: ">"}, count=10))
            assert [entry_id for entry_id, _fields in read[0][1]] == ids
            assert await lobby.xack(stream, GROUP, *ids) == 2
            assert await pending_count(admin, stream) == 0

            fields = {"game_id": "g-forged", "outcome": "success"}
            refused: list[tuple[Any, ...]] = [
                ("XADD", stream, "*", *[x for kv in fields.items() for x in kv]),
                ("XADD", "other-stream", "*", "a", "b"),
                ("XDEL", stream, ids[0]),
                ("XTRIM", stream, "MAXLEN", "0"),
                ("DEL", stream),
                ("SET", f"{{{stream}}}:published:w:r", "1-0"),
                ("XGROUP", "DESTROY", stream, GROUP),
                ("XGROUP", "SETID", stream, GROUP, "$"),
                ("XREADGROUP", "GROUP", GROUP, "c1", "STREAMS", "other-stream", ">"),
            ]
            for command in refused:
                with pytest.raises(NoPermissionError, match=r"(?i)no permissions"):  # Redis's NOPERM reply
                    await lobby.execute_command(*command)  # type: ignore[no-untyped-call]
            assert await admin.xlen(stream) == 2, "the stream changed"
        finally:
            await lobby.aclose()
            await admin.aclose()
        assert {e["object"] for e in await refusals_of(server, "lobby")} >= {"xadd", "xdel", "xtrim", "del", "set"}
