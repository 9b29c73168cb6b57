"""Health endpoints for orchestrators (RTJOBS_HEALTH_ADDRESS): `GET /healthz` and `GET /readyz`.

`/healthz` (liveness) fails only when restarting would help (one of the process's Workers stopped
polling): it asks no dependency, so an outage does not restart every worker at once. `/readyz`
(readiness) asks Temporal, Redis and Docker, as JSON per dependency. A few lines over
`asyncio.start_server`, on the worker's own loop, so it sees the Workers' state directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any

from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.client import Client
from temporalio.worker import Worker

from activities.docker import EngineActivities
from activities.redis_topology import RedisClient, check_reachable, scrub
from contract.models import one_line

log = logging.getLogger("rtjobs.health")

# Each dependency check's bound: below the usual probe timeout (Kubernetes: 1 s default, set it to 5 s).
CHECK_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 5.0
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class Health:
    """What the endpoints report on: the Workers the process runs (`workers`, filled while they start)
    and the clients of its dependencies.
    """

    def __init__(
        self,
        client: Client,
        redis: RedisClient,
        engine: EngineActivities,
        *,
        stream: str,
        redis_url: str,
        check_timeout_s: float = CHECK_TIMEOUT_S,
    ) -> None:
        self._client = client
        self._check_timeout_s = check_timeout_s
        self._redis = redis
        self._engine = engine
        self._stream = stream
        self._redis_url = redis_url
        self.workers: Sequence[Worker] = ()

    def live(self) -> tuple[int, dict[str, Any]]:
        stopped = [w.task_queue for w in self.workers if w.is_shutdown]  # (is_running: not yet while starting)
        if stopped:
            return 503, {"status": "fail", "stopped_task_queues": stopped}
        return 200, {"status": "ok", "task_queues": [w.task_queue for w in self.workers]}

    async def ready(self) -> tuple[int, dict[str, Any]]:
        names = ("temporal", "redis", "docker")
        checks = (self._temporal, self._redis_ping, self._docker)
        results = await asyncio.gather(*(_timed(check, self._check_timeout_s) for check in checks))
        report = dict(zip(names, results, strict=True))
        live_status, live = self.live()
        report["worker"] = {"ok": live_status == 200, **{k: v for k, v in live.items() if k != "status"}}
        ok = all(r["ok"] for r in report.values())
        return (200 if ok else 503), {"status": "ok" if ok else "fail", "checks": report}

    async def _temporal(self) -> None:
        await self._client.workflow_service.get_system_info(
            GetSystemInfoRequest(), timeout=timedelta(seconds=self._check_timeout_s)
        )

    async def _redis_ping(self) -> None:
        try:
            await check_reachable(self._redis, self._stream)
        except Exception as err:  # the message may quote the URL: masked as in the worker's own log
            raise RuntimeError(scrub(one_line(str(err) or type(err).__name__, 300), self._redis_url)) from None

    async def _docker(self) -> None:
        await self._engine.docker.version()


async def _timed(check: Callable[[], Awaitable[None]], timeout_s: float) -> dict[str, Any]:
    began = time.monotonic()
    try:
        async with asyncio.timeout(timeout_s):
            await check()
    except TimeoutError:
        error: str | None = f"no answer within {timeout_s:g} s"
    except Exception as err:
        error = one_line(str(err) or type(err).__name__, 300)
    else:
        error = None
    result: dict[str, Any] = {"ok": error is None, "ms": round((time.monotonic() - began) * 1000, 1)}
    if error is not None:
        result["error"] = error
    return result


@contextlib.asynccontextmanager
async def serving_health(address: str, health: Health) -> AsyncIterator[None]:
    """The endpoints on `address` (host:port) until the block ends."""
    host, _, port = address.rpartition(":")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, body = await _answer(reader, health)
            payload = json.dumps(body).encode()
            head = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + payload)
            await writer.drain()
        except (OSError, TimeoutError, ValueError):
            pass  # a probe that hung up or sent garbage gets nothing
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, host.strip("[]") or None, int(port))
    log.info("health endpoints on http://%s/healthz and /readyz", address)
    try:
        yield
    finally:
        server.close()
        await server.wait_closed()


async def _answer(reader: asyncio.StreamReader, health: Health) -> tuple[int, dict[str, Any]]:
    async with asyncio.timeout(READ_TIMEOUT_S):
        request_line = (await reader.readline()).decode("latin-1").split()
        while (await reader.readline()).strip():  # headers: not needed
            pass
    if len(request_line) != 3:
        raise ValueError("not an HTTP request")
    method, target, _version = request_line
    path = target.split("?", 1)[0]
    if path not in ("/healthz", "/readyz"):
        return 404, {"error": f"no {path}: GET /healthz or /readyz"}
    if method != "GET":
        return 405, {"error": "GET only"}
    return health.live() if path == "/healthz" else await health.ready()
