"""The worker refuses a Redis that may evict what the exactly-once publish rests on (README, "Redis: memory and
eviction"): an evicted idempotency key lets a retried publish append a result twice, an evicted stream loses
results. Every server here is the test's own redis-server on a free port; the shared one is never touched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from activities.redis_topology import STREAM_AND_KEYS, MemoryPolicy, PolicyUnreadable, memory_policies, redis_client
from contract.settings import Settings
from rtjobs.startup import StartupError, check_eviction
from tests.support.processes import STARTUP_S, WORKER_READY, Process, start_ready_worker, start_worker
from tests.support.redis_server import RedisServer
from tests.support.redis_topologies import LocalCluster, LocalSentinel

MB = 1 << 20
PASSWORD = "evict-s3cret"
POLICIES = [
    "noeviction",
    "allkeys-lru",
    "allkeys-lfu",
    "allkeys-random",
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
    "some-future-policy",
]


def lines_with(level: str, output: str) -> list[str]:
    return [line for line in output.splitlines() if f" {level} " in line]


@contextmanager
def private_redis(*args: str) -> Iterator[RedisServer]:
    server = RedisServer(extra_args=list(args)).start()
    try:
        yield server
    finally:
        server.close()


def only_user(rules: str) -> list[str]:
    """redis-server arguments: `default` off, a user `rtjobs` with exactly `rules` (plus all keys)."""
    return ["--user", "default", "off", "--user", "rtjobs", "on", f">{PASSWORD}", "~*", *rules.split()]


def url_of(server: RedisServer) -> str:
    return f"redis://rtjobs:{PASSWORD}@127.0.0.1:{server.port}/0"


# --- the decision -----------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
def test_only_noeviction_or_no_memory_limit_is_safe(policy: str) -> None:
    """The keys' TTLs decide: the idempotency keys have one (volatile-* evicts them), the stream has none
    (only allkeys-* evicts it); a policy this code does not know is taken as the worst.
    """
    limited = MemoryPolicy("", 2 * MB, policy).at_risk()
    if policy == "noeviction":
        assert limited == ()
    elif policy.startswith("volatile-"):
        assert limited == ("idempotency keys",)
    else:
        assert limited == STREAM_AND_KEYS
    assert MemoryPolicy("", 0, policy).at_risk() == (), "maxmemory 0: Redis never evicts"


# --- the real worker process ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "assume"),
    [("volatile-lru", False), ("allkeys-lru", False), ("volatile-ttl", True)],
    ids=["volatile-lru", "allkeys-lru", "volatile-ttl-despite-assume"],
)
async def test_worker_refuses_to_start_on_a_redis_that_may_evict_its_keys(
    processes: list[Process], worker_env: dict[str, str], stream: str, policy: str, assume: bool
) -> None:
    with private_redis("--maxmemory", "2mb", "--maxmemory-policy", policy) as server:
        env = {**worker_env, "REDIS_URL": server.url, "RTJOBS_REDIS_ASSUME_NOEVICTION": str(assume).lower()}
        proc = start_worker(processes, env)
        assert await proc.wait(STARTUP_S) == 1
    out = proc.output()
    assert WORKER_READY not in out
    [line] = lines_with("ERROR", out)
    assert f"runs maxmemory-policy {policy} with maxmemory 2mb:" in line, line
    assert f"idempotency keys ({{{stream}}}:published:*" in line, line
    assert "a retried publish would then append a job's result twice" in line, line
    assert line.endswith("set maxmemory-policy noeviction (or maxmemory 0) on every node, replicas included"), line
    assert (f"the result stream {stream} itself" in line) == policy.startswith("allkeys-"), line


@pytest.mark.parametrize(
    "args",
    [
        ["--maxmemory", "2mb", "--maxmemory-policy", "noeviction"],
        ["--maxmemory", "0", "--maxmemory-policy", "allkeys-lru"],
    ],
    ids=["noeviction-2mb", "allkeys-lru-without-limit"],
)
async def test_worker_starts_on_a_redis_that_cannot_evict(
    processes: list[Process], worker_env: dict[str, str], args: list[str]
) -> None:
    with private_redis(*args) as server:
        proc = await start_ready_worker(processes, {**worker_env, "REDIS_URL": server.url})
        out = proc.output()
        proc.kill()
    assert "maxmemory" not in out, out


async def test_unreadable_policy_refuses_start(processes: list[Process], worker_env: dict[str, str]) -> None:
    """An unreadable policy refuses start unless the operator vouches for it.

    A user refused INFO and CONFIG: the worker cannot know, so it refuses, naming both ways out; with
    RTJOBS_REDIS_ASSUME_NOEVICTION=true it starts with one warning.
    """
    with private_redis(*only_user("-@all +ping")) as server:
        env = {**worker_env, "REDIS_URL": url_of(server)}
        refused = start_worker(processes, env)
        vouched = start_worker(processes, {**env, "RTJOBS_REDIS_ASSUME_NOEVICTION": "true"})
        assert await refused.wait(STARTUP_S) == 1
        await vouched.wait_for(WORKER_READY)
        vouched_out = vouched.output()
        vouched.kill()
    out = refused.output()
    assert PASSWORD not in out + vouched_out
    [line] = lines_with("ERROR", out)
    assert "did not tell its maxmemory-policy (INFO memory: " in line and "no permissions" in line, line
    assert "grant the worker's user +info|memory" in line and "RTJOBS_REDIS_ASSUME_NOEVICTION=true" in line, line
    assert lines_with("ERROR", vouched_out) == []
    [warning] = [w for w in lines_with("WARNING", vouched_out) if "maxmemory" in w]  # (others: the dead Docker)
    assert "did not tell its maxmemory-policy" in warning and "RTJOBS_REDIS_ASSUME_NOEVICTION=true vouches" in warning


# --- how the settings are read, per server and topology ---------------------------------------------


async def test_info_memory_alone_is_enough_and_config_get_is_the_fallback() -> None:
    """The documented grant (`+info|memory`) reads the policy; a user with only `+config|get` does too."""
    args = ["--maxmemory", "3mb", "--maxmemory-policy", "volatile-lfu"]
    for rules in ("-@all +ping +info|memory", "-@all +ping +config|get"):
        with private_redis(*args, *only_user(rules)) as server:
            client = redis_client(url_of(server))
            try:
                assert await memory_policies(client, "s") == ([MemoryPolicy("", 3 * MB, "volatile-lfu")], []), rules
            finally:
                await client.aclose()


async def test_renamed_config_leaves_policy_unreadable() -> None:
    """A renamed config and a refused info leave the policy unreadable."""
    with private_redis("--rename-command", "CONFIG", "", *only_user("+@all -info")) as server:
        client = redis_client(url_of(server))
        try:
            unreadable = r"INFO memory: .*no permissions.*; CONFIG GET: .*unknown command"
            with pytest.raises(PolicyUnreadable, match=unreadable):
                await memory_policies(client, "s")
        finally:
            await client.aclose()


async def test_cluster_check_reads_every_primary() -> None:
    """Cluster check reads every primary and names the one that may evict.

    The stream's slot can move to any primary (failover, resharding): an unsafe primary that does not
    serve the stream now refuses the start too, named in the line.
    """
    stream = "runtime:job_results"
    cluster = await asyncio.to_thread(LocalCluster().start)
    client = redis_client(cluster.url())
    try:
        primaries = [n for n in cluster.nodes if n.info("replication")["role"] == "master"]
        other = next(n for n in primaries if n is not cluster.owner(stream))
        with other.client() as conn:  # the test's own node, never the shared Redis
            conn.config_set("maxmemory", "2mb")
            conn.config_set("maxmemory-policy", "volatile-lru")
        policies, skipped = await memory_policies(client, stream)
        assert skipped == []
        assert sorted(p.node for p in policies) == sorted(f"127.0.0.1:{n.port}" for n in primaries)
        assert [p.node for p in policies if p.at_risk()] == [f"127.0.0.1:{other.port}"]
        settings = Settings(REDIS_URL=cluster.url(), results_stream=stream)
        with pytest.raises(StartupError) as refused:
            await check_eviction(client, settings, "the cluster")
        assert f"runs maxmemory-policy volatile-lru with maxmemory 2mb on 127.0.0.1:{other.port}:" in str(refused.value)
    finally:
        await client.aclose()
        cluster.close()


async def test_sentinel_check_reads_the_primary_the_sentinels_name() -> None:
    """Only the primary is limited here: reading the replica instead would find noeviction."""
    sentinel = await asyncio.to_thread(LocalSentinel(count=1).start)
    client = redis_client(sentinel.url())
    try:
        with sentinel.node_at(sentinel.primary_port()).client() as conn:
            conn.config_set("maxmemory", "2mb")
            conn.config_set("maxmemory-policy", "allkeys-random")
        assert await memory_policies(client, "s") == ([MemoryPolicy("", 2 * MB, "allkeys-random")], [])
    finally:
        await client.aclose()
        sentinel.close()
