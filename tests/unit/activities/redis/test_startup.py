"""A worker whose Redis topology is wrong fails start-up in one line, exit 1, without the password."""

from __future__ import annotations

import asyncio
import contextlib
import re

from tests.support.processes import STARTUP_S, Process, start_worker
from tests.support.redis_server import RedisServer, free_port
from tests.support.redis_topologies import (
    LocalSentinel,
    Node,
)
from tests.unit.activities.redis.topology_jobs import (
    STREAM,
    assert_no_secret,
    userinfo,
    worker_user,
)

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
