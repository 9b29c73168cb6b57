"""Reconciliation of one Docker host (`workflows/reconcile.py`): what it sees, what it finds, what it
does, and what it reports (no I/O).

The world drifts from what the jobs left (an engine OOM-killed, a container left by a cancellation or
started by hand, an engine record lost); `RuntimeReconcile` compares a host's containers of ours with
the games' engine records and repairs the difference, each game under its lock, never racing a job.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from contract.hosts import HostRef
from contract.metrics import RECONCILE_ACTIONS

RECONCILE_WORKFLOW = "RuntimeReconcile"
# On the host's own queue (its Docker engine, and the Temporal client for the records): the games that are off.
SURVEY_ACTIVITY = "reconcile_survey"
# On the host's own queue (its Docker engine):
GAME_CONTAINERS_ACTIVITY = "reconcile_game_containers"
REMOVE_CONTAINER_ACTIVITY = "reconcile_remove_container"
# On the shared queue (Redis): an engine that died (or was removed) outside any job, for the Lobby.
PUBLISH_ENGINE_EVENT_ACTIVITY = "publish_engine_event"

# The SDK metric (counter, label `action`): one per action done (never for a dry run).
ACTIONS_METRIC = RECONCILE_ACTIONS  # scraped as rtjobs_reconcile_actions_total

# Docker's container states (`State` of `GET /containers/json`) of a container that does not run and
# never will without someone starting it: these are removed after the grace period. `paused`,
# `restarting` and `removing` are someone's doing in progress and are reported, never touched.
NOT_RUNNING_STATES = frozenset({"created", "exited", "dead"})
RUNNING_STATE = "running"

# One run acts on at most this many games (each costs a few history events: the lock acquired, an
# inspect, a removal, the release); the rest is reported as deferred and found again by the next run.
MAX_GAMES_PER_RUN = 100

# The listing a run works from carries only the games where something is off (SURVEY_ACTIVITY compares the
# host's containers with the records), and of those at most MAX_GAMES_LISTED, in at most LISTING_BUDGET
# bytes of JSON: its payload (in the run's history, as is the summary made from it) stays below
# Temporal's 256 KiB warning and 2 MiB limit whatever the number of games. The games left out are counted
# (`unlisted`) and listed by a later run.
MAX_GAMES_LISTED = 500
LISTING_BUDGET = 128 * 1024


def schedule_id(task_queue: str, host_id: str) -> str:
    """One schedule per fleet (task queue) and host; its runs' workflow ids start with it too."""
    return f"runtime-reconcile-{task_queue}-{host_id}"


class ContainerSeen(BaseModel):
    """A container of ours on the host, as Docker lists (and, when not running, inspects) it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    container_id: str
    game_id: str
    state: str
    created_at: datetime
    # When it stopped running (State.FinishedAt); None while it never ran or still runs.
    finished_at: datetime | None = None

    @property
    def since(self) -> datetime:
        """Since when it has been in its state: a container that ran for a week and exited a second
        ago is a second old for the grace period, not a week.
        """
        if self.finished_at is not None and self.finished_at > self.created_at:
            return self.finished_at
        return self.created_at


class RecordSeen(BaseModel):
    """A game whose own workflow places its engine on the host (container id may be unknown: "")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    game_id: str
    container_id: str = ""


class SurveyRequest(BaseModel):
    """The host, the fleet's queue (its games' locks hold the engine records), and where in the games that
    are off the listing starts when not all fit (a fraction of their number, drawn by the run): a later run
    starts elsewhere, so games that are off for good but only reported never keep the others out.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: HostRef
    task_queue: str
    start: float = Field(default=0.0, ge=0, lt=1)


class GameSeen(BaseModel):
    """One game where something is off: its containers of ours on the host and its record's container id
    (None: no record names the host; "": one does, the container id unknown).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    game_id: str
    containers: list[ContainerSeen] = Field(default_factory=list)
    recorded_id: str | None = None


class HostSurvey(BaseModel):
    """What a run works from: the numbers of containers and records, the games that are off (by game id),
    and how many more are off than were listed (found again by a later run).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    containers: int = 0
    records: int = 0
    off: list[GameSeen] = Field(default_factory=list)
    unlisted: int = 0


def in_line(containers: list[ContainerSeen], recorded_id: str | None) -> bool:
    """Nothing off with the game, whatever the time and the settings: a record names the host, and each
    of its containers here runs and is the one the record names (or the record names none). The plan
    (`workflows.reconcile.plan`) finds nothing for exactly these games
    (tests/unit/contract/test_reconcile_survey.py).
    """
    return (
        recorded_id is not None
        and bool(containers)
        and all(c.state == RUNNING_STATE and recorded_id in (c.container_id, "") for c in containers)
    )


def survey(
    containers: list[ContainerSeen],
    records: list[RecordSeen],
    start: float = 0.0,
    max_games: int = MAX_GAMES_LISTED,
    budget: int = LISTING_BUDGET,
) -> HostSurvey:
    """The games that are off (a pure comparison), listed within `max_games` and `budget` bytes of JSON:
    from the game at `start` (a fraction of their number) on, round to the start again; a game whose row
    does not fit is counted, and the next ones still tried.
    """
    by_game: dict[str, list[ContainerSeen]] = {}
    for c in containers:
        by_game.setdefault(c.game_id, []).append(c)
    recorded = {r.game_id: r.container_id for r in records}
    off = [
        GameSeen(game_id=game_id, containers=by_game.get(game_id, []), recorded_id=recorded.get(game_id))
        for game_id in sorted(set(by_game) | set(recorded))
        if not in_line(by_game.get(game_id, []), recorded.get(game_id))
    ]
    first = int(start * len(off)) % len(off) if off else 0
    listed: list[GameSeen] = []
    used = 0
    for game in off[first:] + off[:first]:
        size = len(game.model_dump_json()) + 1  # (and its comma)
        if len(listed) < max_games and used + size <= budget:
            listed.append(game)
            used += size
    listed.sort(key=lambda g: g.game_id)
    return HostSurvey(containers=len(containers), records=len(records), off=listed, unlisted=len(off) - len(listed))


class GameContainers(BaseModel):
    """Every container of ours for one game on the host (normally one: its name is the game's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    game_id: str


class RemoveContainer(BaseModel):
    """Remove this container, only if it is still ours for this game (never a foreign one)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    game_id: str
    container_id: str


class ReconcileRequest(BaseModel):
    """One run for one host. The worker's settings come in the request (a workflow cannot read the
    environment): the schedule carries those of the worker that last created or updated it, a CLI run
    those of the CLI's environment.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: HostRef
    grace_s: float = Field(default=300.0, ge=0)
    remove_unknown: bool = False
    dry_run: bool = False
    # How long a Docker step waits for a worker of the host (RTJOBS_HOST_WAIT_S).
    host_wait_s: float = Field(default=60.0, gt=0)


