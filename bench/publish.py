"""Publish benchmark: the activity's Redis call (Lua: dedup key + XADD) versus a raw XADD.

Same Redis, same six fields, one run; prints p50/p99 latency and throughput of both and the ratio
(target: ≤ 1.5). Usage: python bench/publish.py [--n 5000] [--concurrency 32] [--redis-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from activities.publish import ResultPublisher, redis_client
from contract.models import JobResult
from contract.settings import Settings, redact_url

Op = Callable[[int], Awaitable[object]]


async def latencies(op: Op, n: int, offset: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        await op(offset + i)
        out.append(time.perf_counter() - t0)
    return out


async def throughput(op: Op, n: int, concurrency: int, offset: int) -> float:
    queue = iter(range(offset, offset + n))

    async def lane() -> None:
        for i in queue:
            await op(i)

    t0 = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return n / (time.perf_counter() - t0)


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--redis-url", default=Settings().redis_url)
    args = parser.parse_args()

    redis = redis_client(args.redis_url)
    run = uuid.uuid4().hex[:8]
    act_stream, raw_stream = f"bench:{run}:activity", f"bench:{run}:raw"
    publisher = ResultPublisher(redis, stream=act_stream, dedup_ttl_s=600)
    fields = JobResult.fresh_success("bench-game", "0123456789ab" * 5).stream_fields()
    result = JobResult.model_validate(fields)

    async def activity_call(i: int) -> object:
        return await publisher.publish(result, f"runtime-start-bench-{run}-{i}", "run")

    async def raw_xadd(i: int) -> object:
        return await redis.xadd(raw_stream, fields)  # type: ignore[arg-type]

    ops: dict[str, Op] = {"activity (Lua dedup + XADD)": activity_call, "raw XADD": raw_xadd}
    for op in ops.values():  # warm up: connection, script load
        await latencies(op, 200, 10**8)
    lat: dict[str, list[float]] = {name: [] for name in ops}
    blocks = 10
    for b in range(blocks):  # interleave blocks so drift hits both alike
        for name, op in ops.items():
            lat[name] += await latencies(op, args.n // blocks, b * args.n)
    tput = {name: await throughput(op, args.n, args.concurrency, 10**7) for name, op in ops.items()}

    print(
        f"publish benchmark: n={args.n} sequential, concurrency={args.concurrency} for throughput, "
        f"{redact_url(args.redis_url)}"
    )
    print(f"{'':30} {'p50 µs':>9} {'p99 µs':>9} {'seq ops/s':>10} {'conc ops/s':>11}")
    for name, values in lat.items():
        seq = len(values) / sum(values)
        print(f"{name:30} {pct(values, 50):9.1f} {pct(values, 99):9.1f} {seq:10.0f} {tput[name]:11.0f}")
    a, r = lat["activity (Lua dedup + XADD)"], lat["raw XADD"]
    print(
        f"ratio activity/raw: p50 {pct(a, 50) / pct(r, 50):.2f}x, p99 {pct(a, 99) / pct(r, 99):.2f}x, "
        f"throughput {tput['raw XADD'] / tput['activity (Lua dedup + XADD)']:.2f}x slower (target ≤ 1.5)"
    )
    keys = [k async for k in redis.scan_iter(match=f"{{{act_stream}}}:*", count=1000)]
    for i in range(0, len(keys), 1000):
        await redis.delete(*keys[i : i + 1000])
    await redis.delete(act_stream, raw_stream)
    await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main())
