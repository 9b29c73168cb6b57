"""`RuntimeReconcile`: one Docker host's engines brought back in line with their games' engine records.

Run by the host's Schedule (RTJOBS_RECONCILE_EVERY) and by `rtjobs reconcile`. It surveys the host's
containers of ours against the records that name the host (only the games that disagree reach its
history), then, for each game that is off, holds the game's lock exactly as a job does, looks again
and acts: so it never races a job. Stopped containers are removed, an unrecorded running engine is
adopted, a record whose engine is gone is cleared (never restarted); conflicts are only reported.
The listing and the number of games acted on per run are bounded; the rest waits for the next run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError, TimeoutType

with workflow.unsafe.imports_passed_through():
    from contract.engine import DOCKER_UNAVAILABLE_TYPE
    from contract.hosts import (
        EngineChanged,
        HostRef,
        Placement,
        PlacementNote,
    )
    from contract.lock import (
        LockGrant,
        LockRelease,
        LockRequest,
    )
    from contract.reconcile import (
        ACTIONS_METRIC,
        GAME_CONTAINERS_ACTIVITY,
        MAX_GAMES_PER_RUN,
        NOT_RUNNING_STATES,
        PUBLISH_ENGINE_EVENT_ACTIVITY,
        RECONCILE_WORKFLOW,
        REMOVE_CONTAINER_ACTIVITY,
        RUNNING_STATE,
        SURVEY_ACTIVITY,
        Action,
        ContainerSeen,
        EngineEvent,
        EngineEventKind,
        Finding,
        FindingKind,
        GameContainers,
        GameSeen,
        HostSurvey,
        ReconcileRequest,
        ReconcileSummary,
        RemoveContainer,
        SurveyRequest,
    )
    from workflows.awaiting import shielded
    from workflows.engine_changed import tell_host
    from workflows.lock_holder import LockHolder, release_lock

# A host's Docker step: a few quick attempts (a run every few minutes is the real retry); a host with no
# live worker is reported after RTJOBS_HOST_WAIT_S (the schedule-to-start timeout).
DOCKER_STEP_TIMEOUT = timedelta(seconds=60)
DOCKER_STEP_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=4), maximum_attempts=3
)
RECORDS_TIMEOUT = timedelta(seconds=120)
# The survey: the Docker listing and the records' queries (thousands on a big host), heartbeating.
SURVEY_TIMEOUT = DOCKER_STEP_TIMEOUT + RECORDS_TIMEOUT
SURVEY_HEARTBEAT = timedelta(seconds=30)
EVENT_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=5)
RECORDS_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=3)


@dataclass
class Plan:
    """What is off with one game on the host and what to do; `after`: what the game's record becomes
    (None: left as it is).
    """

    findings: list[Finding] = field(default_factory=list)
    after: PlacementNote | None = None

    @property
    def acts(self) -> bool:
        return any(f.actions for f in self.findings)


def plan(
    game_id: str,
    containers: list[ContainerSeen],
    record: LockGrant,
    host: HostRef,
    now: datetime,
    request: ReconcileRequest,
) -> Plan:
    """The decision for one game, from its containers of ours on the host and its record (pure).

    `record` is the lock's engine record: its grant while the lock is held, or (before, and in a dry
    run) what the record listing found (`placement_known` False when none names this host).
    """
    placement = record.placement if record.placement_known else None
    record_here = placement is not None and placement.host.host_id == host.host_id
    record_elsewhere = placement is not None and not record_here
    recorded_id = placement.container_id if placement is not None and record_here else None
    result = Plan()
    adopted = False
    removed_recorded = False
    for c in sorted(containers, key=lambda c: c.container_id):
        is_recorded = record_here and recorded_id in (c.container_id, "")
        if c.state == RUNNING_STATE:
            if is_recorded:
                continue  # as the record says
            if record_elsewhere:
                assert placement is not None
                note = f"the record places the game on host {placement.host.name}: left for an operator"
                result.findings.append(_found(game_id, FindingKind.CONFLICT, c, note=note))
            elif request.remove_unknown:
                result.findings.append(_found(game_id, FindingKind.RUNNING_UNRECORDED, c, [Action.REMOVED_UNKNOWN]))
            elif not adopted:
                adopted = True
                result.findings.append(_found(game_id, FindingKind.RUNNING_UNRECORDED, c, [Action.ADOPTED]))
                result.after = PlacementNote(known=True, placement=Placement(host=host, container_id=c.container_id))
            else:
                note = "a second running engine of the game here: left for an operator"
                result.findings.append(_found(game_id, FindingKind.CONFLICT, c, note=note))
            continue
        kind = FindingKind.ENGINE_NOT_RUNNING if is_recorded else FindingKind.STOPPED_CONTAINER
        if c.state not in NOT_RUNNING_STATES:
            result.findings.append(_found(game_id, FindingKind.OTHER_STATE, c, note="someone is at work on it: left"))
            continue
        idle_s = (now - c.since).total_seconds()
        if idle_s < request.grace_s:
            note = f"{c.state} {idle_s:.0f} s ago, within the grace period ({request.grace_s:g} s)"
            result.findings.append(_found(game_id, kind, c, note=note))
            continue
        actions = [Action.REMOVED]
        if is_recorded:
            removed_recorded = True
            actions.append(Action.CLEARED)
        result.findings.append(_found(game_id, kind, c, actions, note=f"{c.state} {idle_s:.0f} s ago"))
    present = {c.container_id for c in containers}
    if record_here and not adopted:
        if removed_recorded:
            result.after = PlacementNote(known=False)
        elif recorded_id not in present and not (recorded_id == "" and containers):
            note = f"container {recorded_id[:12]} is not on the host" if recorded_id else "no container of ours here"
            finding = Finding(
                game_id=game_id, kind=FindingKind.ENGINE_GONE, container_id=recorded_id or "", actions=[Action.CLEARED]
            )
            result.findings.append(finding.model_copy(update={"note": note}))
            result.after = PlacementNote(known=False)
    return result


def _found(
    game_id: str, kind: FindingKind, c: ContainerSeen, actions: list[Action] | None = None, note: str = ""
) -> Finding:
    return Finding(
        game_id=game_id, kind=kind, container_id=c.container_id, state=c.state, actions=actions or [], note=note
    )


def engine_event(finding: Finding, host: HostRef, now: datetime) -> EngineEvent | None:
    """The Lobby's news of an engine it was told runs, found gone or not running (its record cleared),
    or of a running engine removed because nothing recorded it; None for everything else.
    """
    if not finding.done:
        return None
    if Action.REMOVED_UNKNOWN in finding.actions:
        kind: EngineEventKind = "engine_removed"
    elif Action.CLEARED in finding.actions:
        kind = "engine_lost"
    else:
        return None
    return EngineEvent(
        game_id=finding.game_id,
        event=kind,
        host=host.name,
        container_id=finding.container_id,
        state=finding.state or "gone",
        detail=f"{finding.kind}: {finding.note}" if finding.note else str(finding.kind),
        observed_at=now.isoformat(),
    )


def _removes(finding: Finding) -> bool:
    return bool({Action.REMOVED, Action.REMOVED_UNKNOWN} & set(finding.actions))


class HostUnreachable(Exception):
    """The host's Docker step failed for want of Docker or of a worker: nothing more is done there."""


