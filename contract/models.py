"""The wire contract of runtime jobs (docs/results.md, api/*.schema.json) as pydantic models.

Workflows and activities both import this module, so it stays free of I/O and of anything
non-deterministic: it is safe inside the workflow sandbox.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

CONTAINER_PREFIX = "galaxy-game-"
ENGINE_PORT = 8080
LABEL_GAME_ID = "galaxy.game-id"
LABEL_MANAGED_BY = "galaxy.managed-by"
LABEL_JOB_RUN = "galaxy.job-run"  # `{workflow_id}/{run_id}` of the job that created the container
MANAGED_BY = "rtjobs"

# 1-51 chars of a-z, 0-9, '-', not starting or ending with '-': "galaxy-game-" + id stays a DNS label.
GAME_ID_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,49}[a-z0-9])?$"
_GAME_ID_RE = re.compile(GAME_ID_PATTERN)

# The Docker distribution reference grammar (name[:tag][@digest]) as the engine parses it. A first
# component is a registry host only if it has a '.' or a ':' or is `localhost`; everything else is
# a lowercase path component. Tags are ASCII; digests are the algorithms the engine accepts.
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_PORT = r"(?::[0-9]+)"
_DOMAIN = rf"(?:localhost{_PORT}?|{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})+{_PORT}?|{_DOMAIN_COMPONENT}{_PORT})"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"(?:sha256:[0-9a-f]{64}|sha384:[0-9a-f]{96}|sha512:[0-9a-f]{128})"
IMAGE_REF_PATTERN = (
    rf"^(?P<name>(?:(?P<domain>{_DOMAIN})/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    rf"(?::{_TAG})?(?:@{_DIGEST})?$"
)
_IMAGE_REF_RE = re.compile(IMAGE_REF_PATTERN)
MAX_IMAGE_NAME_LENGTH = 255  # of the normalized name, e.g. docker.io/library/busybox

MAX_STOP_TIMEOUT_S = 3600


class ErrorCode(StrEnum):
    """`error_code` values of the result stream (contract section 3), plus the replay marker."""

    REPLAY_NO_OP = "replay_no_op"
    INVALID_REQUEST = "invalid_request"
    IMAGE_PULL_FAILED = "image_pull_failed"
    CONTAINER_CONFLICT = "container_conflict"
    CONTAINER_START_FAILED = "container_start_failed"
    CONTAINER_EXITED = "container_exited"
    ENGINE_UNHEALTHY = "engine_unhealthy"
    CONTAINER_STOP_FAILED = "container_stop_failed"
    DOCKER_UNAVAILABLE = "docker_unavailable"
    CANCELLED = "cancelled"
    INTERNAL_ERROR = "internal_error"


class Outcome(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"


class JobKind(StrEnum):
    """Value of the `RuntimeJobKind` search attribute."""

    START = "start"
    STOP = "stop"


def container_name(game_id: str) -> str:
    return f"{CONTAINER_PREFIX}{game_id}"


def engine_endpoint(game_id: str) -> str:
    """The engine's address on the game network: the container name resolves there as a DNS name."""
    return f"http://{container_name(game_id)}:{ENGINE_PORT}"


def one_line(text: str, limit: int = 1000) -> str:
    """Operators read `error_message` in one line: fold newlines and bound the length."""
    folded = " | ".join(part.strip() for part in text.splitlines() if part.strip())
    return folded if len(folded) <= limit else folded[: limit - 1] + "…"


def is_valid_game_id(value: str) -> bool:
    return _GAME_ID_RE.fullmatch(value) is not None


def is_valid_image_ref(value: str) -> bool:
    """Whether the Docker engine would parse `value` as an image reference."""
    match = _IMAGE_REF_RE.fullmatch(value)
    if match is None:
        return False
    name = match["name"]
    if match["domain"] is None:
        name = f"docker.io/{name}" if "/" in name else f"docker.io/library/{name}"
    return len(name) <= MAX_IMAGE_NAME_LENGTH


def shown(value: str, limit: int = 80) -> str:
    r"""A bad value as an error message quotes it: at most `limit` characters of its repr (one astral
    character is ten, `\U000d391f`), so the message still has room to name every other bad field.
    """
    quoted = repr(value[:limit])
    return quoted if len(quoted) <= limit else quoted[: limit - 2] + "…" + quoted[-1]


def _check_game_id(value: str) -> str:
    if not is_valid_game_id(value):
        raise ValueError(
            f"must be 1-51 characters of a-z, 0-9 and '-', neither first nor last a '-' (got {shown(value)})"
        )
    return value


def _check_image_ref(value: str) -> str:
    if not is_valid_image_ref(value):
        raise ValueError(f"is not a valid image reference name[:tag][@digest] (got {shown(value)})")
    return value


GameId = Annotated[str, AfterValidator(_check_game_id)]
ImageRef = Annotated[str, AfterValidator(_check_image_ref)]


