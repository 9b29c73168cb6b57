"""The client side of a game's lock (`workflows/lock.py`): the activities that acquire it for a holder
(a workflow cannot update-with-start), check whether a holder still runs, and send the signals a job's
publish hands over.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, cast

from temporalio import activity
from temporalio.client import Client, WithStartWorkflowOperation, WorkflowExecutionStatus, WorkflowQueryRejectedError
from temporalio.common import QueryRejectCondition, WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.with_start import execute_update_with_start
from contract.lock import (
    ACQUIRE_ACTIVITY,
    ACQUIRE_AGAIN_ACTIVITY,
    ACQUIRE_SIGNAL,
    ACQUIRE_UPDATE,
    GRANT_FOR_QUERY,
    HOLDER_RUNNING_ACTIVITY,
    HolderCheck,
    LockGrant,
    LockRequest,
    LockState,
    coordination_queue,
    lock_workflow_id,
)
from contract.models import FollowUpSignal
from workflows.lock import RuntimeGameLock

log = logging.getLogger("rtjobs.lock")

# How the server refuses an update it will not take now: too many in flight (RESOURCE_EXHAUSTED); and,
# should a run reach its total (`history.maxTotalUpdates`, which the game's lock avoids by continuing
# as new when the server suggests it), FAILED_PRECONDITION ("The limit on the total number of distinct
# updates in this workflow has been reached", seen from the dev server of Temporal 1.32). Either way the
# request is queued by signal.
UPDATE_REFUSED = {RPCStatusCode.RESOURCE_EXHAUSTED, RPCStatusCode.FAILED_PRECONDITION}

# How a game's lock is started when it has no open run, tried in this order: the server's id reuse
# policies tell its last run's end apart, with no listing (the server rate-limits visibility calls, 10 a
# second a namespace by default). No run ever (within the namespace's retention): a new game. A last run
# that was terminated, failed or timed out: its engine record is lost (the next job asks every
# host). A last run that ended on its own: the game has no engine (a run with one, or that lost track of
# one, never ends idle).
FRESH_RUNS = (
    (WorkflowIDReusePolicy.REJECT_DUPLICATE, False),
    (WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY, True),
    (WorkflowIDReusePolicy.ALLOW_DUPLICATE, False),
)


class FollowUpSignals:
    """The publish activity's hand-over (`PublishRequest.then_signal`): the signals a job would send
    itself after its publish, sent by the activity right after the entry is appended, so the job's
    next workflow task is its last.
    """

    def __init__(self, client: Client) -> None:
        self._client = client

    async def send(self, follow_up: FollowUpSignal) -> None:
        try:
            await self._client.get_workflow_handle(follow_up.workflow_id).signal(follow_up.signal, follow_up.arg)
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise  # the activity is retried: the entry is found, not appended again, and this sent again
            # The game's lock (or the host's workflow) is gone (terminated): nothing to release or tell;
            # the next request starts a new run, the host's next report tells its workflow.
            log.warning("%s not sent: workflow %s is gone", follow_up.signal, follow_up.workflow_id)


class LockActivities:
    """Holds the worker's Temporal client: a workflow cannot signal-with-start by itself."""

    def __init__(self, client: Client, *, order_settle_s: float, host_wait_s: float = 60.0) -> None:
        self._client = client
        self._order_settle_s = order_settle_s
        self._host_wait_s = host_wait_s

    async def _settle(self, request: LockRequest) -> None:
        # Ask no earlier than the settle time after the job started: a job of the same game started
        # just before, whose first workflow task ran later, then still asks first. (Waiting here, a
        # precise sleep, and not as a timer in the lock: server timers fire with ~1 s granularity.)
        early = request.started_at.timestamp() + self._order_settle_s - time.time()
        if early > 0:
            await asyncio.sleep(early)

    @activity.defn(name=ACQUIRE_ACTIVITY)
    async def acquire_game_lock(self, request: LockRequest) -> LockGrant:
        """The acquire: update-with-start of the game's lock, answered with the grant (and the lock's
        engine record) at once when the game is idle. Asking again is answered from the lock's state
        (the holder gets its grant again), so every ask has an update id of its own: a fixed one would
        get the answer stored in a terminated run instead of asking the new one.
        """
        await self._settle(request)
        task_queue = activity.info().task_queue
        try:
            grant = await self._update_with_start(request, task_queue)
        except RPCError as err:
            if err.status not in UPDATE_REFUSED:
                raise
            # More jobs of this game ask at once than the server lets a workflow hold updates in flight
            # (10 by default), or the run took all the updates the server allows one run: queue by
            # signal instead; the grant then comes as a signal.
            log.info("game %s: acquire update refused (%s); queueing by signal", request.game_id, err.message)
            await self._signal_with_start(request, task_queue, coordination_queue(task_queue))
            grant = LockGrant(granted=False)
        return grant.model_copy(update={"host_wait_s": self._host_wait_s})

    async def _update_with_start(self, request: LockRequest, task_queue: str) -> LockGrant:
        for reuse, lost in FRESH_RUNS:
            start = WithStartWorkflowOperation(
                RuntimeGameLock.run,
                LockState(game_id=request.game_id, placement_lost=lost),
                id=lock_workflow_id(request.game_id, task_queue),
                task_queue=coordination_queue(task_queue),
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                id_reuse_policy=reuse,
                static_summary=f"serialises the runtime jobs of game {request.game_id} and remembers its host",
            )
            try:
                return await execute_update_with_start(self._client, ACQUIRE_UPDATE, request, start, LockGrant)
            except WorkflowAlreadyStartedError:
                continue  # a closed run this policy does not start after: the next one does
        raise RuntimeError(f"the workflow of game {request.game_id} could be neither joined nor started")

    @activity.defn(name=ACQUIRE_AGAIN_ACTIVITY)
    async def acquire_game_lock_again(self, request: LockRequest) -> LockGrant:
        """A waiting job's re-ask: the `GRANT_FOR_QUERY` query of the game's open lock, which writes no
        history and spends none of the run's update budget; only a run that does not know the request
        (it is gone, or a new run lost it) is asked by update-with-start, as the first time.
        """
        handle = self._client.get_workflow_handle(lock_workflow_id(request.game_id, activity.info().task_queue))
        try:
            known: LockGrant | None = await handle.query(
                GRANT_FOR_QUERY,
                request,
                result_type=cast("type[Any]", LockGrant | None),
                reject_condition=QueryRejectCondition.NOT_OPEN,
            )
        except WorkflowQueryRejectedError:
            known = None  # the run ended (idle exit, terminated): a new one must hear the request
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
            known = None
        if known is None:
            return await self.acquire_game_lock(request)
        return known.model_copy(update={"host_wait_s": self._host_wait_s})

    async def _signal_with_start(self, request: LockRequest, task_queue: str, runs_on: str) -> None:
        for reuse, lost in FRESH_RUNS:
            try:
                await self._client.start_workflow(
                    RuntimeGameLock.run,
                    LockState(game_id=request.game_id, placement_lost=lost),
                    id=lock_workflow_id(request.game_id, task_queue),
                    task_queue=runs_on,
                    start_signal=ACQUIRE_SIGNAL,
                    start_signal_args=[request],
                    id_reuse_policy=reuse,
                    static_summary=f"serialises the runtime jobs of game {request.game_id}",
                )
                return
            except WorkflowAlreadyStartedError:
                continue

    @activity.defn(name=HOLDER_RUNNING_ACTIVITY)
    async def game_lock_holder_running(self, check: HolderCheck) -> bool:
        """Whether the job holding the lock still runs. A job reset by an operator runs on as a new run of
        the same chain (same first run id): it still holds the lock, so the latest run is asked.
        """
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
