"""The placement activity: where a game's engine is, or which host gets a new one, asked of the fleet's
host registry (`workflows/hosts.py`) when the game's own workflow does not know.

A lookup (a stop) is a query. A placement (a start) or a correction of the inventory is an update,
serialised with every other placement by the registry. The server holds at most 10 updates of one
workflow in flight (`history.maxInFlightUpdates`) and refuses the rest at once, so a thousand starts
placed one update each crowd each other out: measured here, 1,000 simultaneous starts drew ~10,000
refused or aborted calls and reached 50 engines in 83 s. Instead, the placements this worker's jobs
ask for while one update is in flight wait for it and then go together in the next (`place_batch`):
a lone start pays no extra wait, a burst costs a few updates. Refusals (other workers' batches) are
asked again after an exponentially growing, jittered pause.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from temporalio import activity
from temporalio.client import Client, WithStartWorkflowOperation, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from activities.hosts import registry_start_options
from activities.with_start import execute_update_with_start
from contract.hosts import (
    HOST_LIVENESS_ACTIVITY,
    HOSTS_QUERY,
    LOCATE_QUERY,
    PLACE_ACTIVITY,
    PLACE_BATCH_MAX,
    PLACE_BATCH_UPDATE,
    PLACE_UPDATE,
    HostLiveness,
    HostRef,
    HostView,
    PlaceAnswer,
    PlaceBatch,
    PlaceBatchAnswer,
    PlaceRequest,
    RegistryState,
    registry_workflow_id,
)
from workflows.hosts import HostRegistry

log = logging.getLogger("rtjobs.placement")

# A refused update (the registry's updates in flight are at the server's limit) is asked again after
# a pause drawn from [0, min(cap, first * 2**n)]: "full jitter", so refused callers spread out.
REFUSED_FIRST_PAUSE_S = 0.05
REFUSED_PAUSE_CAP_S = 2.0
# The silence of a host the registry holds no report of (a JSON number: infinity has no JSON form).
NEVER_HEARD_S = 1e9


@dataclass
class _Queue:
    """The placements of one task queue's registry waiting for the next update, and its sender."""

    waiting: list[tuple[PlaceRequest, asyncio.Future[PlaceAnswer]]] = field(default_factory=list)
    sender: asyncio.Task[None] | None = None


class PlacementActivities:
    """Holds the worker's Temporal client (the registry is asked by update, which a workflow cannot
    send) and the placements waiting to be sent together."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._queues: dict[str, _Queue] = {}
        self.updates_sent = 0  # read by tests: how many registry updates the placements took

    @activity.defn(name=PLACE_ACTIVITY)
    async def place_game_engine(self, request: PlaceRequest) -> PlaceAnswer:
        task_queue = activity.info().task_queue
        if not request.create and not request.absent_on:
            handle = self._client.get_workflow_handle(registry_workflow_id(task_queue))
            try:
                answer: PlaceAnswer = await handle.query(LOCATE_QUERY, request.game_id, result_type=PlaceAnswer)
                return answer
            except RPCError as err:
                if err.status != RPCStatusCode.NOT_FOUND:
                    raise
            # No registry run (terminated, or none yet): the update below starts one.
        return await self.place(task_queue, request)

    @activity.defn(name=HOST_LIVENESS_ACTIVITY)
    async def host_liveness(self, host: HostRef) -> HostLiveness:
        """How long the host's workers have been silent, from the registry's record of their reports (a
        query: no history). A registry that cannot be asked counts as "just heard": a Docker step is
        never given up on because the coordination layer is slow."""
        handle = self._client.get_workflow_handle(registry_workflow_id(activity.info().task_queue))
        try:
            views = await handle.query(HOSTS_QUERY, result_type=list[HostView], rpc_timeout=timedelta(seconds=10))
        except RPCError as err:
            log.warning("could not ask the host registry about host %s: %s", host.name, err.message)
            return HostLiveness(known=True, live=True, silent_s=0.0)
        view = next((v for v in views if v.host_id == host.host_id), None)
        if view is None:
            return HostLiveness(known=False, live=False, silent_s=NEVER_HEARD_S)
        silent_s = NEVER_HEARD_S
        if view.last_seen is not None:
            silent_s = max(0.0, (datetime.now(UTC) - view.last_seen).total_seconds())
        return HostLiveness(known=True, live=view.live, silent_s=silent_s)

    async def place(self, task_queue: str, request: PlaceRequest) -> PlaceAnswer:
        """The registry's answer to `request`, sent with whatever else this worker asks meanwhile."""
        queue = self._queues.setdefault(task_queue, _Queue())
        answer: asyncio.Future[PlaceAnswer] = asyncio.get_running_loop().create_future()
        queue.waiting.append((request, answer))
        if queue.sender is None or queue.sender.done():
            queue.sender = asyncio.create_task(self._send_waiting(task_queue, queue))
        # A cancelled activity (its workflow task timed out) leaves the future cancelled: the sender
        # skips it if it has not gone yet; a reservation already made expires (RESERVATION_TTL_S).
        return await answer

    async def _send_waiting(self, task_queue: str, queue: _Queue) -> None:
        while queue.waiting:
            batch = [(r, f) for r, f in queue.waiting[:PLACE_BATCH_MAX] if not f.done()]
            del queue.waiting[:PLACE_BATCH_MAX]
            if not batch:
                continue
            try:
                answers = await self._update(task_queue, [r for r, _ in batch])
            except Exception as err:  # every caller's activity fails with it and is retried by its policy
                for _, future in batch:
                    if not future.done():
                        future.set_exception(err)
                continue
            for (_, future), answer in zip(batch, answers, strict=True):
                if not future.done():
                    future.set_result(answer)

    async def _update(self, task_queue: str, requests: list[PlaceRequest]) -> list[PlaceAnswer]:
        refused = 0
        while True:
            self.updates_sent += 1
            try:
                start = _start_registry(task_queue)
                if len(requests) == 1:
                    one = await execute_update_with_start(self._client, PLACE_UPDATE, requests[0], start, PlaceAnswer)
                    return [one]
                batch = PlaceBatch(requests=requests)
                answer = await execute_update_with_start(
                    self._client, PLACE_BATCH_UPDATE, batch, start, PlaceBatchAnswer
                )
                return answer.answers
            except WorkflowUpdateFailedError as err:
                if len(requests) == 1:
                    raise
                # A registry still run by a build without `place_batch` (a rolling deploy): one update
                # each, as that build expects.
                log.warning("the host registry refused a batch of placements (%s); placing one at a time", err.cause)
                return [(await self._update(task_queue, [r]))[0] for r in requests]
            except RPCError as err:
                if err.status != RPCStatusCode.RESOURCE_EXHAUSTED:
                    raise
            refused += 1
            await asyncio.sleep(random.uniform(0, min(REFUSED_PAUSE_CAP_S, REFUSED_FIRST_PAUSE_S * 2**refused)))


def _start_registry(task_queue: str) -> WithStartWorkflowOperation[HostRegistry, None]:
    """The registry's start, should it have no run (one operation serves one call only)."""
    return WithStartWorkflowOperation(
        HostRegistry.run,
        RegistryState(task_queue=task_queue),
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        **registry_start_options(task_queue),
    )
