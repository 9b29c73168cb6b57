"""`StartRuntimeJob` and `StopRuntimeJob`: validate, take the game's turn, run the Docker step, publish.

Every run with a non-empty game id ends with exactly one publish, whatever happened before it
(invalid input, Docker failure, cancellation, a bug): the publish is shielded from cancellation
and retried without limit; its idempotency key is this run, so retries never double it.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, TimeoutError
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    import pydantic

    from contract.engine import (
        DOCKER_UNAVAILABLE_TYPE,
        ENSURE_REMOVED_ACTIVITY,
        ENSURE_RUNNING_ACTIVITY,
        REMOVE_FAILED_START_ACTIVITY,
        EngineOutcome,
        EnsureEngineRemoved,
        EnsureEngineRunning,
        FailedStartRemoved,
        RemoveFailedStart,
    )
    from contract.lock import (
        ACQUIRE_ACTIVITY,
        GRANT_SIGNAL,
        JOB_PATCH_V2,
        RELEASE_SIGNAL,
        REQUEST_AGAIN_EVERY,
        LockRelease,
        LockRequest,
        lock_workflow_id,
    )
    from contract.models import (
        ErrorCode,
        JobKind,
        JobRequest,
        JobResult,
        JobStatus,
        PublishRequest,
        StartRuntimeJobInput,
        StopRuntimeJobInput,
        UnusableJobInput,
    )
    from contract.policies import (
        DOCKER_HEARTBEAT_TIMEOUT,
        DOCKER_RETRY_POLICY,
        ENSURE_REMOVED_START_TO_CLOSE,
        ENSURE_RUNNING_START_TO_CLOSE,
        PUBLISH_ACTIVITY,
        PUBLISH_RETRY_POLICY,
        PUBLISH_START_TO_CLOSE_TIMEOUT,
        REMOVE_FAILED_START_RETRY_POLICY,
        REMOVE_FAILED_START_SCHEDULE_TO_CLOSE,
        REMOVE_FAILED_START_START_TO_CLOSE,
    )
    from workflows.awaiting import holds_within, shielded
    from workflows.search import GAME_ID, JOB_KIND

LOCK_ACTIVITY_TIMEOUT = timedelta(seconds=15)  # > the largest RTJOBS_ORDER_SETTLE_S (5 s) + an RPC
LOCK_RETRY_POLICY = RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=5))
# A payload without a usable game id (or not JSON at all) fails the run at once, not its task forever.
FAILURE_TYPES = [UnusableJobInput, pydantic.ValidationError]
# Temporal limits a search attribute value to 2,048 bytes as the server measures it: the JSON text,
# with every non-ASCII character escaped (`\uXXXX`, 12 bytes for one outside the BMP).
SEARCH_VALUE_MAX_BYTES = 1024


class _RuntimeJob:
    """What both jobs share; subclasses say how to validate their input and what the Docker step is."""

    kind: JobKind

    def __init__(self) -> None:
        self._status = JobStatus(step="received")
        self._granted = False
        self._game_id = ""
        self._engine_step_begun = False

    @workflow.signal(name=GRANT_SIGNAL)
    def lock_granted(self) -> None:
        self._granted = True

    @workflow.query(name="status")
    def status(self) -> JobStatus:
        return self._status

    async def _job(self, request: JobRequest | None) -> JobResult:
        if request is None:  # a `binary/null` payload (a nil from an SDK) skips decoding altogether
            JobRequest.model_validate(None)  # raises UnusableJobInput, the same one line as for JSON null
        assert request is not None
        game_id = self._game_id = request.game_id
        # False only while replaying a run begun by the first released shape (tests/histories/v1).
        current = workflow.patched(JOB_PATCH_V2)
        workflow.upsert_search_attributes(
            [GAME_ID.value_set(search_value(game_id)), JOB_KIND.value_set(self.kind.value)]
        )
        self._step(f"{self.kind} job for game {game_id}: waiting for the game's earlier jobs")
        cancelled = await self._take_turn(game_id, request_again=current)
        try:
            if cancelled:
                result = JobResult.failure(game_id, ErrorCode.CANCELLED, "cancelled before it started")
            else:
                result = await self._outcome(request)
            await self._publish(result)
            if current and self.kind is JobKind.START and self._engine_step_begun and result.outcome == "failure":
                await self._remove_failed_start(game_id, after_outage=result.error_code == ErrorCode.DOCKER_UNAVAILABLE)
        finally:
            # A cancellation now must neither cut the release short nor undo the result published.
            await shielded(self._release(game_id))
        self._step(f"{self.kind} job for game {game_id}: {result.outcome} {result.error_code}".rstrip())
        return result

    async def _outcome(self, request: JobRequest) -> JobResult:
        """The job's result; never raises, so that the publish always follows."""
        game_id = request.game_id
        try:
            return await self._docker_step(request)
        except asyncio.CancelledError:
            return JobResult.failure(game_id, ErrorCode.CANCELLED, "cancelled while it ran")
        except pydantic.ValidationError as err:
            return JobResult.failure(game_id, ErrorCode.INVALID_REQUEST, _validation_message(err))
        except ActivityError as err:
            code, message = _classify(err)
            self._status = self._status.model_copy(update={"last_error": f"{code}: {message}"})
            if code is ErrorCode.CANCELLED:
                return JobResult.failure(game_id, code, "cancelled while it ran")
            return JobResult.failure(game_id, code, message)
        except Exception as err:  # a bug must still produce a result for the Lobby
            workflow.logger.exception("unexpected error in %s job for %s", self.kind, game_id)
            return JobResult.failure(game_id, ErrorCode.INTERNAL_ERROR, f"{type(err).__name__}: {err}")

    async def _docker_step(self, request: JobRequest) -> JobResult:
        raise NotImplementedError

    async def _engine(self, activity: str, arg: Any, limit: timedelta, summary: str) -> EngineOutcome:
        self._step(summary)
        self._engine_step_begun = True
        outcome: EngineOutcome = await workflow.execute_activity(
            activity,
            arg,
            start_to_close_timeout=limit,
            heartbeat_timeout=DOCKER_HEARTBEAT_TIMEOUT,
            retry_policy=DOCKER_RETRY_POLICY,
            # On cancellation, wait until the activity has cleaned up what it made.
            cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            result_type=EngineOutcome,
            summary=summary,
        )
        return outcome

    async def _take_turn(self, game_id: str, *, request_again: bool) -> bool:
        """Wait for the game's turn; returns whether the job was cancelled meanwhile.

        A cancelled job still waits for its turn, so that its `cancelled` result keeps its place in
        the game's order on the stream.
        """
        info = workflow.info()
        request = LockRequest(
            game_id=game_id,
            workflow_id=info.workflow_id,
            run_id=info.run_id,
            started_at=info.workflow_start_time,
            first_run_id=info.first_execution_run_id,
        )

        async def ask() -> None:
            # A local activity: one signal-with-start RPC from this worker, without the round trips of
            # scheduling an activity task; a retry after a crash re-sends it and the lock dedupes.
            await workflow.execute_local_activity(
                ACQUIRE_ACTIVITY,
                request,
                start_to_close_timeout=LOCK_ACTIVITY_TIMEOUT,
                retry_policy=LOCK_RETRY_POLICY,
                summary=f"queue for game {game_id}",
            )

        async def turn() -> None:
            await ask()
            if not request_again:  # the first released shape (replay of its histories)
                await workflow.wait_condition(lambda: self._granted)
                return
            # Asking again is harmless (the lock dedupes) and revives a lock run that is gone.
            while not await holds_within(lambda: self._granted, REQUEST_AGAIN_EVERY):
                await ask()

        cancelled = False

        def note_cancel() -> None:
            nonlocal cancelled
            cancelled = True
            self._step(f"{self.kind} job for game {game_id}: cancelled, waiting for its turn to report")

        await shielded(turn(), note_cancel)
        return cancelled

    async def _publish(self, result: JobResult) -> None:
        self._step(f"{self.kind} job for game {result.game_id}: publishing {result.outcome}")
        self._status = self._status.model_copy(update={"result": result})
        publish = workflow.execute_activity(
            PUBLISH_ACTIVITY,
            PublishRequest.of(result, first_run_id=workflow.info().first_execution_run_id),
            start_to_close_timeout=PUBLISH_START_TO_CLOSE_TIMEOUT,
            retry_policy=PUBLISH_RETRY_POLICY,
            result_type=str,
            summary=f"publish {result.outcome} {result.error_code} for game {result.game_id}".rstrip(),
        )
        entry_id = await shielded(publish)  # a cancellation arriving now must not stop the publish
        self._status = self._status.model_copy(update={"entry_id": entry_id})

    async def _remove_failed_start(self, game_id: str, *, after_outage: bool) -> None:
        """Compensation: remove whatever this run's failed start left, before the game's next job runs.

        The start activity removes its container itself when it can; this covers a Docker engine that
        came back only after the start's retry budget, and a cancellation in the middle of a create.
        """
        summary = f"remove what the failed start left for game {game_id}"
        self._step(f"start job for game {game_id}: {summary}")
        try:
            removed = await shielded(
                workflow.execute_activity(
                    REMOVE_FAILED_START_ACTIVITY,
                    RemoveFailedStart(game_id=game_id, after_outage=after_outage),
                    start_to_close_timeout=REMOVE_FAILED_START_START_TO_CLOSE,
                    schedule_to_close_timeout=REMOVE_FAILED_START_SCHEDULE_TO_CLOSE,
                    retry_policy=REMOVE_FAILED_START_RETRY_POLICY,
                    result_type=FailedStartRemoved,
                    summary=summary,
                )
            )
        except ActivityError as err:
            workflow.logger.warning("could not remove what the failed start of %s left: %s", game_id, err.cause)
            return
        if removed.removed:
            workflow.logger.info("removed %s left by the failed start of %s", removed.removed, game_id)

    async def _release(self, game_id: str) -> None:
        if not self._granted:
            return
        info = workflow.info()
        release = LockRelease(run_id=info.run_id, first_run_id=info.first_execution_run_id)
        try:
            await workflow.get_external_workflow_handle(lock_workflow_id(game_id, info.task_queue)).signal(
                RELEASE_SIGNAL, release
            )
        except ApplicationError as err:
            # The lock run is gone (terminated): there is nothing to release, and the result the job
            # already published stands. The next request starts a new lock run.
            workflow.logger.warning("could not release the turn of game %s: %s", game_id, err)

    def _step(self, step: str) -> None:
        self._status = self._status.model_copy(update={"step": step})
        workflow.set_current_details(step)
        workflow.logger.info(step, extra={"game_id": self._game_id, "job_kind": self.kind.value})


