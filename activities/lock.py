"""The Temporal-client side of per-game serialisation (see `workflows/lock.py` for the protocol)."""

from __future__ import annotations

import asyncio
import time

from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import WorkflowIDReusePolicy
from temporalio.service import RPCError, RPCStatusCode

from contract.lock import (
    ACQUIRE_ACTIVITY,
    ACQUIRE_SIGNAL,
    HOLDER_RUNNING_ACTIVITY,
    HolderCheck,
    LockRequest,
    LockState,
    lock_workflow_id,
)
from workflows.lock import GameLock


class LockActivities:
    """Holds the worker's Temporal client: a workflow cannot signal-with-start by itself."""

    def __init__(self, client: Client, *, order_settle_s: float) -> None:
        self._client = client
        self._order_settle_s = order_settle_s

    @activity.defn(name=ACQUIRE_ACTIVITY)
    async def acquire_game_lock(self, request: LockRequest) -> None:
        # Ask no earlier than the settle time after the job started: a job of the same game started
        # just before, whose first workflow task ran later, then still asks first. (Waiting here, a
        # precise sleep, and not as a timer in the lock: server timers fire with ~1 s granularity.)
        early = request.started_at.timestamp() + self._order_settle_s - time.time()
        if early > 0:
            await asyncio.sleep(early)
        await self._client.start_workflow(
            GameLock.run,
            LockState(game_id=request.game_id),
            id=lock_workflow_id(request.game_id, activity.info().task_queue),
            task_queue=activity.info().task_queue,
            start_signal=ACQUIRE_SIGNAL,
            start_signal_args=[request],
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            static_summary=f"serialises the runtime jobs of game {request.game_id}",
        )

    @activity.defn(name=HOLDER_RUNNING_ACTIVITY)
    async def game_lock_holder_running(self, check: HolderCheck) -> bool:
        """Whether the job holding a turn still runs. A job reset by an operator runs on as a new run of
        the same chain (same first run id): it still holds the turn, so the latest run is asked."""
        run_id = None if check.first_run_id else check.run_id
        try:
            desc = await self._client.get_workflow_handle(check.workflow_id, run_id=run_id).describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return False
            raise
        if desc.status != WorkflowExecutionStatus.RUNNING:
            return False
        if not check.first_run_id:
            return True
        # The latest run under this id must belong to the holder's chain (not a later job reusing the id).
        chain = desc.raw_description.workflow_execution_info.first_run_id or desc.run_id
        return chain == check.first_run_id
