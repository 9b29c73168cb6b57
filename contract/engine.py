"""Inputs and outputs of the Docker activities, shared by the job workflows and `activities.docker`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

ENSURE_RUNNING_ACTIVITY = "ensure_engine_running"
ENSURE_REMOVED_ACTIVITY = "ensure_engine_removed"
# Compensation after a failed or cancelled start: removes every container that this job run made
# (label `galaxy.job-run` = "{workflow_id}/{run_id}" of the calling run), whatever its state.
REMOVE_FAILED_START_ACTIVITY = "remove_failed_start"

# ApplicationError.type of a Docker engine that did not answer (retryable; the workflow reports
# `docker_unavailable` once the retry budget is spent). Permanent failures carry the contract's
# error code (contract.models.ErrorCode value) as their type and are non-retryable.
DOCKER_UNAVAILABLE_TYPE = "DockerUnavailable"


class EnsureEngineRunning(BaseModel):
    """Input of `ensure_engine_running`; `image` None means the worker's RTJOBS_ENGINE_IMAGE.

    `create` False: the job expects the game's container on this host (its placement); when there is
    none at all, nothing is made and the outcome says `absent` (the job then asks the fleet).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    game_id: str
    image: str | None = None
    create: bool = True


class EnsureEngineRemoved(BaseModel):
    """Input of `ensure_engine_removed`; `stop_timeout_s` None means the worker's RTJOBS_STOP_TIMEOUT_S."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    game_id: str
    stop_timeout_s: int | None = None


class EngineOutcome(BaseModel):
    """What a Docker activity did: the container acted on, and whether it was an idempotent replay.

    A stop replay (no container) has an empty `container_id`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    container_id: str
    replay: bool
    absent: bool = False


class RemoveFailedStart(BaseModel):
    """Input of `remove_failed_start`: the game whose start failed. The job run is the calling
    workflow run (from the activity's info), the same value the start wrote into `galaxy.job-run`.

    `after_outage`: the start failed because Docker did not answer; a create it sent then may still be
    carried out once the daemon answers again, so the clean-up looks twice, a moment apart.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    game_id: str
    after_outage: bool = False


class FailedStartRemoved(BaseModel):
    """What `remove_failed_start` removed (ids; empty when the start left nothing behind)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    removed: list[str]
