"""`RuntimeGameLock`: the game's lock, one workflow per game. It grants the game's jobs (and
`RuntimeReconcile`) the lock one at a time, in the order the jobs were started, and keeps the lock's
engine record: on which host the game's engine lives, that it has none, or that the record was lost.

A workflow, not an in-memory lock, because a game's jobs run on any worker process and the lock must
outlive worker crashes. The protocol: docs/semantics.md "Per-game order: the game's lock"; the holder's
side is `workflows/lock_holder.py`, the client side `activities/lock.py`.
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
        ACQUIRE_UPDATE,
        GRANT_FOR_QUERY,
        GRANT_SIGNAL,
        GRANTS_BEFORE_CONTINUE_AS_NEW,
        HOLDER_CHECK_ATTEMPTS,
        HOLDER_CHECK_EVERY,
        HOLDER_RUNNING_ACTIVITY,
        IDLE_EXIT,
        LOCK_WORKFLOW,
        RECENT_RUNS_KEPT,
        RELEASE_SIGNAL,
        HolderCheck,
        LockGrant,
        LockRelease,
        LockRequest,
        LockState,
    )
    from workflows.awaiting import holds_within
    from workflows.patches import HOST_WORKFLOWS
    from workflows.search import RUNTIME_HOST


@workflow.defn(name=LOCK_WORKFLOW)
class RuntimeGameLock:
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
        self._updates = 0  # acquire updates this run accepted (the server bounds them per run)
        # Requests whose acquire update waits for the loop's choice: a holder among them learns of
        # its grant from the update's answer, not from a grant signal.
        self._asking: set[str] = set()
        for request in state.waiting:
            self._offer(request)

    @workflow.signal(name=ACQUIRE_SIGNAL)
    def acquire_by_signal(self, request: LockRequest) -> None:
        """The fallback acquire (updates refused): the request waits, its grant comes as a signal."""
        self._offer(request)

    @workflow.update(name=ACQUIRE_UPDATE)
    async def acquire(self, request: LockRequest) -> LockGrant:
        """The grant, in this workflow task, when the game is idle; otherwise the request waits for a
        grant signal. Asking again (a retried activity, a job re-sending its request) is answered
        the same way.

        The holder itself is chosen by run()'s loop, after every request of this workflow task was
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
        # Asked again, or by a run reset from the holder (same first run id): it still holds the lock.
        return self._holder_grant() if self._holds(request) else LockGrant(granted=False)

    @workflow.query(name=GRANT_FOR_QUERY)
    def grant_for(self, request: LockRequest) -> LockGrant | None:
        """A waiting job's re-ask, answered without writing history: its grant if it holds the lock, not
        granted if it waits (or was served already), None if this run never heard of it.
        """
        if self._holds(request):
            return self._holder_grant()
        known = {w.run_id for w in self._waiting} | set(self._recent)
        return LockGrant(granted=False) if request.run_id in known else None

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
                self._set_record(release.after.known, release.after.placement)

    @workflow.signal(name=FORGET_HOST_SIGNAL)
    def forget_host(self, host_id: str) -> None:
        if self._placement is not None and self._placement.host.host_id == host_id:
            # The host is gone for good, and the engine with it: the game has none.
            workflow.logger.warning("engine record on forgotten host %s cleared", self._placement.host.name)
            self._set_record(True, None)

    @workflow.query(name="queue")
    def queue(self) -> list[str]:
        holder = [f"holder {self._holder.workflow_id}"] if self._holder else []
        return holder + [f"waiting {w.workflow_id}" for w in self._waiting]

    @workflow.query(name="placement")
    def engine_record(self) -> LockGrant:
        """The lock's engine record (`granted` is meaningless here)."""
        return LockGrant(
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
                self._grant_to(first, inline=first.run_id in self._asking)
            holder = self._holder
            if holder is not None:
                granted = self._granted_inline or await self._send_grant(holder, self._holder_grant())
                if granted:
                    await self._hold(holder)
                if self._holder is holder:
                    if granted:  # it ended without releasing: what it did to the engine is unknown
                        self._set_record(False, None)
                    self._holder = None
                grants += 1
            suggested = (
                max(grants, self._updates) >= GRANTS_BEFORE_CONTINUE_AS_NEW
                or workflow.info().is_continue_as_new_suggested()
            )
            if suggested and self._holder is None and not self._asking:
                # Between holders, with the waiters and the engine record: the history stays bounded. (Every
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
        # A retried request can arrive twice: one grant per job run.
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

    def _grant_to(self, holder: LockRequest, *, inline: bool) -> None:
        self._holder = holder
        self._granted_inline = inline
        self._remember(holder.run_id)
        workflow.set_current_details(f"held by {holder.workflow_id}; {len(self._waiting)} waiting")

    def _holder_grant(self) -> LockGrant:
        holder = self._holder
        assert holder is not None
        return LockGrant(
            granted=True,
            placement_known=self._placement_known,
            placement=self._placement,
            placement_lost=self._placement_lost,
            game_id=holder.game_id,
            holder=holder.first_run_id or holder.run_id,
        )

    def _set_record(self, known: bool, placement: Placement | None) -> None:
        before = self._placement.host.name if self._placement else None
        self._placement_known = known
        self._placement = placement
        self._placement_lost = not known
        after = placement.host.name if placement else None
        if before != after:
            workflow.upsert_search_attributes([RUNTIME_HOST.value_set(after) if after else RUNTIME_HOST.value_unset()])

    async def _send_grant(self, holder: LockRequest, grant: LockGrant) -> bool:
        handle = workflow.get_external_workflow_handle(holder.workflow_id, run_id=holder.run_id)
        try:
            await handle.signal(GRANT_SIGNAL, grant)
        except ApplicationError:
            workflow.logger.warning("job %s is gone; not granted the lock", holder.workflow_id)
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
                    "could not check whether job %s still runs (%s); it keeps the lock", holder.workflow_id, err.cause
                )
                continue
            if not running:
                workflow.logger.warning("job %s ended without releasing; lock freed", holder.workflow_id)
                return

    def _remember(self, run_id: str) -> None:
        self._recent.append(run_id)
        del self._recent[:-RECENT_RUNS_KEPT]
