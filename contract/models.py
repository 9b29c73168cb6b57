"""The wire contract of runtime jobs (../shared/runtime-jobs-contract.md) as pydantic models.

Workflows and activities both import this module, so it stays free of I/O and of anything
non-deterministic: it is safe inside the workflow sandbox.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

CONTAINER_PREFIX = "galaxy-game-"
ENGINE_PORT = 8080
LABEL_GAME_ID = "galaxy.game-id"
LABEL_MANAGED_BY = "galaxy.managed-by"
MANAGED_BY = "rtjobs"

# 1-51 chars of a-z, 0-9, '-', not starting or ending with '-': "galaxy-game-" + id stays a DNS label.
GAME_ID_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,49}[a-z0-9])?$"
_GAME_ID_RE = re.compile(GAME_ID_PATTERN)

# The Docker distribution reference grammar (name[:tag][@digest]), as the engine parses it.
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?)"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
IMAGE_REF_PATTERN = rf"^{_NAME}(?::{_TAG})?(?:@{_DIGEST})?$"
_IMAGE_REF_RE = re.compile(IMAGE_REF_PATTERN)
MAX_IMAGE_REF_LENGTH = 512

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


FAILURE_CODES: tuple[ErrorCode, ...] = tuple(c for c in ErrorCode if c is not ErrorCode.REPLAY_NO_OP)


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


def _check_game_id(value: str) -> str:
    if not _GAME_ID_RE.fullmatch(value):
        raise ValueError(
            f"must be 1-51 characters of a-z, 0-9 and '-', neither first nor last a '-' (got {value[:80]!r})"
        )
    return value


def _check_image_ref(value: str) -> str:
    if len(value) > MAX_IMAGE_REF_LENGTH or not _IMAGE_REF_RE.fullmatch(value):
        raise ValueError(f"is not a valid image reference name[:tag][@digest] (got {value[:80]!r})")
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


class JobRequest(BaseModel):
    """What a job workflow accepts on the wire: any JSON object with a non-blank `game_id`.

    Decoding is deliberately lenient, so that a request with a usable game id but otherwise bad
    content still produces an `invalid_request` entry for that game (the contract's "every run with
    a non-empty game_id publishes"). Only a payload with no usable game id fails the workflow.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    game_id: str = Field(description="the platform game")

    @field_validator("game_id")
    @classmethod
    def _game_id_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("game_id must be a non-empty string")
        return value

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


class PublishRequest(BaseModel):
    """Input of the publish activity.

    The result travels unvalidated and is checked inside the activity: a `JobResult` that failed to
    decode would surface as a retryable decode error, whereas the contract wants an invalid result
    rejected once, non-retryably.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    result: dict[str, Any]

    @classmethod
    def of(cls, result: JobResult) -> PublishRequest:
        return cls(result=result.stream_fields())
