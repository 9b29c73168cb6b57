"""Per-game serialisation and placement memory: one `RuntimeGameLock` workflow per game grants its
jobs a turn, one at a time, and remembers on which Docker host the game's engine lives.

Why a workflow and not an in-memory lock: jobs of one game may run on different worker processes,
and a lock must survive worker crashes. Protocol (ids and signals are internal to this module):

1. the job asks with the `take_turn` update (update-with-start of `runtime-lock-{task_queue}-{game_id}`,
   from the `take_game_turn` local activity, no earlier than RTJOBS_ORDER_SETTLE_S after the job
   started, so a job started just before it whose first workflow task ran later still asks first);
   an idle game answers at once with the turn and the game's placement, so an uncontended job costs
   one synchronous call and one release signal;
2. a busy game queues the request and grants turns in the order the jobs were started (workflow
   start time, then id) by the `lock_granted` signal, which names the game and the holder: a holder
   ignores a grant that is not for the request it waits on;
3. the job does its Docker step and its publish, then the release (from its publish activity, or
   its own signal) carries what it learnt about the engine (`PlacementNote`).

A waiting job asks again every `REQUEST_AGAIN_EVERY` with the `turn_for` query (no history, no
update budget spent) and only when this workflow does not know the request (a run terminated or
gone) with the update again, which starts a new run. More asks at once than the server lets a run
hold updates in flight (or more than its total) fall back to the `acquire` signal.

A holder found gone without releasing (`HOLDER_CHECK_EVERY`) leaves the placement lost, so the next
job asks the hosts instead of trusting a record that may be stale; a check that cannot get an answer
never blocks the lock. While an engine is placed (or its record is lost) the workflow stays; without
one it ends after `IDLE_EXIT` idle. Between turns it continues as new (after
`GRANTS_BEFORE_CONTINUE_AS_NEW` grants or updates, or when Temporal suggests it) with its waiters and
placement: its history and its update count stay bounded. `forget_host` (from `rtjobs host forget`)
clears a placement on a host gone for good.
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
        LOCK_WORKFLOW,
        RECENT_RUNS_KEPT,
        RELEASE_SIGNAL,
        TAKE_TURN_UPDATE,
        TURN_FOR_QUERY,
        HolderCheck,
        LockRelease,
        LockRequest,
        LockState,
        Turn,
    )
    from workflows.awaiting import holds_within
    from workflows.patches import HOST_WORKFLOWS
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
        # The record of the game's engine was lost (a holder that ended without saying what it did):
        # the next job asks the hosts. Not lost and not known: the game has no engine (a new game).
        self._placement_lost = state.placement_lost
        self._updates = 0  # take_turn updates this run accepted (the server bounds them per run)
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
        self._updates += 1
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

    @workflow.query(name=TURN_FOR_QUERY)
    def turn_for(self, request: LockRequest) -> Turn | None:
        """A waiting job's re-ask, answered without writing history: its turn if it holds it, not
        granted if it waits (or was served already), None if this run never heard of it."""
        if self._holds(request):
            return self._turn()
        known = {w.run_id for w in self._waiting} | set(self._recent)
        return Turn(granted=False) if request.run_id in known else None

    @workflow.signal(name=RELEASE_SIGNAL)
    def release(self, release: LockRelease) -> None:
        holder = self._holder
        if holder is None:
            return
        # A reset job releases from its new run: the first run id still names it.
        same_job = bool(release.first_run_id) and release.first_run_id == holder.first_run_id
        if holder.run_id == release.run_id or same_job:
            self._holder = None
            if release.after is not None:
                self._set_placement(release.after.known, release.after.placement)

    @workflow.signal(name=FORGET_HOST_SIGNAL)
    def forget_host(self, host_id: str) -> None:
        if self._placement is not None and self._placement.host.host_id == host_id:
            # The host is gone for good, and the engine with it: the game has none.
            workflow.logger.warning("placement on forgotten host %s cleared", self._placement.host.name)
            self._set_placement(True, None)

    @workflow.query(name="queue")
    def queue(self) -> list[str]:
        holder = [f"holder {self._holder.workflow_id}"] if self._holder else []
        return holder + [f"waiting {w.workflow_id}" for w in self._waiting]

    @workflow.query(name="placement")
    def placement(self) -> Turn:
        """Where the game's engine lives, as this workflow knows it (`granted` is meaningless here)."""
        return Turn(
            granted=False,
            placement_known=self._placement_known,
            placement=self._placement,
            placement_lost=self._placement_lost,
        )

    @workflow.run
    async def run(self, state: LockState) -> None:
        grants = 0

        def busy() -> bool:
            return self._holder is not None or bool(self._waiting)

        while True:
            if self._placement is None and not (self._placement_lost and workflow.patched(HOST_WORKFLOWS)):
                # No engine to remember: end when idle (the next job starts a new run). A lost record
                # stays (from 1.1): a new run would take the game for one without an engine.
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
            suggested = (
                max(grants, self._updates) >= GRANTS_BEFORE_CONTINUE_AS_NEW
                or workflow.info().is_continue_as_new_suggested()
            )
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
                        placement_lost=self._placement_lost,
                    )
                )

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
        holder = self._holder
        assert holder is not None
        return Turn(
            granted=True,
            placement_known=self._placement_known,
            placement=self._placement,
            placement_lost=self._placement_lost,
            game_id=holder.game_id,
            holder=holder.first_run_id or holder.run_id,
        )

    def _set_placement(self, known: bool, placement: Placement | None) -> None:
        before = self._placement.host.name if self._placement else None
        self._placement_known = known
        self._placement = placement
        self._placement_lost = not known
        after = placement.host.name if placement else None
        if before != after:
            workflow.upsert_search_attributes([RUNTIME_HOST.value_set(after) if after else RUNTIME_HOST.value_unset()])

    async def _grant(self, holder: LockRequest, turn: Turn) -> bool:
        handle = workflow.get_external_workflow_handle(holder.workflow_id, run_id=holder.run_id)
        try:
            await handle.signal(GRANT_SIGNAL, turn)
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

    def _remember(self, run_id: str) -> None:
        self._recent.append(run_id)
        del self._recent[:-RECENT_RUNS_KEPT]
