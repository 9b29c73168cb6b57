"""Names and messages of a game's lock (`workflows/lock.py`), shared by the lock, its holders
(`workflows/lock_holder.py`) and the client side (`activities/lock.py`); no I/O.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field

from contract.hosts import Placement, PlacementNote
from contract.models import is_valid_game_id

LOCK_WORKFLOW = "RuntimeGameLock"
HOLDER_RUNNING_ACTIVITY = "game_lock_holder_running"
GRANT_SIGNAL = "lock_granted"
RELEASE_SIGNAL = "release"
ACQUIRE_SIGNAL = "acquire"
# The acquire: update-with-start of the game's lock, answered at once with the grant (and the lock's
# engine record) when the game is idle; a busy game's job gets a grant signal. (Wire names predate
# the lock's vocabulary and stay.)
ACQUIRE_UPDATE = "take_turn"
ACQUIRE_ACTIVITY = "take_game_turn"
# A waiting job's re-ask: a query first (free: no update counts against the run's limits), an
# update-with-start only when the lock does not know the request (a run that is gone).
ACQUIRE_AGAIN_ACTIVITY = "take_game_turn_again"
GRANT_FOR_QUERY = "turn_for"

IDLE_EXIT = timedelta(minutes=5)
HOLDER_CHECK_EVERY = timedelta(minutes=10)
# A holder check that cannot get an answer (e.g. an API key without describe permission) gives up
# after this many attempts and leaves the lock with the holder, so the lock goes on watching for the
# release instead of blocking on the check.
HOLDER_CHECK_ATTEMPTS = 3
GRANTS_BEFORE_CONTINUE_AS_NEW = 1000
RECENT_RUNS_KEPT = 200
# A waiting job sends its request again this often: a lock run that was terminated (or lost the
# request) is then started anew with it, and the job is not stranded.
REQUEST_AGAIN_EVERY = timedelta(seconds=60)


def coordination_queue(task_queue: str) -> str:
    """The task queue of the fleet's coordinating workflows (the games' locks, the hosts' workflows).

    Polled by every worker, like the shared queue, but by a Worker of its own: a job's synchronous
    call to its game's lock (an update, which waits for that workflow's task) holds the job's
    workflow task meanwhile, and on one queue a burst of jobs could hold every workflow-task slot
    the locks need to answer them.
    """
    return f"{task_queue}-coordination"


def lock_workflow_id(game_id: str, task_queue: str) -> str:
    """One lock per game and worker fleet: a lock lives on its fleet's task queue, so a lock left idle on
    a queue no worker polls any more (after a rename) must not block the game's jobs elsewhere.

    A game id that breaks the rule (its job will report `invalid_request`) may be any string, up to
    megabytes: it is hashed, since Temporal limits workflow ids to 1,000 bytes.
    """
    key = game_id if is_valid_game_id(game_id) else "sha256-" + hashlib.sha256(game_id.encode()).hexdigest()
    return f"runtime-lock-{task_queue}-{key}"


class LockRequest(BaseModel):
    """A job run's request for its game's lock.

    `first_run_id` names the job across a `temporal workflow reset` (the reset run has a new run id,
    the same first run id), so that a reset holder keeps the lock and can release it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    game_id: str
    workflow_id: str
    run_id: str
    started_at: datetime
    first_run_id: str = ""


class LockRelease(BaseModel):
    """`after`: what the job learnt about the game's engine; None leaves the engine record as it was
    (and is all that releases of earlier versions carry).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: str
    first_run_id: str = ""
    after: PlacementNote | None = None


class LockGrant(BaseModel):
    """The lock's answer to a request (also the grant signal's payload and, `granted` aside, the
    `placement` query's): whether the lock is granted, and the lock's engine record.

    `placement_known` False: the lock knows of no engine: a new game, or (`placement_lost`) a record
    lost (the job asks every host). `placement_known` True with no `placement`: none anywhere.
    `host_wait_s`: filled in by the worker's acquire activity from its RTJOBS_HOST_WAIT_S (a workflow
    cannot read the environment).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    granted: bool
    placement_known: bool = False
    placement: Placement | None = None
    placement_lost: bool = False
    host_wait_s: float = 60.0
    # Whose grant this is: the game, and the holder's job (its first run id). A holder ignores a grant
    # naming another game or job (a late grant of an earlier request must never count for a later one).
    game_id: str = ""
    holder: str = ""


class HolderCheck(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    workflow_id: str
    run_id: str
    first_run_id: str = ""


class LockState(BaseModel):
    """Carried across continue-as-new."""

    model_config = ConfigDict(extra="forbid")

    game_id: str
    waiting: list[LockRequest] = Field(default_factory=list)
    recent_runs: list[str] = Field(default_factory=list)
    placement_known: bool = False
    placement: Placement | None = None
    placement_lost: bool = False