class JobResult(BaseModel):
    """One entry of the result stream: six string fields, always all present.

    Validation is exactly the wire rule (non-blank game id, known outcome); the constructors below
    make the other invariants (id and endpoint together, codes per outcome) hold by construction.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    game_id: str
    outcome: Literal["success", "failure"]
    container_id: str = ""
    engine_endpoint: str = ""
    error_code: str = ""
    error_message: str = ""

    @field_validator("game_id")
    @classmethod
    def _game_id_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("game_id must not be empty")
        return value

    @classmethod
    def fresh_success(cls, game_id: str, container_id: str) -> JobResult:
        return cls(
            game_id=game_id,
            outcome=Outcome.SUCCESS.value,
            container_id=container_id,
            engine_endpoint=engine_endpoint(game_id),
        )

    @classmethod
    def replay(cls, game_id: str, container_id: str = "") -> JobResult:
        """An idempotent replay; a stop replay has no container, so no id and no endpoint."""
        return cls(
            game_id=game_id,
            outcome=Outcome.SUCCESS.value,
            container_id=container_id,
            engine_endpoint=engine_endpoint(game_id) if container_id else "",
            error_code=ErrorCode.REPLAY_NO_OP.value,
        )

    @classmethod
    def failure(cls, game_id: str, code: ErrorCode, message: str) -> JobResult:
        if code is ErrorCode.REPLAY_NO_OP:
            raise ValueError("replay_no_op is not a failure code")
        return cls(
            game_id=game_id,
            outcome=Outcome.FAILURE.value,
            error_code=code.value,
            error_message=one_line(message) or code.value,
        )

    def stream_fields(self) -> dict[str, str]:
        """The entry as written to the stream: exactly the six fields, empty ones included."""
        return self.model_dump(mode="json")


class UnusableJobInput(Exception):
    """A job input without a usable game id: the job cannot even report on the stream.

    Deliberately not a ValueError: pydantic lets it through unwrapped, so the workflow fails with this
    one line instead of a multi-line validation report.
    """


class JobRequest(BaseModel):
    """What a job workflow accepts on the wire: any JSON object with a non-blank string `game_id`.

    Decoding is deliberately lenient, so that a request with a usable game id but otherwise bad
    content still produces an `invalid_request` entry for that game (the contract's "every run with
    a non-empty game_id publishes"). Only a payload with no usable game id fails the workflow.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    game_id: str = Field(description="the platform game")

    @model_validator(mode="before")
    @classmethod
    def _usable_game_id(cls, data: Any) -> Any:
        game_id = data.get("game_id") if isinstance(data, dict) else None
        if not isinstance(game_id, str) or not game_id.strip():
            got = type(data).__name__ if not isinstance(data, dict) else f"game_id={game_id!r:.40}"
            raise UnusableJobInput(f"input must be a JSON object with a non-empty string game_id (got {got})")
        return data

    def fields(self) -> dict[str, Any]:
        return self.model_dump()


class StartRuntimeJobInput(BaseModel):
    """Input of `StartRuntimeJob`, fully checked."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    game_id: GameId
    image: ImageRef | None = Field(default=None, description="default: RTJOBS_ENGINE_IMAGE")


class StopRuntimeJobInput(BaseModel):
    """Input of `StopRuntimeJob`, fully checked."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    game_id: GameId
    stop_timeout_s: int | None = Field(
        default=None, ge=0, le=MAX_STOP_TIMEOUT_S, description="default: RTJOBS_STOP_TIMEOUT_S"
    )


class JobStatus(BaseModel):
    """Answer of a job workflow's `status` query (also shown as its current details in the UI)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    step: str
    last_error: str = ""
    result: JobResult | None = None
    entry_id: str = Field(default="", description="stream entry id once the result is published")


class FollowUpSignal(BaseModel):
    """A signal the publish activity sends once the entry is on the stream (the fleet's hand-over: the
    host hears what the job changed, then the game's lock is released). `arg` is the signal's
    payload as JSON-safe data; the receiving workflow decodes it into its own model.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    workflow_id: str
    signal: str
    arg: dict[str, Any]


class PublishRequest(BaseModel):
    """Input of the publish activity.

    The result travels unvalidated and is checked inside the activity: a `JobResult` that failed to
    decode would surface as a retryable decode error, whereas the contract wants an invalid result
    rejected once, non-retryably.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    result: dict[str, Any]
    # The job's first run id (`workflow.info().first_execution_run_id`): the idempotency key names the
    # job, not the run, so a run made by `temporal workflow reset` of a job that already published
    # appends nothing. Empty (a request without it, as the earliest versions sent): the calling run's id.
    first_run_id: str = ""
    # Sent in order after the entry is appended (and again by a retry: each is idempotent).
    then_signal: list[FollowUpSignal] = Field(default_factory=list)

    @classmethod
    def of(
        cls, result: JobResult, *, first_run_id: str = "", then_signal: list[FollowUpSignal] | None = None
    ) -> PublishRequest:
        return cls(result=result.stream_fields(), first_run_id=first_run_id, then_signal=then_signal or [])
