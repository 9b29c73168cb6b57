"""What the Redis topology tests share: the least-privilege ACL users, and jobs that publish through the real
activity inside real workflows on the dev server, with the exactly-once count of their stream.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from activities.publish import ResultPublisher
from activities.redis_topology import RedisClient, redis_client
from contract.models import JobResult
from tests.support.publish_workflow import PublishOnlyWorkflow
from tests.support.redis_topologies import (
    Node,
    documented_acl,
    user_config,
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
