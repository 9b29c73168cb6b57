"""The I/O of reconciliation (`workflows/reconcile.py`): the containers of ours on this worker's Docker
host, the locks' engine records that name the host, and the worker's Schedule of reconcile runs.

The survey runs on the host's own queue (its containers are visible only from its engine) and compares
containers and records there, so that only the games that are off reach the run's history. The record
listing on the shared queue serves runs begun before the survey existed.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta

from temporalio import activity
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.service import RPCError, RPCStatusCode

from activities.docker_gateway import DockerGateway, Inspect, permanent
from activities.engine_spec import is_ours, ours_filters
from activities.publish import ResultPublisher
from activities.redis_topology import RedisClient
from contract.hosts import HostRef
from contract.lock import LOCK_WORKFLOW, LockGrant, coordination_queue, lock_workflow_id
from contract.models import LABEL_GAME_ID, ErrorCode
from contract.reconcile import (
    GAME_CONTAINERS_ACTIVITY,
    PUBLISH_ENGINE_EVENT_ACTIVITY,
    RECONCILE_WORKFLOW,
    REMOVE_CONTAINER_ACTIVITY,
    RUNNING_STATE,
    SURVEY_ACTIVITY,
    ContainerSeen,
    EngineEvent,
    GameContainers,
    HostSurvey,
    ReconcileRequest,
    RecordSeen,
    RemoveContainer,
    SurveyRequest,
    schedule_id,
    survey,
)
from contract.settings import Settings
from workflows.search import RUNTIME_HOST

log = logging.getLogger("rtjobs.reconcile")

_CODE = ErrorCode.DOCKER_UNAVAILABLE
_FRACTION = re.compile(r"\.(\d+)")
# Docker's zero time: a container that never ran (or never stopped) has this as its FinishedAt.
_NEVER = datetime(1, 1, 1, tzinfo=UTC)


def docker_time(text: str) -> datetime | None:
    """Docker's RFC 3339 times carry nanoseconds, more than `datetime` parses: cut to microseconds."""
    if not text:
        return None
    cut = _FRACTION.sub(lambda m: "." + m.group(1)[:6], text.replace("Z", "+00:00"))
    try:
        when = datetime.fromisoformat(cut)
    except ValueError:
        return None
    return None if when <= _NEVER + timedelta(days=1) else when


def seen(info: Inspect) -> ContainerSeen | None:
    """A container of ours from its inspect data; None for one without the game label."""
    labels = (info.get("Config") or {}).get("Labels") or {}
    game_id = str(labels.get(LABEL_GAME_ID) or "")
    if not game_id or not is_ours(info, game_id):
        return None
    state = info.get("State") or {}
    return ContainerSeen(
        container_id=str(info["Id"]),
        game_id=game_id,
        state=str(state.get("Status") or ""),
        created_at=docker_time(str(info.get("Created") or "")) or datetime.now(UTC),
        finished_at=docker_time(str(state.get("FinishedAt") or "")),
    )


class ReconcileDockerActivities:
    """On the host's queue: what Docker holds of ours (compared with the records), and removal of what no
    one runs.
    """

    def __init__(self, gateway: DockerGateway, client: Client) -> None:
        self._gateway = gateway
        self._client = client

    @activity.defn(name=SURVEY_ACTIVITY)
    async def reconcile_survey(self, request: SurveyRequest) -> HostSurvey:
        """The games where the containers of ours here and the records naming the host disagree (the
        others are counted only): a bounded result however many games the host holds.
        """
        containers = await self._ours(ours_filters())
        records = await placement_records(self._client, request.host, request.task_queue)
        return survey(containers, records, request.start)

    @activity.defn(name=GAME_CONTAINERS_ACTIVITY)
    async def reconcile_game_containers(self, request: GameContainers) -> list[ContainerSeen]:
        """The game's containers of ours here, looked at again while the game's lock is held."""
        return await self._ours(ours_filters(f"{LABEL_GAME_ID}={request.game_id}"))

    async def _ours(self, filters: dict[str, list[str]]) -> list[ContainerSeen]:
        """Listed, then each one that does not run inspected for when it stopped (the list has no
        such time); a running one is taken from the list as it is.
        """
        listed = await self._gateway.call(
            "list engine containers", lambda: self._gateway.client.containers.list(all=True, filters=filters), _CODE
        )
        found: list[ContainerSeen] = []
        for container in listed:
            summary = container._container
            game_id = str((summary.get("Labels") or {}).get(LABEL_GAME_ID) or "")
            if not game_id:
                continue
            if summary.get("State") == RUNNING_STATE:
                created = datetime.fromtimestamp(int(summary.get("Created") or 0), UTC)
                found.append(
                    ContainerSeen(
                        container_id=str(summary["Id"]), game_id=game_id, state=RUNNING_STATE, created_at=created
                    )
                )
                continue
            activity.heartbeat()  # (the survey's heartbeat timeout: thousands of stopped containers take a while)
            info = await self._gateway.inspect(str(summary["Id"]), _CODE)
            container_seen = seen(info) if info is not None else None  # (None: removed meanwhile)
            if container_seen is not None:
                found.append(container_seen)
        return found

    @activity.defn(name=REMOVE_CONTAINER_ACTIVITY)
    async def reconcile_remove_container(self, request: RemoveContainer) -> bool:
        """Force-remove the container if it is still ours for the game; whether it was there."""
        info = await self._gateway.inspect(request.container_id, _CODE)
        if info is None:
            return False
        if not is_ours(info, request.game_id):
            raise permanent(
                ErrorCode.CONTAINER_CONFLICT,
                f"container {request.container_id[:12]} is not ours for game {request.game_id}: not removed",
            )
        await self._gateway.remove(request.container_id, _CODE)
        activity.logger.info(
            "reconcile removed container %s of game %s",
            request.container_id[:12],
            request.game_id,
            extra={"game_id": request.game_id},
        )
        return True