class FindingKind(StrEnum):
    # A container of ours that does not run, no record pointing at it.
    STOPPED_CONTAINER = "stopped_container"
    # The record's engine is here but does not run (OOM-killed, exited, never started).
    ENGINE_NOT_RUNNING = "engine_not_running"
    # The record names this host, and no container of ours for the game is here.
    ENGINE_GONE = "engine_gone"
    # A running engine of ours the game's record does not name (lost, never written, another id).
    RUNNING_UNRECORDED = "running_unrecorded"
    # A running engine here while the record names another host: left for an operator.
    CONFLICT = "conflict"
    # Paused, restarting, being removed: someone is at work; left alone.
    OTHER_STATE = "other_state"
    # A Docker step for the game failed (not for want of Docker): tried again by the next run.
    FAILED = "failed"


class Action(StrEnum):
    REMOVED = "removed"  # a container that did not run, removed
    ADOPTED = "adopted"  # a running engine written into its game's record
    REMOVED_UNKNOWN = "removed_unknown"  # a running engine without record, removed (REMOVE_UNKNOWN)
    CLEARED = "cleared"  # a record whose engine is gone or did not run, cleared


class Finding(BaseModel):
    """One game found off, what was (or, in a dry run, would be) done, and why when nothing was."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    game_id: str
    kind: FindingKind
    container_id: str = ""
    state: str = ""
    actions: list[Action] = Field(default_factory=list)
    done: bool = False
    note: str = ""

    def line(self) -> str:
        what = "+".join(self.actions) or "left"
        if self.actions and not self.done:
            what = f"would be {what}"
        container = f" container {self.container_id[:12]}" if self.container_id else ""
        state = f" ({self.state})" if self.state else ""
        note = f": {self.note}" if self.note else ""
        return f"{what:<18} game {self.game_id} {self.kind}{container}{state}{note}"


class ReconcileSummary(BaseModel):
    """The run's result: what the host held, what was off, what was done; `error` when the host could
    not be reconciled (its Docker engine did not answer, no worker serves it): nothing was changed
    there after that point.
    """

    model_config = ConfigDict(extra="forbid")

    host: HostRef
    dry_run: bool = False
    containers: int = 0
    records: int = 0
    findings: list[Finding] = Field(default_factory=list)
    deferred: int = 0
    # Games off beyond what a run lists (MAX_GAMES_LISTED, LISTING_BUDGET): neither planned nor reported.
    unlisted: int = 0
    error: str = ""

    def done_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for finding in self.findings:
            if finding.done:
                for action in finding.actions:
                    counts[action] = counts.get(action, 0) + 1
        return counts

    def headline(self) -> str:
        done = ", ".join(f"{n} {a}" for a, n in sorted(self.done_counts().items())) or "nothing"
        verb = "would do" if self.dry_run else "done"
        line = (
            f"host {self.host.name}: {self.containers} containers of ours, {self.records} records; "
            f"{len(self.findings)} found; {verb}: "
        )
        if self.dry_run:
            planned = sum(len(f.actions) for f in self.findings)
            line += f"{planned} actions" if planned else "nothing"
        else:
            line += done
        if self.deferred:
            line += f"; {self.deferred} deferred to the next run"
        if self.unlisted:
            line += f"; {self.unlisted} more games off, not listed (a later run lists them)"
        if self.error:
            line += f"; ERROR: {self.error}"
        return line


EngineEventKind = Literal["engine_lost", "engine_removed"]


class EngineEvent(BaseModel):
    """An entry of the engine-event stream (RTJOBS_ENGINE_EVENTS_STREAM, default `runtime:engine_events`):
    a game's engine that the Lobby was told runs (a job's success) and that reconciliation found gone or
    not running (`engine_lost`: its record cleared), or removed because no record named it
    (`engine_removed`, only with RTJOBS_RECONCILE_REMOVE_UNKNOWN). Not `runtime:job_results`, whose
    contract is one entry per job run: these come from no job. Flat string fields, as the results.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    game_id: str = Field(pattern=r"\S")
    event: EngineEventKind
    host: str
    container_id: str
    # What reconciliation found: `gone` (no container), or Docker's state (`exited`, `created`, `dead`,
    # `running` for a removed unknown engine).
    state: str
    detail: str
    observed_at: str  # ISO 8601, UTC

    def stream_fields(self) -> dict[str, str]:
        return self.model_dump(mode="json")
