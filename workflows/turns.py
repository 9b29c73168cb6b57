"""A game's turn as its holders take and give it back: the job workflows and `RuntimeReconcile` (anything
that acts on a game's engine) ask, release and tell the engine's host through these same commands,
so the game's workflow (`workflows/lock.py`) serialises them all alike.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from contract.hosts import ENGINE_CHANGED_SIGNAL, EngineChanged, host_workflow_id, registry_workflow_id
    from contract.lock import (
        GRANT_SIGNAL,
        RELEASE_SIGNAL,
        REQUEST_AGAIN_EVERY,
        TAKE_TURN_ACTIVITY,
        TAKE_TURN_AGAIN_ACTIVITY,
        LockRelease,
        LockRequest,
        Turn,
        lock_workflow_id,
    )
    from workflows.awaiting import holds_within
    from workflows.patches import HOST_WORKFLOWS

LOCK_ACTIVITY_TIMEOUT = timedelta(seconds=15)  # > the largest RTJOBS_ORDER_SETTLE_S (5 s) + an RPC
LOCK_RETRY_POLICY = RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=5))


class TurnHolder:
    """What a workflow that takes games' turns keeps: whether the turn came, and with what placement.
    Jobs and `RuntimeReconcile` derive from it, so the game's workflow grants both through one handler.

    It waits on one request at a time (`take_turn`); a grant is taken only when it names that request's
    game and job: `RuntimeReconcile` takes many games' turns in one run, and a grant of an earlier game
    arriving late must not open a later game's turn.
    """

    def __init__(self) -> None:
        self._granted = False
        self._turn = Turn(granted=False)
        self._waiting_on: LockRequest | None = None

    @workflow.signal(name=GRANT_SIGNAL)
    def lock_granted(self, turn: Turn) -> None:
        request = self._waiting_on
        if request is None or self._granted or turn.game_id != request.game_id or turn.holder != _holder(request):
            workflow.logger.warning(
                "ignored a grant of game %s for %s: not the turn this run waits on", turn.game_id, turn.holder
            )
            return
        self._turn = turn
        self._granted = True

    async def take_turn(self, request: LockRequest) -> None:
        """Wait for the game's turn (`self._turn` then holds it).

        Asked again every REQUEST_AGAIN_EVERY while the turn does not come (a query first, an update
        only when the game's workflow lost the request), so a job is never stranded by a lock run
        that is gone. The caller decides what a cancellation means (a job still waits, shielded).
        """
        self._granted = False
        self._turn = Turn(granted=False)
        self._waiting_on = request
        again = False
        while not self._granted:
            turn = await ask_for_turn(request, again=again)
            if turn.granted:
                self.lock_granted(turn)
            if await holds_within(lambda: self._granted, REQUEST_AGAIN_EVERY):
                break
            again = True

    @property
    def host_wait(self) -> timedelta:
        return timedelta(seconds=self._turn.host_wait_s)


def _holder(request: LockRequest) -> str:
    return request.first_run_id or request.run_id


async def ask_for_turn(request: LockRequest, *, again: bool = False) -> Turn:
    """The acquire: one update-with-start of the game's workflow (the `take_game_turn` local activity),
    answered at once with the turn when the game is idle; otherwise the grant signal follows. Asked
    `again`, the `take_game_turn_again` activity queries first and updates only if the request is lost."""
    turn: Turn = await workflow.execute_local_activity(
        TAKE_TURN_AGAIN_ACTIVITY if again else TAKE_TURN_ACTIVITY,
        request,
        start_to_close_timeout=LOCK_ACTIVITY_TIMEOUT,
        retry_policy=LOCK_RETRY_POLICY,
        result_type=Turn,
        summary=f"{'ask again for' if again else 'take'} the turn of game {request.game_id}",
    )
    return turn


async def give_back_turn(game_id: str, release: LockRelease) -> None:
    """The release signal; a game workflow that is gone (terminated) has no turn to give back."""
    try:
        await workflow.get_external_workflow_handle(lock_workflow_id(game_id, workflow.info().task_queue)).signal(
            RELEASE_SIGNAL, release
        )
    except ApplicationError as err:
        # The lock run is gone (terminated): there is nothing to release. The next request starts a
        # new lock run.
        workflow.logger.warning("could not release the turn of game %s: %s", game_id, err)


def host_of_change(change: EngineChanged) -> str:
    """The workflow told of an engine made or removed: the host's own (1.0: the fleet's registry)."""
    queue = workflow.info().task_queue
    if workflow.patched(HOST_WORKFLOWS):
        return host_workflow_id(queue, change.host_id)
    return registry_workflow_id(queue)


async def tell_host(change: EngineChanged) -> None:
    """The host counts (or forgets) an engine at once, without waiting for its next report."""
    try:
        await workflow.get_external_workflow_handle(host_of_change(change)).signal(ENGINE_CHANGED_SIGNAL, change)
    except ApplicationError as err:
        # No run (forgotten, terminated): the host's next report tells it the same.
        workflow.logger.warning("could not tell host %s about game %s: %s", change.host_id, change.game_id, err)
