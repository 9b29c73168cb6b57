"""`rtjobs` as operators run it: a real `python -m rtjobs.cli` process, real Redis, real dev server and worker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence

import pytest
import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT
from temporalio.client import Client
from temporalio.worker import Worker

from activities.fleet import send_report
from activities.placement import PlacementActivities
from contract.hosts import HostRef, HostReport, PlaceAnswer, PlaceRequest
from contract.lock import LockGrant, coordination_queue, lock_workflow_id
from contract.models import JobResult, engine_endpoint
from rtjobs.client import start_job
from tests.support.docker_engine import DockerEngine
from tests.support.processes import ROOT, Process, process_env, start_ready_worker
from tests.support.redis_server import free_port
from tests.support.stand_ins import STAND_IN_HOST, StandInEngine, job_worker, until_listed
from tests.support.streams import read_entries
from workflows.host import RuntimeHost
from workflows.search import RUNTIME_HOST

# Only stops a hung command; no test here times the CLI. `start --wait` of the tiny engine takes ~3 s
# (interpreter start-up, connect, the job), far more on a loaded 2-core machine.
HANG_S = 120.0


def rtjobs(
    *args: str, env: Mapping[str, str] | None = None, timeout_s: float = HANG_S
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rtjobs.cli", *args],
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
        (["host", "drain"], "required"),
        (["host", "evict", "h1"], "invalid choice"),
        (["host", "undrain", "a b"], "invalid host name"),
        (["host", "drain", "h1", "--force"], "unrecognized arguments"),
        (["reconcile", "--host", "a b"], "invalid host name"),
        (["reconcile", "--force"], "unrecognized arguments"),
        (["hosts", "-o", "yaml"], "invalid choice"),
        (["results", "--json"], "unrecognized arguments"),
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

    done = rtjobs("results", "--game", "g-a", "--count", "3", "-o", "json", env=env)
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
        ["-m", "rtjobs.cli", "results", "--follow", "-o", "json", "--game", "g-a"],
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


def test_connection_flags_override_the_environment() -> None:
    port = free_port()
    env = process_env(TEMPORAL_ADDRESS="127.0.0.1:1", TEMPORAL_NAMESPACE="from-env")
    done = rtjobs("hosts", "--address", f"127.0.0.1:{port}", "--namespace", "from-flag", env=env)
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert line.startswith(f"rtjobs: error: Temporal unreachable at 127.0.0.1:{port} namespace=from-flag"), line

    unknown = rtjobs("reconcile", "--profile", "nope", env=env)
    assert unknown.returncode == 1
    [line] = unknown.stderr.splitlines()
    assert line.startswith("rtjobs: error: invalid Temporal configuration:") and "nope" in line


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
    # Not a terminal: the workflow line and one line per step on stderr, nothing else (no status line).
    assert "\r" not in start.stderr
    workflow_line, *steps = start.stderr.splitlines()
    assert workflow_line.startswith("workflow ") and steps and all(s.startswith("... ") for s in steps), start.stderr

    stop = await asyncio.to_thread(rtjobs, "stop", game, "--timeout", "0", "--wait", "-o", "json", env=env)
    assert stop.returncode == 0, stop
    [line] = stop.stdout.splitlines()  # the JobResult, one object
    stopped = JobResult.model_validate_json(line)
    assert (stopped.game_id, stopped.outcome, stopped.container_id) == (game, "success", table["container_id"])

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
    as_json = await asyncio.to_thread(rtjobs, "stop", game, "-o", "json", env=env)
    assert as_json.returncode == 0, as_json
    ids = json.loads(as_json.stdout)
    assert set(ids) == {"workflow_id", "run_id"} and ids["workflow_id"].startswith(f"runtime-stop-{game}-")


# --- the fleet's hosts: `rtjobs hosts`, `rtjobs host drain|undrain|forget` ------------------------------
# Hosts appear as a worker makes them appear: a report to the real registry workflow (run here by an
# in-process worker); the CLI runs as a real process (in a thread, so the worker keeps answering).

SILENT_AFTER_S = 2.0  # a host reporting every 0.5 s is live for 3 intervals (1.5 s) after its last report


async def report(
    client: Client,
    task_queue: str,
    name: str,
    *,
    every_s: float = 3600.0,
    capacity: int = 40,
    games: Sequence[str] = (),
    network: str = "bridge/local",
) -> HostRef:
    host = HostRef(host_id=f"{name}-engine-id-0123456789abcdef", name=name, queue=f"{task_queue}@host-{name}")
    await send_report(
        client,
        task_queue,
        HostReport(
            host=host,
            worker=f"worker-of-{name}",
            capacity=capacity,
            games=list(games),
            report_every_s=every_s,
            network_driver=network,
        ),
    )
    await until_listed(client, task_queue, [host.host_id])
    return host


@contextlib.asynccontextmanager
async def registry_worker(client: Client, task_queue: str) -> AsyncIterator[None]:
    """The hosts' workflows run on the fleet's coordination queue, as the worker runs them."""
    async with Worker(client, task_queue=coordination_queue(task_queue), workflows=[RuntimeHost]):
        yield


async def cli(env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(rtjobs, *args, env=env)


def host_rows(stdout: str) -> dict[str, dict[str, str]]:
    """The `rtjobs hosts` table by host name; columns are separated by two spaces or more."""
    header, *lines = (re.split(r"\s{2,}", line.strip()) for line in stdout.splitlines())
    assert header == ["NAME", "ID", "LIVE", "WORKERS", "ENGINES", "DRAINING", "LAST SEEN", "NETWORK"], header
    return {line[0]: dict(zip(header, line, strict=True)) for line in lines}


async def place(client: Client, task_queue: str, game_id: str) -> PlaceAnswer:
    """A new game's placement, as a start's placement activity asks it."""
    return await PlacementActivities(client).place(task_queue, PlaceRequest(game_id=game_id, create=True, job=game_id))


async def test_hosts_lists_reported_hosts(client: Client, task_queue: str, worker_env: dict[str, str]) -> None:
    """`rtjobs hosts` lists reported hosts with liveness, engines and capacity."""
    async with registry_worker(client, task_queue):
        big = await report(client, task_queue, "h-big", capacity=40, games=["g-1", "g-2", "g-3"])
        small = await report(client, task_queue, "h-small", capacity=10, network="overlay/swarm")
        # A new game goes to the emptier host, reserved there until that host reports it.
        assert (await place(client, task_queue, "g-new")).chosen == small

        table = await cli(worker_env, "hosts")
        assert table.returncode == 0, table
        rows = host_rows(table.stdout)
        assert list(rows) == ["h-big", "h-small"]
        assert rows["h-big"]["ID"] == big.host_id[:12]
        assert [rows["h-big"][c] for c in ("LIVE", "WORKERS", "ENGINES", "DRAINING", "NETWORK")] == [
            "yes",
            "1",
            "3/40",
            "no",
            "bridge/local",
        ]
        assert [rows["h-small"][c] for c in ("LIVE", "WORKERS", "ENGINES", "DRAINING", "NETWORK")] == [
            "yes",
            "1",
            "0+1/10",
            "no",
            "overlay/swarm",
        ]
        assert re.fullmatch(r"\d+s ago", rows["h-big"]["LAST SEEN"]), rows["h-big"]

        as_json = await cli(worker_env, "hosts", "-o", "json")
        assert as_json.returncode == 0, as_json
        [line] = as_json.stdout.splitlines()  # one result, one JSON object on one line
        hosts = {h["name"]: h for h in json.loads(line)["hosts"]}
        assert hosts["h-big"]["host_id"] == big.host_id  # the full id
        assert (hosts["h-big"]["engines"], hosts["h-big"]["capacity"], hosts["h-big"]["live"]) == (3, 40, True)
        assert (hosts["h-small"]["reserved"], hosts["h-small"]["live_workers"]) == (1, ["worker-of-h-small"])


async def test_hosts_live_turns_no_when_the_host_stops_reporting(
    client: Client, task_queue: str, worker_env: dict[str, str]
) -> None:
    async def keep_reporting() -> None:
        while True:
            await report(client, task_queue, "h-flaky", every_s=0.5)
            await asyncio.sleep(0.3)

    async with registry_worker(client, task_queue):
        await report(client, task_queue, "h-steady")
        reporter = asyncio.create_task(keep_reporting())
        try:
            while_reporting = await cli(worker_env, "hosts")
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
        assert while_reporting.returncode == 0, while_reporting
        assert host_rows(while_reporting.stdout)["h-flaky"]["LIVE"] == "yes"

        await asyncio.sleep(SILENT_AFTER_S)
        after = await cli(worker_env, "hosts")
        assert after.returncode == 0, after
        rows = host_rows(after.stdout)
        assert (rows["h-flaky"]["LIVE"], rows["h-flaky"]["WORKERS"]) == ("no", "0")
        assert rows["h-steady"]["LIVE"] == "yes"


async def test_drain_stops_placement_on_the_host_and_undrain_restores_it(
    client: Client, task_queue: str, worker_env: dict[str, str]
) -> None:
    async with registry_worker(client, task_queue):
        drained = await report(client, task_queue, "h-1", capacity=10, games=["g-a", "g-b", "g-c"])
        other = await report(client, task_queue, "h-2", capacity=10, games=["g-d", "g-e", "g-f"])

        done = await cli(worker_env, "host", "drain", "h-1")
        assert done.returncode == 0, done
        assert done.stdout.strip() == ("host h-1 draining: no new engines; its 3 engines keep running and being served")
        rows = host_rows((await cli(worker_env, "hosts")).stdout)
        assert (rows["h-1"]["DRAINING"], rows["h-2"]["DRAINING"]) == ("yes", "no")
        # Both hosts equally loaded: without the drain, new games would alternate between them.
        chosen = [(await place(client, task_queue, f"g-drain-{i}")).chosen for i in range(4)]
        assert chosen == [other] * 4

        # By id as well as by name.
        undone = await cli(worker_env, "host", "undrain", drained.host_id)
        assert undone.returncode == 0, undone
        assert undone.stdout.strip() == "host h-1 open: takes new engines again (3/10 in use)"
        assert host_rows((await cli(worker_env, "hosts")).stdout)["h-1"]["DRAINING"] == "no"
        # h-2 now holds 3 engines and 4 reservations: the next games go to h-1 again.
        assert (await place(client, task_queue, "g-after")).chosen == drained


async def test_forget_refuses_a_live_host(
    client: Client, task_queue: str, worker_env: dict[str, str], redis_url: str, stream: str
) -> None:
    """Forget refuses a live host and releases the games placed on a silent one."""
    gid = f"cli-{uuid.uuid4().hex[:10]}"
    async with job_worker(client, task_queue, redis_url, stream, StandInEngine()):
        job = await start_job(client, gid, task_queue=task_queue)
        assert (await asyncio.wait_for(job.result(), HANG_S)).outcome == "success"
        lock = client.get_workflow_handle(lock_workflow_id(gid, task_queue))
        before = await lock.query("placement", result_type=LockGrant)
        assert before.placement is not None and before.placement.host.name == STAND_IN_HOST
        placed_there = f'WorkflowId="{lock.id}" AND {RUNTIME_HOST.name}="{STAND_IN_HOST}"'
        for _ in range(200):  # visibility lags a little behind the search attribute's upsert
            if [w async for w in client.list_workflows(placed_there)]:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the per-game workflow never showed RuntimeHost=stand-in-host")

        refused = await cli(worker_env, "host", "forget", STAND_IN_HOST)
        assert refused.returncode == 1, refused
        [line] = refused.stderr.splitlines()
        assert f"host {STAND_IN_HOST} is live" in line and "--force" in line
        listed = json.loads((await cli(worker_env, "hosts", "-o", "json")).stdout)["hosts"]
        assert STAND_IN_HOST in {v["name"] for v in listed}

        # Its worker's last report, then silence: the host is no longer live.
        host = before.placement.host
        await send_report(
            client, task_queue, HostReport(host=host, worker="stand-in", capacity=1000, games=[gid], report_every_s=0.2)
        )
        await asyncio.sleep(1.0)
        forgot = await cli(worker_env, "host", "forget", STAND_IN_HOST)
        assert forgot.returncode == 0, forgot
        assert forgot.stdout.strip() == (
            f"host {STAND_IN_HOST} ({host.host_id}) forgotten; 1 games placed on it released "
            "(their next job places them again)"
        )

        # Gone for good, with its engine: the game has none (its next start places it anew).
        after = await lock.query("placement", result_type=LockGrant)
        assert (after.placement_known, after.placement, after.placement_lost) == (True, None, False)
        assert (await lock.describe()).typed_search_attributes.get(RUNTIME_HOST) is None
        listed = await cli(worker_env, "hosts", "-o", "json")
        assert listed.returncode == 1, listed
        assert "no host has reported" in listed.stderr


async def test_unknown_host_is_one_line_naming_the_known_hosts(
    client: Client, task_queue: str, worker_env: dict[str, str]
) -> None:
    async with registry_worker(client, task_queue):
        one = await report(client, task_queue, "h-one")
        two = await report(client, task_queue, "h-two")
        for action in ("drain", "undrain", "forget"):
            done = await cli(worker_env, "host", action, "h-three")
            assert done.returncode == 1, done
            assert done.stdout == ""
            [line] = done.stderr.splitlines()
            assert line == (
                f"rtjobs: error: no host named 'h-three'; known hosts: h-one ({one.host_id}), h-two ({two.host_id})"
            )


async def test_reconcile_of_an_unknown_host_is_one_line(
    client: Client, task_queue: str, worker_env: dict[str, str]
) -> None:
    async with registry_worker(client, task_queue):
        await report(client, task_queue, "h-one")
        done = await cli(worker_env, "reconcile", "--dry-run", "--host", "h-three")
    assert done.returncode == 1, done
    assert done.stdout == ""
    assert done.stderr.strip() == (
        f"rtjobs: error: no host h-three in the fleet of task queue {task_queue} (see `rtjobs hosts`)"
    )


async def test_hosts_before_any_report_says_no_host_reported(worker_env: dict[str, str], task_queue: str) -> None:
    done = await cli(worker_env, "hosts")
    assert done.returncode == 1, done
    assert done.stderr.strip() == (
        f"rtjobs: error: no host has reported on task queue {task_queue} (is a worker running?)"
    )