@workflow.defn(name="StartRuntimeJob", failure_exception_types=FAILURE_TYPES)
class StartRuntimeJob(_RuntimeJob):
    kind = JobKind.START

    @workflow.run
    async def run(self, request: JobRequest) -> JobResult:
        return await self._job(request)

    async def _docker_step(self, request: JobRequest) -> JobResult:
        job = StartRuntimeJobInput.model_validate(request.fields())
        outcome = await self._engine(
            ENSURE_RUNNING_ACTIVITY,
            EnsureEngineRunning(game_id=job.game_id, image=job.image),
            ENSURE_RUNNING_START_TO_CLOSE,
            f"start engine for game {job.game_id}" + (f" ({job.image})" if job.image else ""),
        )
        if outcome.replay:
            return JobResult.replay(job.game_id, outcome.container_id)
        return JobResult.fresh_success(job.game_id, outcome.container_id)


@workflow.defn(name="StopRuntimeJob", failure_exception_types=FAILURE_TYPES)
class StopRuntimeJob(_RuntimeJob):
    kind = JobKind.STOP

    @workflow.run
    async def run(self, request: JobRequest) -> JobResult:
        return await self._job(request)

    async def _docker_step(self, request: JobRequest) -> JobResult:
        job = StopRuntimeJobInput.model_validate(request.fields())
        outcome = await self._engine(
            ENSURE_REMOVED_ACTIVITY,
            EnsureEngineRemoved(game_id=job.game_id, stop_timeout_s=job.stop_timeout_s),
            ENSURE_REMOVED_START_TO_CLOSE,
            f"stop engine for game {job.game_id}",
        )
        if outcome.replay:
            return JobResult.replay(job.game_id)
        return JobResult.fresh_success(job.game_id, outcome.container_id)


