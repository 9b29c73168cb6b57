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

Cost per job: one local activity (the request, a marker in the job's history), one signal each
way, and one lock workflow task per signal. A lock with no waiters for `IDLE_EXIT` ends; the next
request starts a new run. A busy lock continues-as-new between turns (after
`GRANTS_BEFORE_CONTINUE_AS_NEW` grants or when Temporal suggests it), carrying its waiters. A holder
that stopped without releasing (terminated by an operator) is detected after `HOLDER_CHECK_EVERY`;
a check that cannot get an answer never blocks the lock (the holder keeps the turn and its release
is still seen). A job waiting on a lock run that is gone sends its request again
(`REQUEST_AGAIN_EVERY`), which starts a new run.

Versions: runs begun before `LOCK_PATCH_V2` (histories in tests/histories/v1) keep the first
shape's behaviour to their end; see the README's development section for the rule.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from contract.lock import (
        ACQUIRE_SIGNAL,
        GRANT_SIGNAL,
        GRANTS_BEFORE_CONTINUE_AS_NEW,
        HOLDER_CHECK_ATTEMPTS,
        HOLDER_CHECK_EVERY,
        HOLDER_RUNNING_ACTIVITY,
        IDLE_EXIT,
        LOCK_PATCH_V2,
        LOCK_WORKFLOW,
        RECENT_RUNS_KEPT,
        RELEASE_SIGNAL,
        HolderCheck,
        LockRelease,
        LockRequest,
        LockState,
    )
    from workflows.awaiting import holds_within


@workflow.defn(name=LOCK_WORKFLOW)
class GameLock:
    @workflow.init
    def __init__(self, state: LockState) -> None:
        # State is restored here, not in run(): the signals of a run's first activation are handled
        # before run() starts, and their dedup must already know the runs carried over.
        self._waiting: list[LockRequest] = []
        self._holder: LockRequest | None = None
        self._recent: list[str] = list(state.recent_runs)
        for request in state.waiting:
            self.acquire(request)

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
        holder = self._holder
        if holder is None:
            return
        # A reset job releases from its new run: the first run id still names it.
        same_job = bool(release.first_run_id) and release.first_run_id == holder.first_run_id
        if holder.run_id == release.run_id or same_job:
            self._holder = None

    @workflow.query(name="queue")
    def queue(self) -> list[str]:
        holder = [f"holder {self._holder.workflow_id}"] if self._holder else []
        return holder + [f"waiting {w.workflow_id}" for w in self._waiting]

    @workflow.run
    async def run(self, state: LockState) -> None:
        # False only while replaying a run begun by the first released shape: it keeps that behaviour.
        current = workflow.patched(LOCK_PATCH_V2)
        grants = 0
        while True:
            has_waiter = await holds_within(lambda: bool(self._waiting), IDLE_EXIT)
            if not has_waiter:
                if current:
                    if not self._waiting:  # a request may have come with the idle timer
                        return
                    continue
                if workflow.all_handlers_finished():
                    return
                continue
            self._waiting.sort(key=lambda w: (w.started_at, w.workflow_id))
            holder = self._waiting.pop(0)
            self._holder = holder
            self._remember(holder.run_id)
            workflow.set_current_details(f"held by {holder.workflow_id}; {len(self._waiting)} waiting")
            if await self._grant(holder):
                await (self._hold(holder) if current else self._hold_first_shape(holder))
            self._holder = None
            grants += 1
            suggested = grants >= GRANTS_BEFORE_CONTINUE_AS_NEW or workflow.info().is_continue_as_new_suggested()
            if current and suggested:
                # Between turns, with the waiters: a busy game's history stays bounded.
                workflow.continue_as_new(
                    LockState(game_id=state.game_id, waiting=list(self._waiting), recent_runs=self._recent)
                )
            if not current and not self._waiting and suggested:
                workflow.continue_as_new(LockState(game_id=state.game_id, recent_runs=self._recent))

    async def _grant(self, holder: LockRequest) -> bool:
        try:
            await workflow.get_external_workflow_handle(holder.workflow_id, run_id=holder.run_id).signal(GRANT_SIGNAL)
        except ApplicationError:
            workflow.logger.warning("job %s is gone; skipping its turn", holder.workflow_id)
            return False
        return True

    async def _hold(self, holder: LockRequest) -> None:
        """Until the holder releases, or is found gone by a check; a check never blocks the lock."""
        while not await holds_within(lambda: self._holder is None, HOLDER_CHECK_EVERY):
            check = workflow.start_activity(
                HOLDER_RUNNING_ACTIVITY,
                HolderCheck(workflow_id=holder.workflow_id, run_id=holder.run_id, first_run_id=holder.first_run_id),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=HOLDER_CHECK_ATTEMPTS),
                result_type=bool,
                summary=f"is {holder.workflow_id} still running?",
            )
            await workflow.wait_condition(lambda: self._holder is None or check.done())  # noqa: B023
            if not check.done():
                return  # released while the check ran; its answer no longer matters
            try:
                running = check.result()
            except ActivityError as err:
                workflow.logger.warning(
                    "could not check whether job %s still runs (%s); it keeps the turn", holder.workflow_id, err.cause
                )
                continue
            if not running:
                workflow.logger.warning("job %s ended without releasing; lock freed", holder.workflow_id)
                return

    async def _hold_first_shape(self, holder: LockRequest) -> None:
        """The first released shape's hold, kept for runs begun before LOCK_PATCH_V2 (replay)."""
        while not await holds_within(lambda: self._holder is None, HOLDER_CHECK_EVERY):
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
