"""What lets a retried attempt recognise the container an earlier attempt of its job run made.

Two records: the heartbeat details (the container id, once created) and the `galaxy.job-run` label the
create writes (so the container is known even when the worker died before a heartbeat carried its id).
The heartbeat also keeps the attempt alive for Temporal while it waits on a pull, a readiness wait or a
long stop, and once a pull began its second detail is the pull's progress (`contract.engine.PullProgress`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from temporalio import activity

from contract.engine import PullProgress

HEARTBEAT_EVERY_S = 1.0


def job_run() -> str:
    """The calling job run, "{workflow_id}/{run_id}": the `galaxy.job-run` label's value ("" outside a workflow)."""
    info = activity.info()
    return f"{info.workflow_id}/{info.workflow_run_id}" if info.workflow_id else ""


def recorded_container_id() -> str:
    """The container id an earlier attempt of this activity created, from its heartbeat details."""
    details = activity.info().heartbeat_details
    if details and isinstance(details[0], str):
        return details[0]
    return ""


class Heartbeat:
    """Beats every second from a side task, carrying the id of the container this job created and,
    once a pull began, its progress.
    """

    def __init__(self, container_id: str) -> None:
        self.container_id = container_id
        self.pull: PullProgress | None = None

    def beat(self) -> None:
        if self.pull is not None:
            activity.heartbeat(self.container_id, self.pull.model_dump(mode="json"))
        elif self.container_id:
            activity.heartbeat(self.container_id)
        else:
            activity.heartbeat()

    def pulling(self, progress: PullProgress) -> None:
        """Beat at once with the pull's newest progress (the pull reports it at most every 2 s)."""
        self.pull = progress
        self.beat()

    def record(self, container_id: str) -> None:
        """Beat at once with the new id: a worker dying right after the create must not lose it."""
        self.container_id = container_id
        self.beat()

    async def run(self) -> None:
        while True:
            self.beat()
            await asyncio.sleep(HEARTBEAT_EVERY_S)


@asynccontextmanager
async def heartbeating(container_id: str) -> AsyncIterator[Heartbeat]:
    """Heartbeat for as long as the block runs, starting from what an earlier attempt recorded."""
    hb = Heartbeat(container_id)
    task = asyncio.create_task(hb.run())
    try:
        yield hb
    finally:
        task.cancel()
        # asyncio.wait neither raises the side task's CancelledError nor swallows our own.
        await asyncio.wait([task])