async def placement_records(client: Client, host: HostRef, task_queue: str) -> list[RecordSeen]:
    """The games of the fleet on `task_queue` whose lock's engine record places their engine on the host.

    Found by their `RuntimeHost` search attribute (the host's name), each confirmed by its own `placement`
    query: visibility lags, the workflow's answer does not. A game whose record a listing missed is still
    found through its container; only a record of an engine that is gone waits for the next run.
    """
    name = host.name.replace("\\", "\\\\").replace('"', '\\"')
    query = (
        f'WorkflowType="{LOCK_WORKFLOW}" AND {RUNTIME_HOST.name}="{name}" '
        f'AND TaskQueue="{coordination_queue(task_queue)}" AND ExecutionStatus="Running"'
    )
    prefix = lock_workflow_id("g", task_queue).removesuffix("g")  # without the game id
    records: list[RecordSeen] = []
    async for execution in client.list_workflows(query):
        handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
        try:
            record: LockGrant = await handle.query("placement", result_type=LockGrant)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                continue
            raise
        except Exception as err:  # a run that ended meanwhile answers with a query failure
            activity.logger.info("placement of %s not read: %s", execution.id, err)
            continue
        placement = record.placement
        if record.placement_known and placement is not None and placement.host.host_id == host.host_id:
            records.append(RecordSeen(game_id=execution.id.removeprefix(prefix), container_id=placement.container_id))
        activity.heartbeat()
    return records


class EngineEventPublisher:
    """On the shared queue: engine events to their own stream, through the results' publisher (the same
    once-only script, replication wait and trimming), keyed by the reconcile run and the game.
    """

    def __init__(self, redis: RedisClient, settings: Settings) -> None:
        self._stream = settings.engine_events_stream
        self._publisher = ResultPublisher(
            redis,
            stream=settings.engine_events_stream or "-",
            dedup_ttl_s=settings.publish_dedup_ttl_s,
            maxlen=settings.results_maxlen,
            min_replicas=settings.redis_min_replicas,
            wait_timeout_ms=settings.redis_wait_timeout_ms,
        )

    @activity.defn(name=PUBLISH_ENGINE_EVENT_ACTIVITY)
    async def publish_engine_event(self, event: EngineEvent) -> str:
        """The entry id; "" when RTJOBS_ENGINE_EVENTS_STREAM is empty (off)."""
        if not self._stream:
            return ""
        info = activity.info()
        key_run = f"{info.workflow_run_id}:{event.game_id}"  # one event per game and reconcile run
        entry_id = await self._publisher.publish_fields(event.stream_fields(), info.workflow_id or "", key_run)
        activity.logger.info(
            "%s of game %s on host %s published as %s", event.event, event.game_id, event.host, entry_id
        )
        return entry_id


def reconcile_request(settings: Settings, host: HostRef, *, dry_run: bool = False) -> ReconcileRequest:
    return ReconcileRequest(
        host=host,
        grace_s=settings.reconcile_grace_s,
        remove_unknown=settings.reconcile_remove_unknown,
        dry_run=dry_run,
        host_wait_s=settings.host_wait_s,
    )


async def ensure_reconcile_schedule(client: Client, settings: Settings, host: HostRef) -> None:
    """The host's Schedule of `RuntimeReconcile` runs, created or brought to this worker's settings.

    Every worker of a host calls this at start-up: the last one to start decides the interval and the
    settings of the runs. Overlap SKIP: a run still busy (a long job holding a game's lock) is never
    doubled. RTJOBS_RECONCILE_EVERY unset (empty) deletes the host's schedule.
    """
    sid = schedule_id(settings.task_queue, host.host_id)
    every = settings.reconcile_every
    if every is None:
        try:
            await client.get_schedule_handle(sid).delete()
            log.info("reconcile schedule %s deleted (RTJOBS_RECONCILE_EVERY is off)", sid)
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
        return
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(
            RECONCILE_WORKFLOW,
            reconcile_request(settings, host),
            id=sid,
            task_queue=settings.task_queue,
            static_summary=f"reconcile the engines of host {host.name} with their games' records",
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )
    try:
        await client.create_schedule(sid, schedule)
        how = "created"
    except ScheduleAlreadyRunningError:

        def updated(_: ScheduleUpdateInput) -> ScheduleUpdate:
            return ScheduleUpdate(schedule=schedule)

        await client.get_schedule_handle(sid).update(updated)
        how = "updated"
    log.info("reconcile schedule %s %s: every %s", sid, how, every)
