"""`StartRuntimeJob` and `StopRuntimeJob`: validate, acquire the game's lock, run the Docker step on the
game's host, publish, release.

The lock serialises a game's jobs and its grant carries the lock's engine record, which says on which
host the step runs (or that the placement activities must choose or find one). Every run with a
non-empty game id publishes exactly one result, whatever happened before (shielded, retried without
limit, idempotent per run), and a failed start removes what it may have left before it releases.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
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
    from contract.hosts import (
        ENGINE_CHANGED_SIGNAL,
        HOST_LIVENESS_ACTIVITY,
        PLACE_ACTIVITY,
        EngineChanged,
        HostLiveness,
        HostRef,
        PlaceAnswer,
        Placement,
        PlacementNote,
        PlaceRequest,
    )
    from contract.lock import (
        RELEASE_SIGNAL,
        LockRelease,
        LockRequest,
        lock_workflow_id,
    )
    from contract.models import (
        ErrorCode,
        FollowUpSignal,
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
        REMOVE_FAILED_START_START_TO_CLOSE,
    )
    from workflows.awaiting import holds_within, shielded
    from workflows.engine_changed import host_of_change, tell_host
    from workflows.job_metrics import record_published
    from workflows.lock_holder import LOCK_ACTIVITY_TIMEOUT, LOCK_RETRY_POLICY, LockHolder, release_lock
    from workflows.search import GAME_ID, JOB_KIND, RUNTIME_HOST

T = TypeVar("T")

# A payload without a usable game id (or not JSON at all) fails the run at once, not its task forever.
FAILURE_TYPES = [UnusableJobInput, pydantic.ValidationError]
# A start or stop looks for the game's engine at most this many times when hosts turn out not to
# have it (a stale record, an engine moved by hand meanwhile).
WHERE_ROUNDS = 3
# While no host has a live worker, a start asks for a host again this often (up to RTJOBS_HOST_WAIT_S).
NO_HOST_RETRY_EVERY = timedelta(seconds=2)
# While a Docker step waits, the host's liveness is asked after this long, then at doubling intervals up
# to the cap (a clean-up waiting for a dead host: up to its own, longer cap; its history stays small).
HOST_CHECK_FIRST = timedelta(seconds=10)
HOST_CHECK_MAX = timedelta(seconds=60)
CLEAN_UP_CHECK_MAX = timedelta(minutes=10)
# Temporal limits a search attribute value to 2,048 bytes as the server measures it: the JSON text,
# with every non-ASCII character escaped (`\uXXXX`, 12 bytes for one outside the BMP).
SEARCH_VALUE_MAX_BYTES = 1024


class JobFailure(Exception):
    """A failure the job decided itself (not from an activity): reported with its code and message."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _RuntimeJob(LockHolder):
    """What both jobs share; subclasses say how to validate their input and what the Docker step is."""

    kind: JobKind

    def __init__(self) -> None:
        self._status = JobStatus(step="received")
        super().__init__()
        self._game_id = ""
        self._engine_step_begun = False
        # A cancellation arrived while the Docker step ran: the job reports `cancelled`, whatever the
        # step's own end (it may time out on a dead worker rather than acknowledge the cancellation).
        self._cancelled = False
        # The host of the Docker step, whether it was chosen for a new engine, and what the
        # job learnt about the engine (for the game's lock; None: nothing changed).
        self._host: HostRef | None = None
        self._new_placement = False
        self._after: PlacementNote | None = None
        # The publish activity released the lock: nothing is left to release.
        self._handed_over = False

    @workflow.query(name="status")
    def status(self) -> JobStatus:
        return self._status

    async def _job(self, request: JobRequest | None) -> JobResult:
        if request is None:  # a `binary/null` payload (a nil from an SDK) skips decoding altogether
            JobRequest.model_validate(None)  # raises UnusableJobInput, the same one line as for JSON null
        assert request is not None
        game_id = self._game_id = request.game_id
        workflow.upsert_search_attributes(
            [GAME_ID.value_set(search_value(game_id)), JOB_KIND.value_set(self.kind.value)]
        )
        refusal = _timeout_refusal()
        if refusal is not None:
            # Not after the game's earlier jobs: the timeout may run out meanwhile. Nothing was done.
            result = JobResult.failure(game_id, ErrorCode.INVALID_REQUEST, refusal)
            await self._publish(result)
            self._step(f"{self.kind} job for game {game_id}: {result.outcome} {result.error_code}")
            return result
        self._step(f"{self.kind} job for game {game_id}: waiting for the game's earlier jobs")
        cancelled = await self._wait_for_lock(game_id)
        try:
            if cancelled:
                result = JobResult.failure(game_id, ErrorCode.CANCELLED, "cancelled before it started")
            else:
                result = await self._outcome(request)
            failed_start = self.kind is JobKind.START and result.outcome == "failure"
            clean_up = failed_start and self._engine_step_begun
            # Nothing to do between the publish and the release: the publish activity releases the lock
            # itself, right after the entry is appended (one workflow task and one signal round trip less).
            hand_over = not clean_up
            await self._publish(result, then_signal=self._hand_over(game_id, result) if hand_over else None)
            self._handed_over = hand_over
            if clean_up:
                await self._remove_failed_start(game_id, after_outage=result.error_code == ErrorCode.DOCKER_UNAVAILABLE)
                await shielded(self._tell_host(game_id, result))
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
        except JobFailure as err:
            if self._cancelled:
                return JobResult.failure(game_id, ErrorCode.CANCELLED, "cancelled while it ran")
            self._status = self._status.model_copy(update={"last_error": f"{err.code}: {err.message}"})
            return JobResult.failure(game_id, err.code, err.message)
        except ActivityError as err:
            code, message = _classify(err, self._host)
            self._status = self._status.model_copy(update={"last_error": f"{code}: {message}"})
            if code is ErrorCode.CANCELLED or self._cancelled:
                return JobResult.failure(game_id, ErrorCode.CANCELLED, "cancelled while it ran")
            return JobResult.failure(game_id, code, message)
        except Exception as err:  # a bug must still produce a result for the Lobby
            workflow.logger.exception("unexpected error in %s job for %s", self.kind, game_id)
            return JobResult.failure(game_id, ErrorCode.INTERNAL_ERROR, f"{type(err).__name__}: {err}")

    async def _docker_step(self, request: JobRequest) -> JobResult:
        raise NotImplementedError

    async def _engine(self, activity: str, arg: Any, limit: timedelta, summary: str, host: HostRef) -> EngineOutcome:
        """The Docker step on `host`'s own task queue, waited for while the host's workers report."""
        summary = f"{summary} on host {host.name}"
        self._host = host
        # The UI (and `temporal workflow list --query 'RuntimeHost="..."'`) shows where it ran.
        workflow.upsert_search_attributes([RUNTIME_HOST.value_set(host.name)])
        if self._after is None:
            self._after = PlacementNote(known=False)  # until the step says otherwise
        self._step(summary)
        self._engine_step_begun = True
        step = workflow.start_activity(
            activity,
            arg,
            task_queue=host.queue,
            start_to_close_timeout=limit,
            heartbeat_timeout=DOCKER_HEARTBEAT_TIMEOUT,
            retry_policy=DOCKER_RETRY_POLICY,
            # On cancellation, wait until the activity has cleaned up what it made.
            cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            result_type=EngineOutcome,
            summary=summary,
        )

        def note_cancel() -> None:
            self._cancelled = True
            step.cancel()

        outcome: EngineOutcome = await shielded(self._while_host_lives(step, host, HOST_CHECK_MAX), note_cancel)
        return outcome

    async def _while_host_lives(
        self, step: workflow.ActivityHandle[T], host: HostRef, check_max: timedelta, *, give_up_silent: bool = True
    ) -> T:
        """The step's result, asking the host's liveness while it is not done: a busy host is waited
        for; one without a live worker for RTJOBS_HOST_WAIT_S (`give_up_silent`), or that was forgotten,
        has its step cancelled and fails with `docker_unavailable`. A step that finished meanwhile counts.
        """
        every = HOST_CHECK_FIRST
        wait_s = self.host_wait.total_seconds()
        began = workflow.time()
        unknown_since: float | None = None
        while not await holds_within(step.done, every):
            every = min(every * 2, check_max)
            alive = await self._liveness(host)
            now = workflow.time()
            unknown_since = None if alive.known else (unknown_since if unknown_since is not None else now)
            # No workflow of the host for RTJOBS_HOST_WAIT_S: forgotten (not one started afresh, which
            # hears from the host within its report interval).
            forgotten = unknown_since is not None and now - unknown_since >= wait_s
            # No live worker (none reported within its live window) and none for RTJOBS_HOST_WAIT_S, and the
            # step waited that long (a worker restarting comes back within it). A busy host reports on.
            silent = give_up_silent and not alive.live and alive.silent_s >= wait_s and now - began >= wait_s
            if not (forgotten or silent):
                continue
            step.cancel()
            try:
                return await step
            except ActivityError:
                pass
            if forgotten:
                raise JobFailure(
                    ErrorCode.DOCKER_UNAVAILABLE,
                    f"host {host.name} ({host.host_id}) was forgotten (`rtjobs host forget`) while the Docker step "
                    "waited for it",
                )
            raise JobFailure(ErrorCode.DOCKER_UNAVAILABLE, self._silent_host_message(host, alive.silent_s))
        return await step

    def _silent_host_message(self, host: HostRef, silent_s: float) -> str:
        heard = "never reported" if silent_s >= 1e8 else f"not reported for {silent_s:.0f} s"
        where = (
            "what this start may have left there is removed once it is back"
            if self.kind is JobKind.START
            else "the game's engine lives there"
        )
        return (
            f"the workers of host {host.name} ({host.host_id}) have {heard} (RTJOBS_HOST_WAIT_S "
            f"{self.host_wait.total_seconds():g}); the Docker step did not finish there and {where} "
            f"(`rtjobs hosts`; `rtjobs host forget {host.name}` if it is gone for good)"
        )

    async def _liveness(self, host: HostRef) -> HostLiveness:
        answer: HostLiveness = await workflow.execute_local_activity(
            HOST_LIVENESS_ACTIVITY,
            host,
            start_to_close_timeout=LOCK_ACTIVITY_TIMEOUT,
            retry_policy=LOCK_RETRY_POLICY,
            result_type=HostLiveness,
            summary=f"are the workers of host {host.name} alive?",
        )
        return answer

    async def _where(self, game_id: str, *, create: bool, absent_on: list[str]) -> HostRef | None:
        """The host of the game's engine, from the fleet; for a start without one, the host chosen
        for it. None: the game has no engine anywhere (only when not `create`).
        """
        waited = timedelta()
        while True:
            self._step(f"{self.kind} job for game {game_id}: finding the game's host")
            answer: PlaceAnswer = await workflow.execute_local_activity(
                PLACE_ACTIVITY,
                PlaceRequest(
                    game_id=game_id,
                    create=create,
                    job=workflow.info().workflow_id,
                    absent_on=absent_on,
                    lost=self._grant.placement_lost,
                ),
                start_to_close_timeout=LOCK_ACTIVITY_TIMEOUT,
                retry_policy=LOCK_RETRY_POLICY,
                result_type=PlaceAnswer,
                summary=f"find the host of game {game_id}",
            )
            if len(answer.found) > 1:
                names = " and ".join(f"{h.name} ({h.host_id})" for h in answer.found)
                raise JobFailure(
                    ErrorCode.CONTAINER_CONFLICT,
                    f"game {game_id} has containers on several hosts: {names}; none was touched",
                )
            if answer.found:
                return answer.found[0]
            if not create:
                return None
            if answer.chosen is not None:
                self._new_placement = True
                return answer.chosen
            if answer.live_hosts == 0 and waited < self.host_wait:
                # A rolling restart of the only host: wait for a worker to report, as a placed game does.
                await workflow.sleep(NO_HOST_RETRY_EVERY)
                waited += NO_HOST_RETRY_EVERY
                continue
            code = ErrorCode.DOCKER_UNAVAILABLE if answer.live_hosts == 0 else ErrorCode.CONTAINER_START_FAILED
            raise JobFailure(code, answer.why)

    def _recorded_host(self) -> HostRef | None:
        placement = self._grant.placement if self._grant.placement_known else None
        return placement.host if placement is not None else None

    def _engine_change(self, game_id: str, result: JobResult) -> EngineChanged | None:
        """What the host should count at once (a new engine; a reservation that came to nothing),
        without waiting for the host's next report; None: nothing it does not know.
        """
        host = self._host
        if host is None:
            return None
        present: bool | None = None
        if result.outcome == "success" and not result.error_code:
            present = self.kind is JobKind.START
        elif self._new_placement and self._after is not None and self._after.known:
            present = False  # a failed start on a new host, whose leftovers were removed
        if present is None:
            return None
        return EngineChanged(game_id=game_id, host_id=host.host_id, present=present)

    async def _tell_host(self, game_id: str, result: JobResult) -> None:
        change = self._engine_change(game_id, result)
        if change is not None:
            await tell_host(change)

    def _hand_over(self, game_id: str, result: JobResult) -> list[FollowUpSignal]:
        """The signals the job would send after its publish (the host's word, then the release), for
        the publish activity to send in this order once the entry is appended.
        """
        queue = workflow.info().task_queue
        signals = []
        change = self._engine_change(game_id, result)
        if change is not None:
            signals.append(
                FollowUpSignal(
                    workflow_id=host_of_change(change),
                    signal=ENGINE_CHANGED_SIGNAL,
                    arg=change.model_dump(mode="json"),
                )
            )
        signals.append(
            FollowUpSignal(
                workflow_id=lock_workflow_id(game_id, queue),
                signal=RELEASE_SIGNAL,
                arg=self._release_request().model_dump(mode="json"),
            )
        )
        return signals

    async def _wait_for_lock(self, game_id: str) -> bool:
        """Wait until the game's lock is granted; returns whether the job was cancelled meanwhile.

        A cancelled job still waits for the lock, so that its `cancelled` result keeps its place in
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
        cancelled = False

        def note_cancel() -> None:
            nonlocal cancelled
            cancelled = True
            self._step(f"{self.kind} job for game {game_id}: cancelled, waiting for the game's lock to report")

        await shielded(self.acquire_lock(request), note_cancel)
        return cancelled

    async def _publish(self, result: JobResult, *, then_signal: list[FollowUpSignal] | None = None) -> None:
        self._step(f"{self.kind} job for game {result.game_id}: publishing {result.outcome}")
        self._status = self._status.model_copy(update={"result": result})
        summary = f"publish {result.outcome} {result.error_code} for game {result.game_id}".rstrip()
        publish = workflow.execute_activity(
            PUBLISH_ACTIVITY,
            PublishRequest.of(result, first_run_id=workflow.info().first_execution_run_id, then_signal=then_signal),
            start_to_close_timeout=PUBLISH_START_TO_CLOSE_TIMEOUT,
            retry_policy=PUBLISH_RETRY_POLICY,
            result_type=str,
            summary=summary + (", then release the game's lock" if then_signal else ""),
        )
        entry_id = await shielded(publish)  # a cancellation arriving now must not stop the publish
        self._status = self._status.model_copy(update={"entry_id": entry_id})
        record_published(self.kind, result)

    async def _remove_failed_start(self, game_id: str, *, after_outage: bool) -> None:
        """Compensation: remove whatever this run's failed start left, before the game's next job runs.

        The start activity removes its container itself when it can; this covers a Docker engine that
        came back only after the start's retry budget, a worker killed mid-start, a host silent for
        RTJOBS_HOST_WAIT_S and a cancellation in the middle of a create. It waits for the host as long
        as it takes (retried without limit, the lock held), until it ran there or the host is forgotten.
        """
        host = self._host
        assert host is not None
        summary = f"remove what the failed start left for game {game_id} on host {host.name}"
        self._step(f"start job for game {game_id}: {summary}")
        step = workflow.start_activity(
            REMOVE_FAILED_START_ACTIVITY,
            RemoveFailedStart(game_id=game_id, after_outage=after_outage),
            task_queue=host.queue,
            start_to_close_timeout=REMOVE_FAILED_START_START_TO_CLOSE,
            retry_policy=REMOVE_FAILED_START_RETRY_POLICY,
            result_type=FailedStartRemoved,
            summary=summary,
        )
        try:
            removed = await shielded(self._while_host_lives(step, host, CLEAN_UP_CHECK_MAX, give_up_silent=False))
        except (JobFailure, ActivityError) as err:
            # Forgotten: the host is gone for good, and what was on it with it.
            workflow.logger.warning("did not remove what the failed start of %s left: %s", game_id, err)
            return
        if removed.removed:
            workflow.logger.info("removed %s left by the failed start of %s", removed.removed, game_id)
        if self._new_placement:
            # The engine was to be new on this host and nothing of it is left: the game has none.
            self._after = PlacementNote(known=True)

    async def _release(self, game_id: str) -> None:
        if not self._granted or self._handed_over:
            return
        # (A lock run that is gone has nothing to release; the result the job published stands.)
        await release_lock(game_id, self._release_request())

    def _release_request(self) -> LockRelease:
        info = workflow.info()
        return LockRelease(run_id=info.run_id, first_run_id=info.first_execution_run_id, after=self._after)

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
        summary = f"start engine for game {job.game_id}" + (f" ({job.image})" if job.image else "")
        outcome = await self._on_the_games_host(job.game_id, job.image, summary)
        if outcome.replay:
            return JobResult.replay(job.game_id, outcome.container_id)
        return JobResult.fresh_success(job.game_id, outcome.container_id)

    async def _on_the_games_host(self, game_id: str, image: str | None, summary: str) -> EngineOutcome:
        """On the host the game's engine lives on (replay, or a stopped one made anew there); without
        one anywhere, on the host chosen for it. A host found without the container (a stale
        record) sends the job back to the fleet, told so: a game never gets a second engine.
        """
        host = self._recorded_host()
        absent_on: list[str] = []
        for _ in range(WHERE_ROUNDS):
            if host is None:
                host = await self._where(game_id, create=True, absent_on=absent_on)
                assert host is not None
            outcome = await self._engine(
                ENSURE_RUNNING_ACTIVITY,
                EnsureEngineRunning(game_id=game_id, image=image, create=self._new_placement),
                ENSURE_RUNNING_START_TO_CLOSE,
                summary,
                host,
            )
            if not outcome.absent:
                self._after = PlacementNote(
                    known=True, placement=Placement(host=host, container_id=outcome.container_id)
                )
                return outcome
            absent_on.append(host.host_id)
            host = None
        raise _kept_moving(game_id)


@workflow.defn(name="StopRuntimeJob", failure_exception_types=FAILURE_TYPES)
class StopRuntimeJob(_RuntimeJob):
    kind = JobKind.STOP

    @workflow.run
    async def run(self, request: JobRequest) -> JobResult:
        return await self._job(request)

    async def _docker_step(self, request: JobRequest) -> JobResult:
        job = StopRuntimeJobInput.model_validate(request.fields())
        remove = EnsureEngineRemoved(game_id=job.game_id, stop_timeout_s=job.stop_timeout_s)
        summary = f"stop engine for game {job.game_id}"
        if self._grant.placement_known and self._grant.placement is None:
            # The game's lock saw its engine removed and nothing made since: nothing to stop.
            self._after = PlacementNote(known=True)
            return JobResult.replay(job.game_id)
        host = self._recorded_host()
        absent_on: list[str] = []
        for _ in range(WHERE_ROUNDS):
            if host is None:
                host = await self._where(job.game_id, create=False, absent_on=absent_on)
                if host is None:
                    self._after = PlacementNote(known=True)
                    return JobResult.replay(job.game_id)
            outcome = await self._engine(ENSURE_REMOVED_ACTIVITY, remove, ENSURE_REMOVED_START_TO_CLOSE, summary, host)
            if not outcome.replay:
                self._after = PlacementNote(known=True)
                return JobResult.fresh_success(job.game_id, outcome.container_id)
            # Nothing on that host: the record was stale; another host may have it.
            absent_on.append(host.host_id)
            host = None
        raise _kept_moving(job.game_id)


def search_value(game_id: str) -> str:
    """The game id as a `GameId` value: whole when valid (at most 51 ASCII characters); an invalid one
    (its job reports invalid_request) cut to what the server accepts, counted as the server counts.
    """
    value = game_id[:SEARCH_VALUE_MAX_BYTES]
    while len(json.dumps(value)) > SEARCH_VALUE_MAX_BYTES:
        value = value[: len(value) * 3 // 4]
    return value


def _kept_moving(game_id: str) -> JobFailure:
    return JobFailure(
        ErrorCode.INTERNAL_ERROR, f"the engine of game {game_id} was not where the fleet said, {WHERE_ROUNDS} times"
    )


def _timeout_refusal() -> str | None:
    """Why a run started with a workflow run or execution timeout is refused (None: it was not)."""
    info = workflow.info()
    limits = [
        (what, limit) for what, limit in (("execution", info.execution_timeout), ("run", info.run_timeout)) if limit
    ]
    if not limits:
        return None
    named = " and ".join(f"a workflow {what} timeout of {limit.total_seconds():g} s" for what, limit in limits)
    return (
        f"started with {named}: when it runs out Temporal ends the job without a result; start runtime jobs "
        "without a run or execution timeout (cancel a job to stop it)"
    )


def _classify(err: ActivityError, host: HostRef | None = None) -> tuple[ErrorCode, str]:
    """The contract's error code for a failed Docker activity, from the failure's direct cause."""
    cause = err.cause
    where = f" on host {host.name} ({host.host_id})" if host is not None else ""
    if isinstance(cause, ApplicationError):
        if cause.type == DOCKER_UNAVAILABLE_TYPE:
            return (
                ErrorCode.DOCKER_UNAVAILABLE,
                f"Docker engine{where} did not answer within the retry budget: {cause}",
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