def search_value(game_id: str) -> str:
    """The game id as a `GameId` value: whole when valid (at most 51 ASCII characters); an invalid one
    (its job reports invalid_request) cut to what the server accepts, counted as the server counts."""
    value = game_id[:SEARCH_VALUE_MAX_BYTES]
    while len(json.dumps(value)) > SEARCH_VALUE_MAX_BYTES:
        value = value[: len(value) * 3 // 4]
    return value


def _classify(err: ActivityError) -> tuple[ErrorCode, str]:
    """The contract's error code for a failed Docker activity, from the failure's direct cause."""
    cause = err.cause
    if isinstance(cause, ApplicationError):
        if cause.type == DOCKER_UNAVAILABLE_TYPE:
            return (
                ErrorCode.DOCKER_UNAVAILABLE,
                f"Docker engine did not answer within the retry budget: {cause}",
            )
        if cause.type in {code.value for code in ErrorCode}:
            return ErrorCode(cause.type), str(cause)
        return ErrorCode.INTERNAL_ERROR, f"{cause.type}: {cause}"
    if isinstance(cause, CancelledError):
        return ErrorCode.CANCELLED, "cancelled"
    if isinstance(cause, TimeoutError):
        return (
            ErrorCode.INTERNAL_ERROR,
            f"{err.activity_type} timed out ({cause.type.name if cause.type else 'timeout'}) on every attempt",
        )
    return ErrorCode.INTERNAL_ERROR, f"{err.activity_type} failed: {cause or err}"


def _validation_message(err: pydantic.ValidationError) -> str:
    """One line naming each bad field, e.g. `game_id: must be 1-51 characters ...; image: ...`."""
    parts = []
    for problem in err.errors():
        field = ".".join(str(p) for p in problem["loc"]) or "input"
        message = problem["msg"].removeprefix("Value error, ")
        parts.append(f"{field}: {message}")
    return "invalid request: " + "; ".join(parts)
