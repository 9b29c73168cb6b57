"""A host whose workflow is too busy to answer a probe is asked by its `reserve` update at once.

The server holds one query per workflow while a task of it is in flight and turns the next away
("consistent query buffer is full"); the SDK's client retried such a probe with its own backoff until
the probe's 3 s deadline, so at 10 hosts a burst of placements waited out deadlines (p99 7.8 s in
bench/fleet_scale.py). Here a real host's workflow has its task in flight for as long as the test holds
it (taken from the queue by a bare poll, answered later), against the real dev server: its query buffer
is really full, as a busy host's is.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import TaskQueueKind, WorkflowTaskFailedCause
from temporalio.api.query.v1 import WorkflowQuery
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import (
    PollWorkflowTaskQueueRequest,
    QueryWorkflowRequest,
    RespondWorkflowTaskFailedRequest,
)
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from activities.fleet import Busy, Fleet, send_report
from activities.placement import PlacementActivities
from contract.hosts import (
    VIEW_QUERY,
    HostRef,
    HostReport,
    PlaceRequest,
    ReserveAnswer,
    ReserveRequest,
    host_queue,
)
from contract.lock import coordination_queue
from rtjobs.sandbox import workflow_runner
from tests.support.stand_ins import until_listed
from workflows.host import RuntimeHost


class Placer(PlacementActivities):
    """The placement activities, telling when their first reserve update goes out."""

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self.updating = asyncio.Event()

    async def _update(self, workflow_id: str, requests: list[ReserveRequest]) -> list[ReserveAnswer]:
        self.updating.set()
        return await super()._update(workflow_id, requests)


async def keep_a_query_waiting(client: Client, workflow_id: str) -> None:
    request = QueryWorkflowRequest(
        namespace=client.namespace,
        execution=WorkflowExecution(workflow_id=workflow_id),
        query=WorkflowQuery(query_type=VIEW_QUERY),
    )
    while True:
        try:
            await client.workflow_service.query_workflow(request, retry=False, timeout=timedelta(seconds=60))
            return
        except RPCError as err:
            if err.status != RPCStatusCode.RESOURCE_EXHAUSTED:
                raise
            await asyncio.sleep(0.02)


def host_worker(client: Client, task_queue: str, **options: Any) -> Worker:
    return Worker(
        client,
        task_queue=coordination_queue(task_queue),
        workflows=[RuntimeHost],
        workflow_runner=workflow_runner(),
        **options,
    )


async def test_a_host_too_busy_to_be_probed_is_reserved_by_update_at_once(client: Client, task_queue: str) -> None:
    """The probe is turned away (`Busy`, not a wait for its deadline), and the placement sends the host's
    reserve update while the host's task is still in flight; once a worker runs the workflow, the update
    gives the game that host.
    """
    host_id = f"busy-{uuid.uuid4().hex[:8]}"
    host = HostRef(host_id=host_id, name="busy", queue=host_queue(task_queue, host_id))
    report = HostReport(host=host, worker="worker-busy", capacity=10, games=[], report_every_s=60)
    # The host's workflow started by its first report, run by a worker that keeps no sticky queue, so the
    # next task goes to the coordination queue, where the test takes it.
    async with host_worker(client, task_queue, max_cached_workflows=0):
        await send_report(client, task_queue, report)
        await until_listed(client, task_queue, [host_id])
        assert (await Fleet(client, task_queue).view(host_id)) is not None
    await send_report(client, task_queue, report)
    # That report's task taken and held (no worker runs it yet): the workflow is busy, as under a burst.
    task = await client.workflow_service.poll_workflow_task_queue(
        PollWorkflowTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=coordination_queue(task_queue), kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL),
            identity="test-holder",
        )
    )
    assert task.task_token, "no task of the host's workflow was handed out"
    handle = client.get_workflow_handle(task.workflow_execution.workflow_id)
    ask = ReserveRequest(game_id=f"g-{uuid.uuid4().hex[:6]}", job="j1")
    # One query waits in the workflow's buffer while the task is in flight (sent again while turned away);
    # from then on every other query is turned away at once.
    held_query = asyncio.create_task(keep_a_query_waiting(client, handle.id))
    try:
        await asyncio.sleep(0.5)
        fleet = Fleet(client, task_queue)
        async with asyncio.timeout(8):  # within the held task's 10 s timeout
            while not isinstance(await fleet.probe(host, ask), Busy):
                pass
        placer = Placer(client)
        request = PlaceRequest(game_id=ask.game_id, job="j1", create=True)
        placing = asyncio.create_task(placer.place(task_queue, request))
        # Sooner than the probe's own deadline (3 s): the busy host is asked by update, not waited out.
        await asyncio.wait_for(placer.updating.wait(), 2)
        assert not placing.done(), placing
        # The held task let go: a worker runs the workflow, the report and the reservation with it.
        await client.workflow_service.respond_workflow_task_failed(
            RespondWorkflowTaskFailedRequest(
                namespace=client.namespace,
                task_token=task.task_token,
                cause=WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_UNSPECIFIED,
                identity="test-holder",
            )
        )
        async with host_worker(client, task_queue):
            answer = await asyncio.wait_for(placing, 30)
        assert answer.chosen == host, answer
    finally:
        held_query.cancel()
        await handle.terminate("test done")
