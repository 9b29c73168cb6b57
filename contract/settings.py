"""Worker configuration from the environment (contract section 5).

The Temporal connection itself is not here: it follows the SDK's own `temporalio.envconfig`
variables (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TLS, API key), read in `rtjobs/client.py`.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from contract.image_policy import ImagePattern, ImagePolicyError, default_allow, parse_allow, refusal
from contract.models import is_valid_image_ref
from contract.policies import MAX_DOCKER_CALL_TIMEOUT_S, MAX_PULL_TIMEOUT_S, MAX_START_TIMEOUT_S

DEV_METRICS_ADDRESS = "127.0.0.1:9464"
# `host:port` of a listening socket (host: a name, an IPv4 address or a bracketed IPv6 one), or empty.
_HOST_PORT = r"^(?:(?:[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5})?$"


class Settings(BaseSettings):
    """Every `RTJOBS_*` variable (and the aliases below); docs/configuration.md is generated from the
    descriptions here (`make docs`).
    """

    model_config = SettingsConfigDict(env_prefix="RTJOBS_", extra="ignore", frozen=True)

    task_queue: str = Field(
        default="runtime-jobs",
        min_length=1,
        description="The fleet's shared task queue (the job workflows); each host's Docker activities run on "
        "`{task queue}@host-{host id}`, the coordination workflows on `{task queue}-coordination`.",
    )
    results_stream: str = Field(
        default="runtime:job_results", min_length=1, description="The Redis stream the job results go to."
    )
    engine_image: str = Field(
        default="galaxy/engine:latest", min_length=1, description="The image of a start job that names none."
    )
    game_network: str = Field(
        default="galaxy-games",
        min_length=1,
        description="The Docker network of the engines (a local bridge is created if missing; a fleet needs an "
        "attachable overlay).",
    )
    start_timeout_s: float = Field(
        default=120.0,
        gt=0,
        le=MAX_START_TIMEOUT_S,
        description="Seconds a started engine has to become healthy, counted after the pull.",
    )
    stop_timeout_s: int = Field(
        default=30, ge=0, le=3600, description="The grace period (seconds) of a stop job that gives none."
    )

    publish_dedup_ttl_s: int = Field(
        default=24 * 3600,
        ge=60,
        description="Seconds a job run's publish idempotency key is kept; a publish retried later than this "
        "could append a second entry.",
    )
    results_maxlen: int = Field(
        default=0,
        ge=0,
        description="Approximate `MAXLEN ~` trimming of the stream at each publish; 0 = off. Unsafe: it drops "
        "entries whether or not a consumer group has read them; use RTJOBS_RESULTS_RETENTION.",
    )
    results_retention: timedelta | None = Field(
        default=None,
        description="Safe retention, a duration (`7d`, `12h`, `30m`, `45s`, `1d12h`): once a minute entries "
        "older than this and acknowledged by every consumer group are trimmed; a stream without groups is "
        "never trimmed. Unset or empty = off; a bare number is an error.",
    )
    redis_min_replicas: int = Field(
        default=0,
        ge=0,
        le=100,
        description="A publish succeeds only once this many replicas acknowledged the entry (`WAIT`), else it "
        "fails retryably (`ResultNotReplicated`) and is retried. 0 = the primary's acknowledgement is enough "
        "(a failover can lose the newest entries). Needs `+wait` in the ACL.",
    )
    redis_wait_timeout_ms: int = Field(
        default=1000,
        ge=1,
        le=2500,
        description="How long one publish attempt waits for those replicas (below the client's 3 s socket "
        "timeout, so a slow replica is never taken for a dead server).",
    )
    redis_assume_noeviction: bool = Field(
        default=False,
        description="The worker refuses a Redis primary that may evict the stream or the idempotency keys, "
        "and one whose policy it cannot read. True = the operator checked that every node runs `noeviction` "
        "or `maxmemory 0`: an unreadable policy is then one warning; a readable unsafe one still refuses.",
    )

    engine_memory_bytes: int = Field(
        default=512 * 1024 * 1024, ge=6 * 1024 * 1024, description="The engine's memory limit (no swap)."
    )
    engine_nano_cpus: int = Field(
        default=1_000_000_000, ge=10_000_000, description="The engine's CPU limit (1e9 = one CPU)."
    )
    engine_pids_limit: int = Field(default=256, ge=16, description="The engine's process limit.")
    engine_cap_add: list[str] = Field(
        default_factory=list,
        description="Capabilities added back after dropping all (a JSON list); only a root engine can use "
        "them (a non-root user holds none: no ambient capabilities, `no-new-privileges`).",
    )
    engine_read_only: bool = Field(
        default=True,
        description="Read-only root file system; the engine's scratch space is then a tmpfs at /tmp "
        "(noexec, nosuid, nodev). False = the image's writable layer, no tmpfs.",
    )
    engine_tmpfs_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024 * 1024,
        description="The size of that /tmp tmpfs; its pages count against RTJOBS_ENGINE_MEMORY_BYTES.",
    )
    engine_user: str = Field(
        default="65534:65534",
        pattern=r"^(?:[A-Za-z0-9_][A-Za-z0-9_.-]*(?::[A-Za-z0-9_][A-Za-z0-9_.-]*)?)?$",
        description="The user the engine runs as (`uid[:gid]` or names the image knows); empty = the image's own USER.",
    )

    image_allow: str | None = Field(
        default=None,
        description="Which images a start may name: comma-separated patterns (docs/engines.md); any other "
        "image is `invalid_request`, never pulled. Unset = the repository of RTJOBS_ENGINE_IMAGE, any tag or "
        "digest.",
    )
    image_require_digest: bool = Field(
        default=False,
        description="Only references pinned by digest (`name@sha256:…`) run; a tag is `invalid_request`, and "
        "RTJOBS_ENGINE_IMAGE must be pinned too.",
    )

    docker_call_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=MAX_DOCKER_CALL_TIMEOUT_S,
        description="The client-side deadline (seconds) of each Docker Engine API call (bounded, so that the "
        "activities' start-to-close timeouts exceed every attempt).",
    )

    engine_min_running_s: float = Field(
        default=1.0,
        ge=0,
        le=600,
        description="An engine without HEALTHCHECK is ready once it has run this long (from its StartedAt), "
        "so one crashing at start is `container_exited`, not a success; every such start takes at least this "
        "long. 0 = ready once running; below RTJOBS_START_TIMEOUT_S.",
    )

    host_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="The host's name in `rtjobs hosts`, the `RuntimeHost` search attribute and job messages; "
        "unique in the fleet. Unset = the Docker engine's Name.",
    )
    host_max_engines: int | None = Field(
        default=None,
        ge=0,
        description="How many engines placement puts on this host. Unset = the engine's `rtjobs.max-engines` "
        "daemon label, else its memory / RTJOBS_ENGINE_MEMORY_BYTES.",
    )
    host_report_every_s: float = Field(
        default=10.0,
        ge=0.2,
        le=300,
        description="How often (seconds) each worker reports its host and the games with a container there; "
        "a host is live while one of its workers reported within 3 intervals. The shortest interval: see "
        "RTJOBS_FLEET_REPORTS_PER_S.",
    )
    fleet_reports_per_s: float = Field(
        default=20.0,
        gt=0,
        le=10_000,
        description="At most about this many host reports a second across the fleet: with more hosts than "
        "RTJOBS_HOST_REPORT_EVERY_S times this, each worker reports every hosts / this seconds (each report "
        "names its interval), so a dead host is noticed later (after 3 intervals).",
    )
    host_wait_s: float = Field(
        default=60.0,
        ge=1,
        le=3600,
        description="How long (seconds) a job whose game lives on a host with no live worker waits for one "
        "before it reports `docker_unavailable`; a new game waits as long for any live host.",
    )
    host_docker_concurrency: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="How many Docker steps one worker runs at once on its host's queue; more wait on the "
        "server. Unset = the host's capacity + 2, at least 4, at most 100.",
    )

    reconcile_every: timedelta | None = Field(
        default=timedelta(minutes=5),
        description="How often each host's `RuntimeReconcile` runs (its Temporal Schedule, created or updated "
        "by the host's workers at start-up), a duration (`5m`, `30s`, `1h`); empty = no schedule (an existing "
        "one is deleted).",
    )
    reconcile_grace_s: float = Field(
        default=300.0,
        ge=0,
        description="How long (seconds) a container of ours that does not run is left alone before "
        "reconciliation removes it (a start or a clean-up may still be about it); 0 = at once.",
    )
    reconcile_remove_unknown: bool = Field(
        default=False,
        description="Remove a running engine that no record names (and publish `engine_removed`) instead of "
        "adopting it into its game's record.",
    )
    engine_events_stream: str = Field(
        default="runtime:engine_events",
        description="Where reconciliation tells the Lobby of engines that died or were removed outside any "
        "job (`engine_lost`, `engine_removed`); empty = not published.",
    )

    graceful_shutdown_timeout_s: float = Field(
        default=30.0, ge=0, description="On SIGTERM/SIGINT, how long (seconds) running activities may finish."
    )
    max_cached_workflows: int = Field(
        default=100,
        ge=0,
        description="Workflows kept in worker memory between tasks (each holds a sandbox of ~200 KB); the "
        "others are replayed from history when they resume.",
    )

    order_settle_s: float = Field(
        default=0.25,
        ge=0,
        le=5,
        description="A job asks for its game's lock no earlier than this (seconds) after it was started, so "
        "that a job of the same game started just before, whose first workflow task ran later, still goes "
        "first. 0 = at once (with one task-queue partition, order holds without it).",
    )
    state_dir: Path = Field(
        default_factory=lambda: Path.cwd() / ".state",
        description="Where `--dev` keeps the dev server's database and the data of the Redis and Docker engine "
        "it starts: `.state` in the working directory unless set (never next to the installed code).",
    )

    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("REDIS_URL", "RTJOBS_REDIS_URL"),
        description="The Redis of the streams: `redis://`/`rediss://` (standalone), `redis+cluster://`, "
        "`redis+sentinel://` (docs/redis.md), with ACL user and password; never logged unmasked.",
    )
    docker_host: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DOCKER_HOST", "RTJOBS_DOCKER_HOST"),
        description="The Docker engine: the worker's host in the fleet. Unset = `unix:///var/run/docker.sock`.",
    )

    docker_pull_timeout_s: float = Field(
        default=600.0,
        gt=0,
        le=MAX_PULL_TIMEOUT_S,
        description="The upper bound (seconds) of an image pull: a registry that trickles must not hang a start.",
    )
    docker_poll_interval_s: float = Field(
        default=0.2, gt=0, le=10, description="How often (seconds) a starting engine's state is polled."
    )
    registry_auth_file: Path | None = Field(
        default=None,
        description=(
            "The Docker config.json whose `auths`, `credHelpers` and `credsStore` give the credentials of "
            "image pulls, read afresh for each pull (docs/registries.md). Unset: $DOCKER_CONFIG/config.json "
            "when DOCKER_CONFIG is set, else ~/.docker/config.json. A missing file means no credentials."
        ),
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="The log level; DEBUG adds tracebacks."
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="The log lines on stderr: `text`, one line for people per event with the job's context as "
        "`key=value`, or `json`, one JSON object per line with `time`, `level`, `logger`, `message` and the job's "
        "context as fields (docs/operations.md#logs).",
    )
    dev_port: int = Field(
        default=7233, ge=1, le=65535, description="`--dev`: the port of the embedded Temporal dev server."
    )
    dev_ui_port: int = Field(default=8233, ge=1, le=65535, description="`--dev`: the port of its web UI.")
    dev_redis_port: int = Field(
        default=6379,
        ge=1,
        le=65535,
        description="`--dev` with REDIS_URL unset: the Redis on this port of 127.0.0.1 is used, else a "
        "redis-server is started there.",
    )

    deployment_name: str | None = Field(
        default=None,
        min_length=1,
        validation_alias=AliasChoices("TEMPORAL_DEPLOYMENT_NAME", "RTJOBS_DEPLOYMENT_NAME"),
        description="Worker Versioning (docs/operations.md): with TEMPORAL_WORKER_BUILD_ID, every Worker of "
        "the process registers as that Worker Deployment Version; one without the other is an error. Unset = "
        "unversioned.",
    )
    worker_build_id: str | None = Field(
        default=None,
        min_length=1,
        validation_alias=AliasChoices("TEMPORAL_WORKER_BUILD_ID", "RTJOBS_WORKER_BUILD_ID"),
        description="The build id of that Worker Deployment Version (set with TEMPORAL_DEPLOYMENT_NAME).",
    )
    metrics_address: str | None = Field(
        default=None,
        pattern=_HOST_PORT,
        description="`host:port` of the Prometheus endpoint `/metrics`. Unset = off, except under `--dev` "
        f"({DEV_METRICS_ADDRESS}); empty = off there too.",
    )
    health_address: str | None = Field(
        default=None,
        pattern=_HOST_PORT,
        description="`host:port` of `GET /healthz` and `GET /readyz` (the image sets 0.0.0.0:8081). Unset or "
        "empty = off.",
    )

    @model_validator(mode="after")
    def _window_fits_the_start_timeout(self) -> Settings:
        if self.engine_min_running_s >= self.start_timeout_s:
            raise ValueError(
                "RTJOBS_ENGINE_MIN_RUNNING_S must be below RTJOBS_START_TIMEOUT_S: "
                "otherwise no engine without HEALTHCHECK could ever be ready"
            )
        return self

    @model_validator(mode="after")
    def _deployment_version_whole(self) -> Settings:
        if (self.deployment_name is None) != (self.worker_build_id is None):
            raise ValueError(
                "TEMPORAL_DEPLOYMENT_NAME and TEMPORAL_WORKER_BUILD_ID go together: set both (a versioned worker) "
                "or neither (unversioned)"
            )
        return self

    @model_validator(mode="after")
    def _image_policy_admits_the_default_image(self) -> Settings:
        try:
            allow = self.image_allow_patterns
        except ImagePolicyError as err:
            raise ValueError(f"RTJOBS_IMAGE_ALLOW: {err}") from None
        if not is_valid_image_ref(self.engine_image):
            raise ValueError(f"RTJOBS_ENGINE_IMAGE {self.engine_image[:80]!r} is not a valid image reference")
        why = refusal(self.engine_image, allow, require_digest=self.image_require_digest)
        if why is not None:
            raise ValueError(f"RTJOBS_ENGINE_IMAGE (the default of every start) would be refused: {why}")
        return self

    def metrics_bind(self, *, dev: bool) -> str | None:
        """Where the Prometheus endpoint listens, or None when it is off."""
        address = self.metrics_address if self.metrics_address is not None or not dev else DEV_METRICS_ADDRESS
        return address or None

    @property
    def image_allow_patterns(self) -> tuple[ImagePattern, ...]:
        """The parsed RTJOBS_IMAGE_ALLOW, or its default (the engine image's repository)."""
        if self.image_allow is None or not self.image_allow.strip():
            return default_allow(self.engine_image)
        return parse_allow(self.image_allow)

    @property
    def registry_auth_path(self) -> Path:
        """RTJOBS_REGISTRY_AUTH_FILE, or where the Docker CLI keeps its config."""
        if self.registry_auth_file is not None:
            return self.registry_auth_file
        config_dir = os.environ.get("DOCKER_CONFIG")
        if config_dir:
            return Path(config_dir) / "config.json"
        return Path(os.path.expanduser("~")) / ".docker" / "config.json"

    def image_refusal(self, image: str) -> str | None:
        """Why the image policy refuses `image` (one line), or None when it may run."""
        return refusal(image, self.image_allow_patterns, require_digest=self.image_require_digest)

    @field_validator("results_retention", "reconcile_every", mode="before")
    @classmethod
    def _parse_duration_setting(cls, value: object, info: ValidationInfo) -> object:
        if not isinstance(value, str):
            return value
        try:
            return parse_duration(value)
        except ValueError as err:
            raise ValueError(f"RTJOBS_{str(info.field_name).upper()}: {err}") from None

    @field_validator("registry_auth_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower_log_format(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value


# The default host Docker concurrency: per-game serialisation lets one Docker step per game run at a time,
# and placement keeps a host's games within its capacity, so the capacity (plus the reconcile run's
# steps) bounds what can be in flight; never more than the SDK's own default (100), never below 4 (a
# host of capacity 0 still stops and reconciles its engines).
HOST_DOCKER_CONCURRENCY_EXTRA = 2
HOST_DOCKER_CONCURRENCY_MIN = 4
HOST_DOCKER_CONCURRENCY_MAX = 100


def host_docker_concurrency_for(capacity: int) -> int:
    """RTJOBS_HOST_DOCKER_CONCURRENCY's default for a host that takes `capacity` engines."""
    return max(HOST_DOCKER_CONCURRENCY_MIN, min(capacity + HOST_DOCKER_CONCURRENCY_EXTRA, HOST_DOCKER_CONCURRENCY_MAX))


_DURATION_PART = re.compile(r"(\d+)([dhms])")
_DURATION_UNITS_S = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> timedelta | None:
    """`7d`, `12h`, `30m`, `45s` or a sum like `1d12h` (empty: None, i.e. off). A bare number is
    refused: operators mean days, hours or seconds, and a wrong guess would trim too early.
    """
    compact = text.strip().lower().replace(" ", "")
    if not compact:
        return None
    if _DURATION_PART.sub("", compact) or not _DURATION_PART.search(compact):
        raise ValueError(f"invalid duration {text!r}: use a number with a unit d, h, m or s, e.g. 7d, 12h, 30m")
    seconds = sum(int(n) * _DURATION_UNITS_S[unit] for n, unit in _DURATION_PART.findall(compact))
    if seconds <= 0:
        raise ValueError(f"invalid duration {text!r}: must be longer than 0")
    return timedelta(seconds=seconds)


_SECRET_OPTION = re.compile(r"(^|&)((?:sentinel_)?password)=[^&]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """A URL fit for logs: the password (and a bare token in the user part) replaced by `***`, and so
    are the `password` / `sentinel_password` query options (redis-py and the Sentinel URL read them).
    """
    parts = urlsplit(url)
    query = _SECRET_OPTION.sub(r"\1\2=***", parts.query)
    if "@" not in parts.netloc and query == parts.query:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0] if ":" in userinfo else ""
        netloc = f"{user}:***@{host}" if user else f"***@{host}"
    return urlunsplit(parts._replace(netloc=netloc, query=query))
