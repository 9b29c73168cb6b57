"""Per-game serialisation and placement memory: one `RuntimeGameLock` workflow per game grants its
jobs a turn, one at a time, and remembers on which Docker host the game's engine lives.

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

The fleet shape (`LOCK_PATCH_V3`): a job asks with the `take_turn` update (update-with-start, from
the `take_game_turn` local activity); an idle game answers at once with the turn and the game's
placement, so an uncontended job costs one synchronous call and one release signal. A busy game
queues the request and later signals the grant with the placement. The release carries what the job
learnt (`PlacementNote`); a holder found gone without releasing leaves the placement unknown, so
the next job asks the host registry instead of trusting a record that may be stale. While an engine
is placed the workflow stays (continuing as new when its history grows); without one it ends after
`IDLE_EXIT` idle. `forget_host` (from `rtjobs host forget`) clears a placement on a host gone for good.

Versions: runs begun before `LOCK_PATCH_V2` (histories in tests/histories/v1) keep the first
shape's behaviour to their end, runs begun before `LOCK_PATCH_V3` (v2) the second; see the README's
development section for the rule.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from contract.hosts import FORGET_HOST_SIGNAL, Placement
    from contract.lock import (
        ACQUIRE_SIGNAL,
        GRANT_SIGNAL,
        GRANTS_BEFORE_CONTINUE_AS_NEW,
        HOLDER_CHECK_ATTEMPTS,
        HOLDER_CHECK_EVERY,
        HOLDER_RUNNING_ACTIVITY,
        IDLE_EXIT,
        LOCK_PATCH_V2,
        LOCK_PATCH_V3,
        LOCK_WORKFLOW,
        RECENT_RUNS_KEPT,
        RELEASE_SIGNAL,
        TAKE_TURN_UPDATE,
        HolderCheck,
        LockRelease,
        LockRequest,
        LockState,
        Turn,
    )
    from workflows.awaiting import holds_within
    from workflows.search import RUNTIME_HOST


@workflow.defn(name=LOCK_WORKFLOW)
class GameLock:
    @workflow.init
    def __init__(self, state: LockState) -> None:
        # State is restored here, not in run(): the signals and updates of a run's first activation
        # are handled before run() starts, and their dedup must already know the runs carried over.
        self._waiting: list[LockRequest] = []
        self._holder: LockRequest | None = None
        self._granted_inline = False
        self._recent: list[str] = list(state.recent_runs)
        self._placement_known = state.placement_known
        self._placement: Placement | None = state.placement
        self._fleet: bool | None = None
        # Requests whose take_turn update waits for the loop's choice: a holder among them learns of
        # its turn from the update's answer, not from a grant signal.
        self._asking: set[str] = set()
        for request in state.waiting:
            self._offer(request)

    @workflow.signal(name=ACQUIRE_SIGNAL)
    def acquire(self, request: LockRequest) -> None:
        self._offer(request)

    @workflow.update(name=TAKE_TURN_UPDATE)
    async def take_turn(self, request: LockRequest) -> Turn:
        """The turn, in this workflow task, when the game is idle; otherwise the request waits for a
        grant signal. Asking again (a retried activity, a job re-sending its request) is answered
        the same way.

        The turn itself is chosen by run()'s loop, after every request of this workflow task was
        offered: requests that arrive together are served in start order, as signals were.
        """
        if not self._is_fleet_shape():
            self._offer(request)
            return Turn(granted=False)  # a run of the second shape grants by signal only
        if not self._holds(request):
            self._offer(request)
            self._asking.add(request.run_id)
            try:
                # Idle: the loop picks a holder in this very workflow task; busy: someone holds it.
                await workflow.wait_condition(lambda: self._holder is not None)
            finally:
                self._asking.discard(request.run_id)
        # Asked again, or by a run reset from the holder (same first run id): it still holds the turn.
        return self._turn() if self._holds(request) else Turn(granted=False)

    @workflow.signal(name=RELEASE_SIGNAL)
    def release(self, release: LockRelease) -> None:
        holder = self._holder
        if holder is None:
            return
        # A reset job releases from its new run: the first run id still names it.
        same_job = bool(release.first_run_id) and release.first_run_id == holder.first_run_id
        if holder.run_id == release.run_id or same_job:
            self._holder = None
            if release.after is not None and self._is_fleet_shape():
                self._set_placement(release.after.known, release.after.placement)

    @workflow.signal(name=FORGET_HOST_SIGNAL)
    def forget_host(self, host_id: str) -> None:
        if self._placement is not None and self._placement.host.host_id == host_id:
            workflow.logger.warning("placement on forgotten host %s cleared", self._placement.host.name)
            self._set_placement(False, None)

    @workflow.query(name="queue")
    def queue(self) -> list[str]:
        holder = [f"holder {self._holder.workflow_id}"] if self._holder else []
        return holder + [f"waiting {w.workflow_id}" for w in self._waiting]

    @workflow.query(name="placement")
    def placement(self) -> Turn:
        """Where the game's engine lives, as this workflow knows it (`granted` is meaningless here)."""
        return Turn(granted=False, placement_known=self._placement_known, placement=self._placement)

    @workflow.run
    async def run(self, state: LockState) -> None:
        if self._is_fleet_shape():
            await self._run_fleet_shape(state)
            return
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
            if await self._grant(holder, None):
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

    async def _run_fleet_shape(self, state: LockState) -> None:
        grants = 0

        def busy() -> bool:
            return self._holder is not None or bool(self._waiting)

        while True:
            if self._placement is None:
                # No engine to remember: end when idle (the next job starts a new run).
                if not await holds_within(busy, IDLE_EXIT) and not busy():
                    return
            else:
                await workflow.wait_condition(lambda: busy() or workflow.info().is_continue_as_new_suggested())
            if self._holder is None and self._waiting:
                self._waiting.sort(key=lambda w: (w.started_at, w.workflow_id))
                first = self._waiting.pop(0)
                self._take(first, inline=first.run_id in self._asking)
            holder = self._holder
            if holder is not None:
                granted = self._granted_inline or await self._grant(holder, self._turn())
                if granted:
                    await self._hold(holder)
                if self._holder is holder:
                    if granted:  # it ended without releasing: what it did to the engine is unknown
                        self._set_placement(False, None)
                    self._holder = None
                grants += 1
            suggested = grants >= GRANTS_BEFORE_CONTINUE_AS_NEW or workflow.info().is_continue_as_new_suggested()
            if suggested and self._holder is None and not self._asking:
                # Between turns, with the waiters and the placement: the history stays bounded. (Every
                # handler here is synchronous: none can be half-way through.)
                workflow.continue_as_new(
                    LockState(
                        game_id=state.game_id,
                        waiting=list(self._waiting),
                        recent_runs=self._recent,
                        placement_known=self._placement_known,
                        placement=self._placement,
                    )
                )

    def _is_fleet_shape(self) -> bool:
        # False only while replaying (and then continuing) a run begun by an earlier shape.
        if self._fleet is None:
            self._fleet = workflow.patched(LOCK_PATCH_V3)
        return self._fleet

    def _offer(self, request: LockRequest) -> None:
        # A retried request can arrive twice: one turn per job run.
        known = {w.run_id for w in self._waiting} | set(self._recent)
        if self._holder is not None:
            known.add(self._holder.run_id)
        if request.run_id not in known:
            self._waiting.append(request)

    def _holds(self, request: LockRequest) -> bool:
        holder = self._holder
        if holder is None:
            return False
        same_chain = bool(request.first_run_id) and request.first_run_id == holder.first_run_id
        return holder.run_id == request.run_id or same_chain

    def _take(self, holder: LockRequest, *, inline: bool) -> None:
        self._holder = holder
        self._granted_inline = inline
        self._remember(holder.run_id)
        workflow.set_current_details(f"held by {holder.workflow_id}; {len(self._waiting)} waiting")

    def _turn(self) -> Turn:
        return Turn(granted=True, placement_known=self._placement_known, placement=self._placement)

    def _set_placement(self, known: bool, placement: Placement | None) -> None:
        before = self._placement.host.name if self._placement else None
        self._placement_known = known
        self._placement = placement
        after = placement.host.name if placement else None
        if before != after:
            workflow.upsert_search_attributes([RUNTIME_HOST.value_set(after) if after else RUNTIME_HOST.value_unset()])

    async def _grant(self, holder: LockRequest, turn: Turn | None) -> bool:
        handle = workflow.get_external_workflow_handle(holder.workflow_id, run_id=holder.run_id)
        try:
            await (handle.signal(GRANT_SIGNAL) if turn is None else handle.signal(GRANT_SIGNAL, turn))
        except ApplicationError:
            workflow.logger.warning("job %s is gone; skipping its turn", holder.workflow_id)
            return False
        return True

    async def _hold(self, holder: LockRequest) -> None:
        """Until the holder releases, or is found gone by a check; a check never blocks the lock."""

        def released() -> bool:
            return self._holder is not holder

        while not await holds_within(released, HOLDER_CHECK_EVERY):
            check = workflow.start_activity(
                HOLDER_RUNNING_ACTIVITY,
                HolderCheck(workflow_id=holder.workflow_id, run_id=holder.run_id, first_run_id=holder.first_run_id),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=HOLDER_CHECK_ATTEMPTS),
                result_type=bool,
                summary=f"is {holder.workflow_id} still running?",
            )
            await workflow.wait_condition(lambda: released() or check.done())  # noqa: B023
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
