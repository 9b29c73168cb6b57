"""Inputs and outputs of the Docker activities, shared by the job workflows and `activities.docker`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

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


class PullProgress(BaseModel):
    """How far the pull of an engine image got: the second heartbeat detail of `ensure_engine_running`
    while and after it pulls (the first is the container id, "" until one is made).

    Layers count once Docker reports them ("Pulling fs layer", "Waiting", "Already exists"); a layer is
    done when pulled or already present. Bytes are the downloads Docker reported sizes for (None: none yet).
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    kind: Literal["pull"] = "pull"
    image: str
    layers_done: int = 0
    layers_total: int = 0
    bytes_done: int | None = None
    bytes_total: int | None = None
    done: bool = False

    def line(self) -> str:
        """One line for people: `pulling IMAGE: 2/5 layers, 12.0/40.5 MB`."""
        what = f"{'pulled' if self.done else 'pulling'} {self.image}: {self.layers_done}/{self.layers_total} layers"
        if self.bytes_total:
            what += f", {(self.bytes_done or 0) / 1e6:.1f}/{self.bytes_total / 1e6:.1f} MB"
        return what


def pull_progress_of(details: Sequence[Any]) -> PullProgress | None:
    """The pull progress in the heartbeat details of a pending `ensure_engine_running` (decoded
    payloads, as a describe of the job's workflow gives them), or None when it carries none.
    """
    if len(details) < 2 or not isinstance(details[1], dict) or details[1].get("kind") != "pull":
        return None
    try:
        return PullProgress.model_validate(details[1])
    except ValidationError:
        return None
