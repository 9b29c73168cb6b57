"""The fleet: Docker hosts, their task queues, and where a game's engine lives (no I/O).

A host is one Docker engine, identified by the id in its marker volume (`activities/hosts.py`), not by
the engine's `ID`, which cloned machines share. A host's Docker activities run on its own task queue
(`host_queue`), polled only by the workers on that engine; the workflows run on the fleet's shared
queues (docs/fleet.md).
"""

from __future__ import annotations

import re
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

# 1.0's one registry of the fleet (`workflows/hosts.py`): kept only so that its 1.0 histories replay.
HOST_REGISTRY_WORKFLOW = "RuntimeHostRegistry"
# From 1.1: one workflow per host (`workflows/host.py`), `runtime-host-{task_queue}-{host_id}`.
HOST_WORKFLOW = "RuntimeHost"
RESERVE_UPDATE = "reserve"
PROBE_QUERY = "probe"
VIEW_QUERY = "view"
HAS_GAMES_QUERY = "has_games"
# The memo of a host's workflow that names the host (what the fleet's listing reads).
HOST_NAME_MEMO = "host_name"
REPORT_SIGNAL = "report"
ENGINE_CHANGED_SIGNAL = "engine_changed"
PLACE_UPDATE = "place"
# Every placement a worker's jobs ask for at one moment, in one update (answered in the order given).
PLACE_BATCH_UPDATE = "place_batch"
DRAIN_UPDATE = "drain"
UNDRAIN_UPDATE = "undrain"
FORGET_UPDATE = "forget"
HOSTS_QUERY = "hosts"
LOCATE_QUERY = "locate"
PLACE_ACTIVITY = "place_game_engine"
# How long a host's workers have been silent, asked while a job's Docker step waits on its queue: a
# busy host (every slot taken, reporting) is waited for; a silent one, RTJOBS_HOST_WAIT_S, no longer.
HOST_LIVENESS_ACTIVITY = "host_liveness"
# Sent by `rtjobs host forget` to every game's lock whose engine record names the host.
FORGET_HOST_SIGNAL = "forget_host"

# A host is live while one of its workers reported within this many of its report intervals.
LIVE_REPORTS = 3
# The registry continues-as-new after this many events (reports arrive every few seconds per worker).
REGISTRY_EVENTS_BEFORE_CONTINUE_AS_NEW = 500
# A host's workflow continues-as-new after this many events: its history stays small (a report lists
# the host's games).
HOST_EVENTS_BEFORE_CONTINUE_AS_NEW = 200
# A host chosen for a new engine counts it from then on; the reservation ends when the host reports
# the engine, when the job says how its start ended, or after this long (a job that vanished).
RESERVATION_TTL_S = 15 * 60.0
# At most this many placements in one `place_batch` update (~200 bytes each, far below the payload limit).
PLACE_BATCH_MAX = 200

_QUEUE_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def registry_workflow_id(task_queue: str) -> str:
    """One registry per fleet (task queue): a fleet on another queue is another fleet."""
    return f"runtime-hosts-{task_queue}"


def host_workflow_id(task_queue: str, host_id: str) -> str:
    """One workflow per host of a fleet; its id holds the host id as the host's queue does."""
    return f"runtime-host-{task_queue}-{host_id}"


def host_queue(task_queue: str, host_id: str) -> str:
    """The task queue of one Docker engine's activities, derived from the fleet's queue and the
    host's stable id, so that every worker on that engine (and no other) polls it.
    """
    return f"{task_queue}@host-{_QUEUE_UNSAFE.sub('-', host_id).strip('-').lower()}"


class HostRef(BaseModel):
    """Enough to run a Docker step on a host and to name it to an operator."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host_id: str
    name: str
    queue: str


class HostLiveness(BaseModel):
    """What the registry knows of one host's workers now: `known` False once it was forgotten (or is
    not yet known to a registry run started afresh); `live` as `rtjobs hosts` says it (a report within
    LIVE_REPORTS of its intervals); `silent_s`: seconds since its last report.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    known: bool
    live: bool
    silent_s: float


class Placement(BaseModel):
    """Where a game's engine lives: its host and (when known) its container."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: HostRef
    container_id: str = ""


class PlacementNote(BaseModel):
    """What a job learnt about its game's engine, carried back to the game's lock.

    `known` False: the job cannot tell (a failed Docker step); the next job asks the registry.
    `known` True with `placement` None: the game has no engine anywhere (a stop removed it).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    known: bool
    placement: Placement | None = None


