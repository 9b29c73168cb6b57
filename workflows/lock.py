"""Per-game serialisation: one `RuntimeGameLock` workflow per game grants its jobs a turn, one at a time.

Why a workflow and not an in-memory lock: jobs of one game may run on different worker processes,
and a lock must survive worker crashes. Protocol (ids and signals are internal to this module):

1. the job runs the `acquire_game_lock` activity: signal-with-start of
   `runtime-lock-{task_queue}-{game_id}` with its `LockRequest`;
2. the lock grants turns in the order the jobs were started (workflow start time, then id) among
   those waiting, and signals `lock_granted` to the job. The acquire activity sends a request no
   earlier than RTJOBS_ORDER_SETTLE_S after its job started, so a job started just before it whose
   first workflow task ran later (task-queue dispatch is not strictly FIFO) still arrives first;
3. the job does its Docker step and its publish, then signals `release` to the lock.

Cost per job: one short activity, one signal each way, and one lock workflow task per signal.
A lock with no waiters for `IDLE_EXIT` ends; the next acquire starts a new run. A holder that
stopped without releasing (terminated by an operator) is detected after `HOLDER_CHECK_EVERY`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from contract.lock import (
        ACQUIRE_SIGNAL,
        GRANT_SIGNAL,
        GRANTS_BEFORE_CONTINUE_AS_NEW,
        HOLDER_CHECK_EVERY,
        HOLDER_RUNNING_ACTIVITY,
        IDLE_EXIT,
        LOCK_WORKFLOW,
        RECENT_RUNS_KEPT,
        RELEASE_SIGNAL,
        HolderCheck,
        LockRelease,
        LockRequest,
        LockState,
    )


@workflow.defn(name=LOCK_WORKFLOW)
class GameLock:
    def __init__(self) -> None:
        self._waiting: list[LockRequest] = []
        self._holder: LockRequest | None = None
        self._recent: list[str] = []

    @workflow.signal(name=ACQUIRE_SIGNAL)
    def acquire(self, request: LockRequest) -> None:
        # A retried acquire activity can deliver the same request twice: one turn per job run.
        known = {w.run_id for w in self._waiting} | set(self._recent)
        if self._holder is not None:
            known.add(self._holder.run_id)
        if request.run_id not in known:
            self._waiting.append(request)

    @workflow.signal(name=RELEASE_SIGNAL)
    def release(self, release: LockRelease) -> None:
        if self._holder is not None and self._holder.run_id == release.run_id:
            self._holder = None

    @workflow.query(name="queue")
    def queue(self) -> list[str]:
        holder = [f"holder {self._holder.workflow_id}"] if self._holder else []
        return holder + [f"waiting {w.workflow_id}" for w in self._waiting]

    @workflow.run
    async def run(self, state: LockState) -> None:
        for request in state.waiting:
            self.acquire(request)
        self._recent = list(state.recent_runs)
        grants = 0
        while True:
            has_waiter = await self._wait(lambda: bool(self._waiting), IDLE_EXIT)
            if not has_waiter:
                if workflow.all_handlers_finished():
                    return
                continue
            self._waiting.sort(key=lambda w: (w.started_at, w.workflow_id))
            holder = self._waiting.pop(0)
            self._holder = holder
            self._remember(holder.run_id)
            workflow.set_current_details(f"held by {holder.workflow_id}; {len(self._waiting)} waiting")
            if await self._grant(holder):
                await self._hold(holder)
            self._holder = None
            grants += 1
            if not self._waiting and (
                grants >= GRANTS_BEFORE_CONTINUE_AS_NEW or workflow.info().is_continue_as_new_suggested()
            ):
                workflow.continue_as_new(LockState(game_id=state.game_id, recent_runs=self._recent))

    async def _wait(self, condition: Callable[[], bool], within: timedelta) -> bool:
        try:
            await workflow.wait_condition(condition, timeout=within)
        except TimeoutError:
            return False
        return True

    async def _grant(self, holder: LockRequest) -> bool:
        try:
            await workflow.get_external_workflow_handle(holder.workflow_id, run_id=holder.run_id).signal(GRANT_SIGNAL)
        except ApplicationError:
            workflow.logger.warning("job %s is gone; skipping its turn", holder.workflow_id)
            return False
        return True

    async def _hold(self, holder: LockRequest) -> None:
        while not await self._wait(lambda: self._holder is None, HOLDER_CHECK_EVERY):
            running: bool = await workflow.execute_activity(
                HOLDER_RUNNING_ACTIVITY,
                HolderCheck(workflow_id=holder.workflow_id, run_id=holder.run_id),
                start_to_close_timeout=timedelta(seconds=30),
                result_type=bool,
                summary=f"is {holder.workflow_id} still running?",
            )
            if not running:
                workflow.logger.warning("job %s ended without releasing; lock freed", holder.workflow_id)
                return

    def _remember(self, run_id: str) -> None:
        self._recent.append(run_id)
        del self._recent[:-RECENT_RUNS_KEPT]
