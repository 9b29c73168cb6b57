"""A game's turn as its holders take and give it back: the job workflows and `RuntimeReconcile` (anything
that acts on a game's engine) ask, release and tell the host registry through these same commands,
so the game's workflow (`workflows/lock.py`) serialises them all alike.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from contract.hosts import ENGINE_CHANGED_SIGNAL, EngineChanged, registry_workflow_id
    from contract.lock import (
        GRANT_SIGNAL,
        RELEASE_SIGNAL,
        TAKE_TURN_ACTIVITY,
        LockRelease,
        LockRequest,
        Turn,
        lock_workflow_id,
    )

LOCK_ACTIVITY_TIMEOUT = timedelta(seconds=15)  # > the largest RTJOBS_ORDER_SETTLE_S (5 s) + an RPC
LOCK_RETRY_POLICY = RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=5))


class TurnHolder:
    """What a workflow that takes games' turns keeps: whether the turn came, and with what placement.
    Jobs and `RuntimeReconcile` derive from it, so the game's workflow grants both through one handler."""

    def __init__(self) -> None:
        self._granted = False
        self._turn = Turn(granted=False)

    @workflow.signal(name=GRANT_SIGNAL)
    def lock_granted(self, turn: Turn | None = None) -> None:
        # Earlier shapes of the lock grant without a payload: the placement is then unknown.
        self._turn = turn if turn is not None else Turn(granted=True)
        self._granted = True


async def ask_for_turn(request: LockRequest) -> Turn:
    """The fleet's acquire: one update-with-start of the game's workflow (the `take_game_turn` local
    activity), answered at once with the turn when the game is idle; otherwise the grant signal
    follows. Asked again, it answers the same way."""
    turn: Turn = await workflow.execute_local_activity(
        TAKE_TURN_ACTIVITY,
        request,
        start_to_close_timeout=LOCK_ACTIVITY_TIMEOUT,
        retry_policy=LOCK_RETRY_POLICY,
        result_type=Turn,
        summary=f"take the turn of game {request.game_id}",
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


async def tell_registry(change: EngineChanged) -> None:
    """The registry counts (or forgets) an engine at once, without waiting for the host's next report."""
    try:
        await workflow.get_external_workflow_handle(registry_workflow_id(workflow.info().task_queue)).signal(
            ENGINE_CHANGED_SIGNAL, change
        )
    except ApplicationError as err:
        # No registry run (terminated): the host's next report tells it the same.
        workflow.logger.warning("could not tell the host registry about game %s: %s", change.game_id, err)