class HostReport(BaseModel):
    """A worker's periodic report for its host (signal-with-start of the registry)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: HostRef
    worker: str
    capacity: int = Field(ge=0)
    # Games with a container of ours on the host, in any state: the registry's inventory.
    games: list[str] = Field(default_factory=list)
    report_every_s: float = Field(gt=0)
    docker_version: str = ""
    network_driver: str = ""


class EngineChanged(BaseModel):
    """A job's word to the registry that it made or removed a game's engine on a host."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    game_id: str
    host_id: str
    present: bool


class PlaceRequest(BaseModel):
    """Find a game's engine in the fleet and, when `create` and there is none, choose a host for it.

    `absent_on`: hosts a job just found without the game's container (their inventory is corrected
    before the answer, so a stale report cannot send the job back there). `lost`: the game's lock
    lost track of its engine (a job that ended without saying what it did): the hosts are asked for
    it. Otherwise a game without an engine record has no engine, and a start only chooses a host.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    game_id: str
    create: bool
    job: str = ""
    absent_on: list[str] = Field(default_factory=list)
    lost: bool = False


class PlaceBatch(BaseModel):
    """Placements asked by one worker's jobs at about the same time, sent as one update: the server holds
    at most 10 updates of a workflow in flight (by default), so a thousand starts placed one update each
    would crowd each other out with refused calls.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests: list[PlaceRequest] = Field(min_length=1, max_length=PLACE_BATCH_MAX)


class PlaceAnswer(BaseModel):
    """`found`: hosts whose inventory (or a reservation) has the game; `chosen`: the host reserved for
    a new engine (only when `create` and nothing was found); `why`: why nothing was chosen;
    `live_hosts`: how many hosts could serve a job right now.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    found: list[HostRef] = Field(default_factory=list)
    chosen: HostRef | None = None
    why: str = ""
    live_hosts: int = 0


class PlaceBatchAnswer(BaseModel):
    """One answer per request of a `PlaceBatch`, in its order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    answers: list[PlaceAnswer]


class HostCommand(BaseModel):
    """`rtjobs host drain|undrain|forget HOST`: a host by name or id."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str


class HostView(BaseModel):
    """One line of `rtjobs hosts`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host_id: str
    name: str
    queue: str
    live: bool
    live_workers: list[str]
    engines: int
    reserved: int
    capacity: int
    draining: bool
    last_seen: datetime | None
    docker_version: str = ""
    network_driver: str = ""


class HostRecord(BaseModel):
    """The registry's memory of one host (carried across continue-as-new)."""

    model_config = ConfigDict(extra="forbid")

    host: HostRef
    capacity: int = 0
    games: list[str] = Field(default_factory=list)
    workers: dict[str, datetime] = Field(default_factory=dict)
    report_every_s: float = 10.0
    draining: bool = False
    docker_version: str = ""
    network_driver: str = ""


class Reservation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host_id: str
    at: datetime
    job: str = ""


class RegistryState(BaseModel):
    """The registry's input and what it carries across continue-as-new."""

    model_config = ConfigDict(extra="forbid")

    task_queue: str
    hosts: dict[str, HostRecord] = Field(default_factory=dict)
    reservations: dict[str, Reservation] = Field(default_factory=dict)


class HostState(BaseModel):
    """A host's workflow's input and what it carries across continue-as-new: one host's record and
    the engines reserved there for starts not reported yet (bounded by the host's capacity).
    """

    model_config = ConfigDict(extra="forbid")

    task_queue: str
    record: HostRecord | None = None
    reservations: dict[str, Reservation] = Field(default_factory=dict)


class HostProbe(BaseModel):
    """A host's load, as a placement samples it (a query: no history). `mine`: a reservation of this
    host is the asking job's own (its retry is answered with the same host).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: HostRef
    live: bool
    draining: bool
    load: int
    capacity: int
    mine: bool = False
    has_game: bool = False

    @property
    def open(self) -> bool:
        return self.live and not self.draining and self.load < self.capacity


class ReserveRequest(BaseModel):
    """A start's claim on a place for the game's new engine on one host."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    game_id: str
    job: str = ""


class ReserveBatch(BaseModel):
    """The reservations one worker's starts ask of one host at about the same time, in one update."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests: list[ReserveRequest] = Field(min_length=1, max_length=PLACE_BATCH_MAX)


class ReserveAnswer(BaseModel):
    """`reserved`: the place is the job's (or was already); `found`: the host's report has the game
    (the job must use it, never make a second one); otherwise `why` the host refused (full, draining,
    no live worker).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    reserved: bool = False
    found: bool = False
    why: str = ""


class ReserveBatchAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    answers: list[ReserveAnswer]
