"""Redis failing over as operators run it: Cluster and Sentinel, and a paused replica under `WAIT`.

Every topology is real (tests/support/redis_topologies.py: redis-server / redis-sentinel processes on
free ports), and every publish goes through the real activity inside a real workflow on the dev server,
retried by Temporal with the contract's policy. The failover scenarios kill the primary that serves
the stream with SIGKILL while jobs keep publishing, as the documented least-privilege ACL user, with
`RTJOBS_REDIS_MIN_REPLICAS=1`; the figures (results held, time to land, lost, doubled) are printed.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import quote

import pytest
from temporalio.client import Client, WorkflowHandle

from activities.publish import ResultPublisher
from contract.models import JobResult
from contract.policies import RESULT_NOT_REPLICATED
from tests.support.processes import STARTUP_S, Process
from tests.support.redis_topologies import (
    LocalCluster,
    LocalSentinel,
    PrimaryWithReplica,
    documented_acl,
    user_config,
    wait_until,
)
from tests.unit.activities.redis.topology_jobs import (
    CLUSTER_RULES,
    SENTINEL_PASSWORD,
    SENTINEL_RULES,
    SENTINEL_USER,
    STREAM,
    USER,
    WAIT_RULES,
    assert_no_secret,
    exactly_once,
    finish,
    paced_jobs,
    publishing_worker,
    read_stream,
    refusals,
    report,
    start_job,
    userinfo,
    worker_user,
)

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
async def test_paused_replica_holds_publishes(client: Client, task_queue: str) -> None:
    """Paused replica holds publishes retryably then they land once."""
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
