"""`rtjobs` as operators run it: a real `python cli.py` process, real Redis, real dev server and worker."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Mapping

import pytest
import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT

from contract.models import JobResult, engine_endpoint
from tests.support.docker_engine import DockerEngine
from tests.support.processes import ROOT, Process, process_env, start_ready_worker
from tests.support.redis_server import free_port
from tests.support.streams import read_entries

# Only stops a hung command; no test here times the CLI. `start --wait` of the tiny engine takes ~3 s
# (interpreter start-up, connect, the job), far more on a loaded 2-core machine.
HANG_S = 120.0


def rtjobs(
    *args: str, env: Mapping[str, str] | None = None, timeout_s: float = HANG_S
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "cli.py", *args],
        cwd=ROOT,
        env=dict(env if env is not None else process_env()),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["start", "Bad_Game"], "invalid game id"),
        (["start", "-x"], ""),  # looks like an option: argparse's own one-line error
        (["start", "g-1-"], "invalid game id"),
        (["start", "a" * 52], "invalid game id"),
        (["start", "g-1", "--image", "UPPER:x"], "invalid image reference"),
        (["start", "g-1", "--image", "img::bad"], "invalid image reference"),
        (["stop", "g-1", "--timeout", "3601"], "must be 0-3600"),
        (["stop", "g-1", "--timeout", "-1"], ""),
        (["stop", "g-1", "--timeout", "ten"], "not an integer"),
        (["results", "--count", "0"], "positive integer"),
        (["results", "--game", "NOPE"], "invalid game id"),
        (["results", "--follow", "--consumer", "c1"], "--consumer needs --group"),
        (["results", "--follow", "--group", "lobby"], "--group needs --consumer"),
        (["results", "--group", "lobby", "--consumer", "c1", "--game", "g-1"], "--game cannot be used with --group"),
        (["results", "--group", "lobby", "--consumer", "c1", "--count", "5"], "--count cannot be used with --group"),
        (["results", "--claim-idle-s", "60"], "--claim-idle-s needs --group"),
        (["results", "--new-only"], "--new-only needs --group"),
        (["results", "--group", "lobby", "--consumer", "c1", "--claim-idle-s", "0"], "positive number of seconds"),
        (["results", "--group", "", "--consumer", "c1"], "invalid group name"),
        (["results", "--group", "lobby", "--consumer", "a b"], "invalid consumer name"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args: list[str], says: str) -> None:
    done = rtjobs(*args)
    assert done.returncode == 2, done
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("rtjobs") and "error:" in line
    assert says in line


def _entry(game_id: str, outcome: str = "success", code: str = "") -> dict[FieldT, EncodableT]:
    result = JobResult.model_validate({"game_id": game_id, "outcome": outcome, "error_code": code})
    return {name: value for name, value in result.stream_fields().items()}


async def test_results_filters_by_game_and_counts(redis_url: str, redis: aioredis.Redis, stream: str) -> None:
    for i in range(5):
        await redis.xadd(stream, _entry("g-a", code=f"c{i}"))
        await redis.xadd(stream, _entry("g-b", outcome="failure", code="internal_error"))
    env = process_env(REDIS_URL=redis_url, RTJOBS_RESULTS_STREAM=stream)

    done = rtjobs("results", "--game", "g-a", "--count", "3", "--json", env=env)
    assert done.returncode == 0, done
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["game_id"], r["error_code"]) for r in rows] == [("g-a", "c2"), ("g-a", "c3"), ("g-a", "c4")]
    assert set(rows[0]) == {
        "id",
        "game_id",
        "outcome",
        "container_id",
        "engine_endpoint",
        "error_code",
        "error_message",
    }

    table = rtjobs("results", "--game", "g-b", env=env)
    assert table.returncode == 0, table
    header, *lines = table.stdout.splitlines()
    assert header.split() == ["ENTRY", "GAME", "OUTCOME", "ERROR_CODE", "CONTAINER", "MESSAGE"]
    assert len(lines) == 5 and all(line.split()[1:4] == ["g-b", "failure", "internal_error"] for line in lines)


async def test_results_follow_prints_new_entries_of_the_game(
    processes: list[Process], redis_url: str, redis: aioredis.Redis, stream: str
) -> None:
    await redis.xadd(stream, _entry("g-a", code="old"))
    follower = Process(
        ["cli.py", "results", "--follow", "--json", "--game", "g-a"],
        process_env(REDIS_URL=redis_url, RTJOBS_RESULTS_STREAM=stream, PYTHONUNBUFFERED="1"),
    )
    processes.append(follower)
    await follower.wait_for('"error_code": "old"')
    await redis.xadd(stream, _entry("g-b", code="other-game"))
    await redis.xadd(stream, _entry("g-a", code="new"))
    await follower.wait_for('"error_code": "new"', timeout_s=HANG_S)
    assert "other-game" not in follower.output()
    follower.send(signal.SIGTERM)


def test_results_redis_unreachable_is_one_line_without_password() -> None:
    url = f"redis://ops:hunter2@127.0.0.1:{free_port()}/0"
    done = rtjobs("results", env=process_env(REDIS_URL=url))
    assert done.returncode == 1
    assert "hunter2" not in done.stdout + done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("rtjobs: error: Redis error at redis://ops:***@127.0.0.1:")


def test_start_with_temporal_unreachable_is_one_line() -> None:
    done = rtjobs("start", "g-1", env=process_env(TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}"))
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert line.startswith("rtjobs: error: Temporal unreachable at 127.0.0.1:")


def _table(stdout: str) -> dict[str, str]:
    rows = [line.split(None, 1) for line in stdout.splitlines()]
    return {row[0]: (row[1] if len(row) > 1 else "") for row in rows}


@pytest.mark.docker
async def test_start_and_stop_wait_print_the_result_table(
    processes: list[Process],
    worker_env: dict[str, str],
    docker_engine: DockerEngine,
    redis: aioredis.Redis,
    stream: str,
) -> None:
    env = {**worker_env, "DOCKER_HOST": docker_engine.url}
    await start_ready_worker(processes, env)
    game = f"cli-{uuid.uuid4().hex[:10]}"

    start = await asyncio.to_thread(rtjobs, "start", game, "--image", docker_engine.images.healthy, "--wait", env=env)
    assert start.returncode == 0, start
    table = _table(start.stdout)
    assert list(table) == [
        "game_id",
        "outcome",
        "container_id",
        "engine_endpoint",
        "error_code",
        "error_message",
    ]
    assert table["game_id"] == game and table["outcome"] == "success"
    assert len(table["container_id"]) == 64 and table["engine_endpoint"] == engine_endpoint(game)
    assert f"workflow runtime-start-{game}-" in start.stderr

    stop = await asyncio.to_thread(rtjobs, "stop", game, "--timeout", "0", "--wait", env=env)
    assert stop.returncode == 0, stop
    assert _table(stop.stdout)["container_id"] == table["container_id"]

    failing = await asyncio.to_thread(rtjobs, "start", game, "--image", docker_engine.images.exits, "--wait", env=env)
    assert failing.returncode == 1, failing
    assert _table(failing.stdout)["error_code"] == "container_exited"

    # The printed results are the stream's entries, in order.
    entries = [fields for _id, fields in await read_entries(redis, stream)]
    assert [e["outcome"] for e in entries] == ["success", "success", "failure"]
    assert entries[0]["container_id"] == table["container_id"]

    # Without --wait: the workflow id on stdout, exit 0 at once.
    started = await asyncio.to_thread(rtjobs, "stop", game, env=env)
    assert started.returncode == 0, started
    assert started.stdout.startswith(f"runtime-stop-{game}-")
