"""The holder's side of a game's lock: how a job workflow or `RuntimeReconcile` acquires the game's
`RuntimeGameLock` (`workflows/lock.py`), waits for its grant and releases it.

Everything that acts on a game's engine holds the lock through this one class, so the lock
serialises jobs and reconciliation alike.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from contract.lock import (
        ACQUIRE_ACTIVITY,
        ACQUIRE_AGAIN_ACTIVITY,
        GRANT_SIGNAL,
        RELEASE_SIGNAL,
        REQUEST_AGAIN_EVERY,
        LockGrant,
        LockRelease,
        LockRequest,
        lock_workflow_id,
    )
    from workflows.awaiting import holds_within

LOCK_ACTIVITY_TIMEOUT = timedelta(seconds=15)  # > the largest RTJOBS_ORDER_SETTLE_S (5 s) + an RPC
LOCK_RETRY_POLICY = RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=5))


class LockHolder:
    """What a workflow that acquires games' locks keeps: whether the lock was granted, and the grant
    (with the lock's engine record). Jobs and `RuntimeReconcile` derive from it, so the lock grants
    both through one handler.

    It waits on one request at a time (`acquire_lock`); a grant is taken only when it names that
    request's game and job: `RuntimeReconcile` acquires many games' locks in one run, and a late grant
    of an earlier game must not count for a later one.
    """

    def __init__(self) -> None:
        self._granted = False
        self._grant = LockGrant(granted=False)
        self._waiting_on: LockRequest | None = None

    @workflow.signal(name=GRANT_SIGNAL)
    def lock_granted(self, grant: LockGrant) -> None:
        request = self._waiting_on
        if request is None or self._granted or grant.game_id != request.game_id or grant.holder != _holder(request):
            workflow.logger.warning(
                "ignored a grant of game %s for %s: not the request this run waits on", grant.game_id, grant.holder
            )
            return
        self._grant = grant
        self._granted = True

    async def acquire_lock(self, request: LockRequest) -> None:
        """Wait until the game's lock is granted (`self._grant` then holds the grant).

        Asked again every REQUEST_AGAIN_EVERY while no grant comes (a query first, an update only
        when the lock lost the request), so a job is never stranded by a lock run that is gone. The
        caller decides what a cancellation means (a job still waits, shielded).
        """
        self._granted = False
        self._grant = LockGrant(granted=False)
        self._waiting_on = request
        again = False
        while not self._granted:
            grant = await _request_lock(request, again=again)
            if grant.granted:
                self.lock_granted(grant)
            if await holds_within(lambda: self._granted, REQUEST_AGAIN_EVERY):
                break
            again = True

    @property
    def host_wait(self) -> timedelta:
        return timedelta(seconds=self._grant.host_wait_s)


def _holder(request: LockRequest) -> str:
    return request.first_run_id or request.run_id


async def _request_lock(request: LockRequest, *, again: bool = False) -> LockGrant:
    """One request: an update-with-start of the game's lock (the `ACQUIRE_ACTIVITY` local activity),
    answered at once with the grant when the game is idle; otherwise the grant signal follows. Asked
    `again`, the `ACQUIRE_AGAIN_ACTIVITY` activity queries first and updates only if the request is lost.
    """
    grant: LockGrant = await workflow.execute_local_activity(
        ACQUIRE_AGAIN_ACTIVITY if again else ACQUIRE_ACTIVITY,
        request,
        start_to_close_timeout=LOCK_ACTIVITY_TIMEOUT,
        retry_policy=LOCK_RETRY_POLICY,
        result_type=LockGrant,
        summary=f"{'ask again for' if again else 'acquire'} the lock of game {request.game_id}",
    )
    return grant


async def release_lock(game_id: str, release: LockRelease) -> None:
    """The release signal; a lock run that is gone (terminated) holds nothing to release."""
    try:
        await workflow.get_external_workflow_handle(lock_workflow_id(game_id, workflow.info().task_queue)).signal(
            RELEASE_SIGNAL, release
        )
    except ApplicationError as err:
        # The lock run is gone (terminated): there is nothing to release. The next request starts a
        # new lock run.
        workflow.logger.warning("could not release the lock of game %s: %s", game_id, err)
