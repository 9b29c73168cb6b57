"""Worker configuration from the environment (contract section 5).

The Temporal connection itself is not here: it follows the SDK's own `temporalio.envconfig`
variables (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TLS, API key), read in `rtjobs/client.py`.
"""

from __future__ import annotations

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
    model_config = SettingsConfigDict(env_prefix="RTJOBS_", extra="ignore", frozen=True)

    task_queue: str = Field(default="runtime-jobs", min_length=1)
    results_stream: str = Field(default="runtime:job_results", min_length=1)
    engine_image: str = Field(default="galaxy/engine:latest", min_length=1)
    game_network: str = Field(default="galaxy-games", min_length=1)
    start_timeout_s: float = Field(default=120.0, gt=0, le=MAX_START_TIMEOUT_S)
    stop_timeout_s: int = Field(default=30, ge=0, le=3600)

    # Publish: how long a job run's idempotency key is kept (a retry later than this could append
    # twice), and optional approximate trimming of the stream (0 = never trim). MAXLEN is unsafe: it
    # drops entries whether or not a consumer group has read them.
    publish_dedup_ttl_s: int = Field(default=24 * 3600, ge=60)
    results_maxlen: int = Field(default=0, ge=0)
    # Safe retention (activities/retention.py): entries older than this AND acknowledged by every
    # consumer group are trimmed, once a minute. Unset (or empty) = off. `7d`, `12h`, `30m`, `1d12h`.
    results_retention: timedelta | None = None
    # Replication-safe acknowledgement: a publish succeeds only once this many replicas acknowledged
    # the entry (`WAIT`), else it fails retryably and is retried (the idempotency key makes that safe).
    # 0 = the primary's acknowledgement is enough (a failover can lose the newest entries). The wait is
    # bounded below the client's 3 s socket timeout, so a slow replica is never taken for a dead server.
    redis_min_replicas: int = Field(default=0, ge=0, le=100)
    redis_wait_timeout_ms: int = Field(default=1000, ge=1, le=2500)
    # The worker refuses to start when a Redis primary may evict the stream or the idempotency keys
    # (rtjobs.startup.check_eviction), and also when it cannot read the policy at all. True = the operator has
    # checked that every node runs `noeviction` or `maxmemory 0` (for servers that hide INFO and CONFIG):
    # an unreadable policy is then one warning; a readable unsafe one still refuses.
    redis_assume_noeviction: bool = False

    # Engine container limits and hardening.
    engine_memory_bytes: int = Field(default=512 * 1024 * 1024, ge=6 * 1024 * 1024)
    engine_nano_cpus: int = Field(default=1_000_000_000, ge=10_000_000)
    engine_pids_limit: int = Field(default=256, ge=16)
    engine_cap_add: list[str] = Field(default_factory=list)
    # Read-only root file system; the engine's scratch space is then a tmpfs at /tmp of this size
    # (noexec, nosuid, nodev; its pages count against the memory limit). False = the image's writable
    # layer, no tmpfs.
    engine_read_only: bool = True
    engine_tmpfs_bytes: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024)
    # The user the engine runs as (`uid[:gid]` or names the image knows); "" = the image's own USER.
    engine_user: str = Field(
        default="65534:65534", pattern=r"^(?:[A-Za-z0-9_][A-Za-z0-9_.-]*(?::[A-Za-z0-9_][A-Za-z0-9_.-]*)?)?$"
    )

    # Which images may run (contract/image_policy.py): comma-separated patterns; unset = the
    # repository of RTJOBS_ENGINE_IMAGE, any tag or digest. With require_digest only references
    # pinned by digest (`name@sha256:…`) run.
    image_allow: str | None = None
    image_require_digest: bool = False

    # Docker: client-side deadline of each Engine API call (bounded, so that the activities' own
    # start-to-close timeouts in contract.policies can exceed every configurable attempt).
    docker_call_timeout_s: float = Field(default=30.0, gt=0, le=MAX_DOCKER_CALL_TIMEOUT_S)

    # Readiness of an image without HEALTHCHECK: it must have been running this long (counted from
    # its State.StartedAt), so that an engine crashing at start is reported `container_exited`, not a
    # success. Every fresh start of such an image takes at least this long; 0 = ready once running.
    engine_min_running_s: float = Field(default=1.0, ge=0, le=600)

    # The fleet (README "Running a fleet"). The host's name for operators (default: the Docker engine's
    # own Name); how many engines it takes (default: the engine's `rtjobs.max-engines` label, else its
    # memory / RTJOBS_ENGINE_MEMORY_BYTES); how often its workers report it to the registry (a host
    # whose workers were all silent for 3 reports is not live); how long a job of a game whose host
    # has no live worker waits for one before it reports docker_unavailable; how many Docker steps a
    # worker runs at once on its host's queue (default `host_docker_concurrency_for(capacity)`).
    host_name: str | None = Field(default=None, min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    host_max_engines: int | None = Field(default=None, ge=0)
    host_report_every_s: float = Field(default=10.0, ge=0.2, le=300)
    host_wait_s: float = Field(default=60.0, ge=1, le=3600)
    host_docker_concurrency: int | None = Field(default=None, ge=1, le=1000)

    # Reconciliation (README "Drift and reconciliation"): how often each host's `RuntimeReconcile` runs
    # (its Schedule, created or updated by the worker at start-up; empty = no schedule, and an existing
    # one is deleted); how long a container of ours that does not run is left alone (a start or a
    # clean-up may still be about it; 0 = removed at once); whether a running engine that no record
    # names is removed (default: adopted into its game's record, never killed).
    reconcile_every: timedelta | None = timedelta(minutes=5)
    reconcile_grace_s: float = Field(default=300.0, ge=0)
    reconcile_remove_unknown: bool = False
    # Where reconciliation tells the Lobby of engines that died or were removed outside any job
    # (contract.reconcile.EngineEvent); empty = not published.
    engine_events_stream: str = "runtime:engine_events"

    graceful_shutdown_timeout_s: float = Field(default=30.0, ge=0)
    # Workflows kept in the worker's memory between tasks (each holds a sandbox of ~200 KB); jobs
    # waiting on a long activity are evicted and cheaply replayed from history when they resume.
    max_cached_workflows: int = Field(default=100, ge=0)

    # Per-game order: a job asks for its turn no earlier than this after it was started, so that a
    # job of the same game started just before it, whose first workflow task ran later, still goes
    # first. 0 asks at once (lower latency, order as the first workflow tasks ran).
    order_settle_s: float = Field(default=0.25, ge=0, le=5)
    # Where `--dev` keeps the dev server's database and the data of the Redis and Docker engine it starts
    # (RTJOBS_STATE_DIR): `.state` in the working directory unless set (never next to the installed code).
    state_dir: Path = Field(default_factory=lambda: Path.cwd() / ".state")

    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0", validation_alias=AliasChoices("REDIS_URL", "RTJOBS_REDIS_URL")
    )
    docker_host: str | None = Field(default=None, validation_alias=AliasChoices("DOCKER_HOST", "RTJOBS_DOCKER_HOST"))

    # Docker: upper bound of an image pull (a registry that trickles must not hang a start), and how
    # often a starting engine's state is polled.
    docker_pull_timeout_s: float = Field(default=600.0, gt=0, le=MAX_PULL_TIMEOUT_S)
    docker_poll_interval_s: float = Field(default=0.2, gt=0, le=10)

    # Worker process: log level, and the fixed ports of the embedded dev server (`worker.py --dev`),
    # so operators can point TEMPORAL_ADDRESS and a browser at them across restarts.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    dev_port: int = Field(default=7233, ge=1, le=65535)
    dev_ui_port: int = Field(default=8233, ge=1, le=65535)
    # `--dev` with REDIS_URL unset: the Redis on this port of 127.0.0.1, or a redis-server it starts
    # there (rtjobs/dev/stack.py), so that starters' default REDIS_URL (port 6379) finds it.
    dev_redis_port: int = Field(default=6379, ge=1, le=65535)

    # Operating in a cluster (README): the Prometheus endpoint (`host:port`, serving /metrics; unset =
    # off, except under --dev where it is DEV_METRICS_ADDRESS; empty = off even there), and the health
    # endpoints (`host:port`, serving /healthz and /readyz; unset or empty = off).
    # Worker Versioning (README "Safe deploys"): the variables the temporal-worker-controller injects; both
    # set = the worker registers as that deployment version (job workflows pinned to it), neither = unversioned.
    deployment_name: str | None = Field(
        default=None, min_length=1, validation_alias=AliasChoices("TEMPORAL_DEPLOYMENT_NAME", "RTJOBS_DEPLOYMENT_NAME")
    )
    worker_build_id: str | None = Field(
        default=None, min_length=1, validation_alias=AliasChoices("TEMPORAL_WORKER_BUILD_ID", "RTJOBS_WORKER_BUILD_ID")
    )
    metrics_address: str | None = Field(default=None, pattern=_HOST_PORT)
    health_address: str | None = Field(default=None, pattern=_HOST_PORT)

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

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value


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
    refused: operators mean days, hours or seconds, and a wrong guess would trim too early."""
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
    are the `password` / `sentinel_password` query options (redis-py and the Sentinel URL read them)."""
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
