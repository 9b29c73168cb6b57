"""Scenario 4: the Temporal server itself is SIGKILLed mid-run and restarted on its persisted SQLite
file and port; the worker and the client reconnect by themselves and every job finishes, once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from contract.engine import ENSURE_RUNNING_ACTIVITY
from tests.support.runs import until_pending
from tests.support.stack import Stack, run_jobs
from tests.support.temporal_server import TemporalDevServer

DOWN_S = 3.0


@pytest.fixture
def temporal_server() -> Iterator[TemporalDevServer]:
    server = TemporalDevServer().start()
    try:
        yield server
    finally:
        server.close()


@pytest.mark.slow
@pytest.mark.docker
async def test_temporal_killed_and_restarted_mid_run(stack: Stack, temporal_server: TemporalDevServer) -> None:
    await stack.start_worker(TEMPORAL_ADDRESS=temporal_server.address)
    client = await Client.connect(temporal_server.address, data_converter=pydantic_data_converter)
    starts = await stack.start(stack.games("s", 3), image=stack.images.slow_healthy, client=client)
    await until_pending(starts, ENSURE_RUNNING_ACTIVITY)  # the engines are coming up
    stops = await stack.stop_replays(stack.games("r", 10), client=client)

    temporal_server.kill()
    killed = time.monotonic()
    await asyncio.sleep(DOWN_S)
    temporal_server.start()
    back = time.monotonic()
    after = await stack.stop_replays(stack.games("a", 5), client=client)

    runs = starts + stops + after
    finished = (await run_jobs(stack, runs, timeout_s=120)).finished
    took = time.monotonic() - back
    print(
        f"\n[temporal restart] {len(runs)} jobs; server down {back - killed:.1f}s (SIGKILL, restart on its db file); "
        f"all finished {took:.1f}s after it returned; results "
        f"{sorted({(r.outcome, r.error_code) for r in finished})}"
    )
