"""`RTJOBS_RESULTS_RETENTION`: trimming that never drops an entry a consumer group has not acknowledged.

Real Redis. Entries get explicit ids on a fixed clock (`NOW_MS`), so "older than the retention" is exact
and no test sleeps for it.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import timedelta
from typing import cast

import pytest
import redis.asyncio as aioredis
from pydantic import ValidationError

from activities.retention import ResultRetention, next_id, parse_id, retention_running
from contract.settings import Settings
from tests.support.acl import acl_redis, admin_client, documented_line, refusals_of, run_acl_command, url_as
from tests.support.processes import ROOT, Process, process_env, start_ready_worker
from tests.support.streams import Entry, read_entries

HOUR_MS = 3600 * 1000
NOW_MS = 1_800_000_000_000
RETENTION = timedelta(hours=1)
FIELDS = {
    "game_id": "g-1",
    "outcome": "success",
    "container_id": "",
    "engine_endpoint": "",
    "error_code": "",
    "error_message": "",
}


def retention_of(redis: aioredis.Redis, stream: str) -> ResultRetention:
    return ResultRetention(redis, stream=stream, retention=RETENTION, clock=lambda: NOW_MS / 1000)


async def add_at(redis: aioredis.Redis, stream: str, ms: int, n: int) -> list[str]:
    """`n` entries with ids `ms-0`, `ms-1` and so on."""
    return [str(await redis.xadd(stream, FIELDS, id=f"{ms}-{i}")) for i in range(n)]  # type: ignore[arg-type]


async def ids_in(redis: aioredis.Redis, stream: str) -> list[str]:
    return [entry_id for entry_id, _ in await read_entries(redis, stream)]


async def deliver(redis: aioredis.Redis, stream: str, group: str, count: int) -> list[str]:
    reply = cast(list[tuple[str, list[Entry]]], await redis.xreadgroup(group, "c", {stream: ">"}, count=count))
    return [entry_id for _name, entries in reply for entry_id, _fields in entries]


@pytest.fixture
async def old_and_new(redis: aioredis.Redis, stream: str) -> tuple[list[str], list[str]]:
    """Four entries 3 h old, two 10 min old (retention 1 h)."""
    old = await add_at(redis, stream, NOW_MS - 3 * HOUR_MS, 4)
    new = await add_at(redis, stream, NOW_MS - HOUR_MS // 6, 2)
    return old, new


async def test_a_lagging_group_keeps_every_entry_it_has_not_acknowledged(
    redis: aioredis.Redis, stream: str, old_and_new: tuple[list[str], list[str]]
) -> None:
    old, new = old_and_new
    retention = retention_of(redis, stream)
    await redis.xgroup_create(stream, "fast", id="0")
    await redis.xack(stream, "fast", *await deliver(redis, stream, "fast", 100))
    await redis.xgroup_create(stream, "lagging", id="0")
    delivered = await deliver(redis, stream, "lagging", 3)  # old[0..2]; old[3] never delivered
    await redis.xack(stream, "lagging", delivered[0])  # old[1], old[2] pending

    done = await retention.trim_once()
    assert (done.min_id, done.trimmed, done.held_by) == (old[1], 1, "lagging")
    assert await ids_in(redis, stream) == old[1:] + new  # all it has not acknowledged, though 3 h old

    await redis.xack(stream, "lagging", *delivered[1:])  # acknowledged, but old[3] not yet delivered
    done = await retention.trim_once()
    assert (done.min_id, done.trimmed, done.held_by) == (old[3], 2, "lagging")
    assert await ids_in(redis, stream) == old[3:] + new

    await redis.xack(stream, "lagging", *await deliver(redis, stream, "lagging", 100))
    done = await retention.trim_once()
    assert (done.trimmed, done.held_by) == (1, None)
    assert await ids_in(redis, stream) == new  # fully acknowledged old entries go; newer ones stay
    assert done.min_id == f"{NOW_MS - HOUR_MS}-0"  # the age bound


async def test_acknowledged_old_entries_are_trimmed(
    redis: aioredis.Redis, stream: str, old_and_new: tuple[list[str], list[str]]
) -> None:
    """Fully acknowledged old entries are trimmed and newer ones stay."""
    old, new = old_and_new
    await redis.xgroup_create(stream, "lobby", id="0")
    await redis.xack(stream, "lobby", *await deliver(redis, stream, "lobby", 100))
    done = await retention_of(redis, stream).trim_once()
    assert done.trimmed == len(old)
    assert await ids_in(redis, stream) == new
    assert (await retention_of(redis, stream).trim_once()).trimmed == 0  # idempotent


async def test_pending_newer_entries_bound_nothing(
    redis: aioredis.Redis, stream: str, old_and_new: tuple[list[str], list[str]]
) -> None:
    """Pending entries newer than the retention bound nothing but age."""
    _old, new = old_and_new
    await redis.xgroup_create(stream, "lobby", id="0")
    await redis.xack(stream, "lobby", *await deliver(redis, stream, "lobby", 4))
    await deliver(redis, stream, "lobby", 100)  # the new ones: pending
    done = await retention_of(redis, stream).trim_once()
    assert (done.trimmed, done.held_by) == (4, None)
    assert await ids_in(redis, stream) == new


async def test_a_stream_without_consumer_groups_is_never_trimmed(
    redis: aioredis.Redis, stream: str, old_and_new: tuple[list[str], list[str]]
) -> None:
    old, new = old_and_new
    done = await retention_of(redis, stream).trim_once()
    assert (done.min_id, done.trimmed, done.reason) == (None, 0, "the stream has no consumer group")
    assert await ids_in(redis, stream) == old + new


async def test_a_group_that_has_read_nothing_keeps_everything(
    redis: aioredis.Redis, stream: str, old_and_new: tuple[list[str], list[str]]
) -> None:
    old, new = old_and_new
    await redis.xgroup_create(stream, "lobby", id="0")
    done = await retention_of(redis, stream).trim_once()
    assert (done.trimmed, done.held_by) == (0, "lobby")
    assert await ids_in(redis, stream) == old + new


async def test_a_missing_stream_is_not_an_error(redis: aioredis.Redis, stream: str) -> None:
    done = await retention_of(redis, stream).trim_once()
    assert (done.min_id, done.trimmed, done.reason) == (None, 0, "no stream")


async def test_several_workers_trimming_at_once_trim_only_what_is_safe(
    redis: aioredis.Redis, stream: str, old_and_new: tuple[list[str], list[str]]
) -> None:
    old, new = old_and_new
    await redis.xgroup_create(stream, "lobby", id="0")
    delivered = await deliver(redis, stream, "lobby", 100)
    await redis.xack(stream, "lobby", *delivered[:2])  # old[2] and later pending
    passes = await asyncio.gather(*(retention_of(redis, stream).trim_once() for _ in range(8)))
    assert sum(p.trimmed for p in passes) == 2
    assert await ids_in(redis, stream) == old[2:] + new


async def test_the_worker_runs_it_in_the_background_only_when_configured(redis: aioredis.Redis, stream: str) -> None:
    now_ms = int((await redis.time())[0]) * 1000  # ids from Redis's clock, the pass uses the local one
    old = await add_at(redis, stream, now_ms - 3 * HOUR_MS, 2)
    await redis.xadd(stream, FIELDS)  # type: ignore[arg-type]
    await redis.xgroup_create(stream, "lobby", id="0")
    await redis.xack(stream, "lobby", *await deliver(redis, stream, "lobby", 100))

    async with retention_running(redis, Settings(results_stream=stream)) as off:
        assert off is None
    assert (await ids_in(redis, stream))[:2] == old

    settings = Settings(results_stream=stream, results_retention=RETENTION)
    async with retention_running(redis, settings) as running:
        assert running is not None
        for _ in range(100):  # the first pass runs at once
            if len(await ids_in(redis, stream)) == 1:
                break
            await asyncio.sleep(0.05)
    assert len(await ids_in(redis, stream)) == 1


async def test_the_documented_acl_grants_suffice() -> None:
    """The main `ACL SETUSER rtjobs` line plus the documented retention addition, run as written."""
    stream = "runtime:job_results"  # the documented key pattern
    with acl_redis() as server:
        main = [w.replace(">CHANGE-ME", ">pw") for w in documented_line("ACL SETUSER rtjobs ")]
        await run_acl_command(server, main)
        await run_acl_command(server, documented_line("redis-cli ACL SETUSER rtjobs ")[1:])
        admin = admin_client(server)
        user: aioredis.Redis = aioredis.Redis.from_url(url_as(server, "rtjobs", "pw"), decode_responses=True)
        try:
            await add_at(admin, stream, NOW_MS - 3 * HOUR_MS, 3)
            await admin.xgroup_create(stream, "lobby", id="0")
            await deliver(admin, stream, "lobby", 1)  # pending: holds the other two
            done = await retention_of(user, stream).trim_once()
            assert (done.trimmed, done.held_by) == (0, "lobby")
        finally:
            await admin.aclose()
            await user.aclose()
        assert await refusals_of(server, "rtjobs") == [], "the documented grants lack something the pass used"


# --- the setting ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("7d", timedelta(days=7)),
        ("12h", timedelta(hours=12)),
        ("30m", timedelta(minutes=30)),
        ("1d12h", timedelta(days=1, hours=12)),
        (" 90s ", timedelta(seconds=90)),
        ("", None),
    ],
)
def test_retention_setting_parses_durations(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: timedelta | None
) -> None:
    monkeypatch.setenv("RTJOBS_RESULTS_RETENTION", value)
    assert Settings().results_retention == expected


@pytest.mark.parametrize("value", ["7", "7w", "0d", "d", "-1h", "7d x"])
def test_a_bad_retention_is_a_clear_configuration_error(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("RTJOBS_RESULTS_RETENTION", value)
    with pytest.raises(ValidationError, match="RTJOBS_RESULTS_RETENTION: invalid duration"):
        Settings()


def test_the_worker_refuses_a_bad_retention_in_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "worker.py"],
        cwd=ROOT,
        env=process_env(RTJOBS_RESULTS_RETENTION="7"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert line.startswith("worker.py: error: invalid configuration:") and "RTJOBS_RESULTS_RETENTION" in line


def test_stream_ids_order_and_successor() -> None:
    assert parse_id("5-3") < parse_id("6-0") < parse_id("6-1")
    assert next_id((5, 3)) == (5, 4) and next_id((5, 2**64 - 1)) == (6, 0)


async def test_a_worker_process_with_retention_trims_at_start_and_says_so(
    processes: list[Process], worker_env: dict[str, str], redis: aioredis.Redis, stream: str
) -> None:
    now_ms = int((await redis.time())[0]) * 1000
    await add_at(redis, stream, now_ms - 3 * HOUR_MS, 2)
    await redis.xgroup_create(stream, "lobby", id="0")
    await redis.xack(stream, "lobby", *await deliver(redis, stream, "lobby", 100))
    worker = await start_ready_worker(processes, {**worker_env, "RTJOBS_RESULTS_RETENTION": "1h"})
    await worker.wait_for(f"results retention: trimmed 2 entries of {stream}")
    assert await ids_in(redis, stream) == []


async def test_missing_grants_are_logged_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without the grants a pass logs what is missing and the loop goes on."""
    stream = "runtime:job_results"
    with acl_redis() as server:
        main = [w.replace(">CHANGE-ME", ">pw") for w in documented_line("ACL SETUSER rtjobs ")]
        await run_acl_command(server, main)  # the main line only: no +xinfo|groups
        user: aioredis.Redis = aioredis.Redis.from_url(url_as(server, "rtjobs", "pw"), decode_responses=True)
        retention = ResultRetention(user, stream=stream, retention=RETENTION, interval_s=0.05)
        try:
            with caplog.at_level("WARNING", logger="rtjobs.retention"):
                task = asyncio.create_task(retention.run())
                await asyncio.sleep(0.3)
                assert not task.done(), "the loop ended"
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
        finally:
            await user.aclose()
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) >= 2 and all("+xinfo|groups +xpending +xtrim" in w for w in warnings), warnings