@workflow.defn(name=RECONCILE_WORKFLOW)
class RuntimeReconcile(LockHolder):
    def __init__(self) -> None:
        super().__init__()
        self._summary: ReconcileSummary | None = None

    @workflow.query(name="summary")
    def summary(self) -> ReconcileSummary | None:
        return self._summary

    @workflow.run
    async def run(self, request: ReconcileRequest) -> ReconcileSummary:
        host = request.host
        summary = self._summary = ReconcileSummary(host=host, dry_run=request.dry_run)
        self._say(f"host {host.name}: listing the containers of ours and the records")
        try:
            games = await self._survey(request, summary)
        except (HostUnreachable, ActivityError) as err:
            return self._end_with_error(summary, err)
        now = workflow.now()
        to_act: list[str] = []
        for game in games:
            listed = LockGrant(
                granted=False,
                placement_known=game.recorded_id is not None,
                placement=Placement(host=host, container_id=game.recorded_id) if game.recorded_id is not None else None,
            )
            seen_plan = plan(game.game_id, game.containers, listed, host, now, request)
            if seen_plan.acts and not request.dry_run:
                to_act.append(game.game_id)
            else:
                summary.findings.extend(seen_plan.findings)
        summary.deferred = max(0, len(to_act) - MAX_GAMES_PER_RUN)
        for i, game_id in enumerate(to_act[:MAX_GAMES_PER_RUN]):
            self._say(f"host {host.name}: game {game_id} ({i + 1}/{len(to_act)}): waiting for its lock")
            try:
                summary.findings.extend(await self._reconcile_game(request, game_id))
            except HostUnreachable as err:
                return self._end_with_error(summary, err)
            except ActivityError as err:
                workflow.logger.warning("reconcile host %s: game %s not reconciled: %s", host.name, game_id, err.cause)
                note = f"not reconciled: {err.cause}"
                summary.findings.append(Finding(game_id=game_id, kind=FindingKind.FAILED, note=note))
        self._say(summary.headline())
        return summary

    async def _survey(self, request: ReconcileRequest, summary: ReconcileSummary) -> list[GameSeen]:
        """The games that are off, compared on the host (bounded: `contract.reconcile.survey`); where the
        listing starts among them when not all fit is drawn anew by each run.
        """
        survey = SurveyRequest(
            host=request.host, task_queue=workflow.info().task_queue, start=workflow.random().random()
        )
        found: HostSurvey = await self._on_host(
            request,
            SURVEY_ACTIVITY,
            survey,
            HostSurvey,
            "compare the containers of ours with the records",
            run_for=SURVEY_TIMEOUT,
            heartbeat=SURVEY_HEARTBEAT,
        )
        summary.containers, summary.records, summary.unlisted = found.containers, found.records, found.unlisted
        return found.off

    async def _reconcile_game(self, request: ReconcileRequest, game_id: str) -> list[Finding]:
        """Holding the game's lock: its containers looked at again, the plan made from what is there and
        what the record says now, then done; the release carries the record's new state.
        """
        record = await self._acquire(game_id)
        after: PlacementNote | None = None
        try:
            containers: list[ContainerSeen] = await self._on_host(
                request,
                GAME_CONTAINERS_ACTIVITY,
                GameContainers(game_id=game_id),
                list[ContainerSeen],
                f"the containers of game {game_id}",
            )
            decided = plan(game_id, containers, record, request.host, workflow.now(), request)
            findings = [await self._act(request, finding) for finding in decided.findings]
            after = decided.after
            for finding in findings:
                event = engine_event(finding, request.host, workflow.now())
                if event is not None:  # (under the lock: before any later job of the game reports)
                    await self._publish(event)
        finally:
            await shielded(self._release(game_id, after))
        removed = {f.container_id for f in findings if f.done and _removes(f)}
        if any(f.done and Action.ADOPTED in f.actions for f in findings):
            await tell_host(EngineChanged(game_id=game_id, host_id=request.host.host_id, present=True))
        elif removed and all(c.container_id in removed for c in containers):
            await tell_host(EngineChanged(game_id=game_id, host_id=request.host.host_id, present=False))
        return findings

    async def _publish(self, event: EngineEvent) -> None:
        """Bounded, unlike a job's result: the game's lock is held meanwhile. A lost event is logged."""
        try:
            await workflow.execute_activity(
                PUBLISH_ENGINE_EVENT_ACTIVITY,
                event,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=EVENT_RETRY,
                result_type=str,
                summary=f"publish {event.event} of game {event.game_id}",
            )
        except ActivityError as err:
            workflow.logger.warning("%s of game %s not published: %s", event.event, event.game_id, err.cause)

    async def _act(self, request: ReconcileRequest, finding: Finding) -> Finding:
        host, game_id = request.host, finding.game_id
        if not finding.actions:
            return finding
        if _removes(finding):
            try:
                await self._on_host(
                    request,
                    REMOVE_CONTAINER_ACTIVITY,
                    RemoveContainer(game_id=game_id, container_id=finding.container_id),
                    bool,
                    f"remove container {finding.container_id[:12]} of game {game_id}",
                )
            except ActivityError as err:
                workflow.logger.warning("reconcile host %s: game %s: not removed: %s", host.name, game_id, err.cause)
                return finding.model_copy(update={"note": f"not removed: {err.cause}"})
        counter = workflow.metric_meter().create_counter(ACTIONS_METRIC, "reconcile actions done, by action")
        for action in finding.actions:
            counter.add(1, {"action": action.value})
        workflow.logger.warning(
            "reconcile host %s: game %s %s: %s %s",
            host.name,
            game_id,
            finding.kind,
            "+".join(finding.actions),
            finding.note,
            extra={"game_id": game_id, "host": host.name},
        )
        return finding.model_copy(update={"done": True})

    async def _on_host(
        self,
        request: ReconcileRequest,
        activity: str,
        arg: object,
        result_type: type,
        what: str,
        run_for: timedelta = DOCKER_STEP_TIMEOUT,
        heartbeat: timedelta | None = None,
    ) -> Any:
        """A Docker step on the host's own queue; a host that cannot do it ends the run's work there."""
        host = request.host
        try:
            return await workflow.execute_activity(
                activity,
                *([] if arg is None else [arg]),
                task_queue=host.queue,
                schedule_to_start_timeout=timedelta(seconds=request.host_wait_s),
                start_to_close_timeout=run_for,
                heartbeat_timeout=heartbeat,
                retry_policy=DOCKER_STEP_RETRY,
                result_type=result_type,
                summary=f"{what} on host {host.name}",
            )
        except ActivityError as err:
            cause = err.cause
            if isinstance(cause, TimeoutError) and cause.type == TimeoutType.SCHEDULE_TO_START:
                raise HostUnreachable(
                    f"no worker of host {host.name} took the Docker step within {request.host_wait_s:g} s"
                ) from err
            if isinstance(cause, ApplicationError) and cause.type == DOCKER_UNAVAILABLE_TYPE:
                raise HostUnreachable(f"the Docker engine of host {host.name} did not answer: {cause.message}") from err
            raise

    async def _acquire(self, game_id: str) -> LockGrant:
        """The game's lock, acquired exactly as a job acquires it (so the lock serialises us with its
        jobs), and its grant: the lock's engine record.
        """
        info = workflow.info()
        request = LockRequest(
            game_id=game_id,
            workflow_id=info.workflow_id,
            run_id=info.run_id,
            started_at=workflow.now(),
            first_run_id=info.first_execution_run_id,
        )
        await self.acquire_lock(request)
        return self._grant

    async def _release(self, game_id: str, after: PlacementNote | None) -> None:
        info = workflow.info()
        await release_lock(
            game_id, LockRelease(run_id=info.run_id, first_run_id=info.first_execution_run_id, after=after)
        )

    def _end_with_error(self, summary: ReconcileSummary, err: BaseException) -> ReconcileSummary:
        cause = err.cause if isinstance(err, ActivityError) and err.cause is not None else err
        summary.error = str(cause) or type(cause).__name__
        workflow.logger.warning("reconcile host %s stopped: %s", summary.host.name, summary.error)
        self._say(summary.headline())
        return summary

    def _say(self, text: str) -> None:
        workflow.set_current_details(text)
        workflow.logger.info(text)
