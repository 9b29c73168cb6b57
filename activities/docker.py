"""Docker activities: make a game's engine container run (healthy), or make it be gone.

Both are idempotent and retry-safe: the workflows call them with `contract.policies.DOCKER_RETRY_POLICY`. Permanent
failures are non-retryable `ApplicationError`s whose type is the contract's error code; a Docker
engine that does not answer raises a retryable one of type `DOCKER_UNAVAILABLE_TYPE`, which the
workflow reports as `docker_unavailable` once the retry budget is spent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any, TypeVar

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError, DockerStreamError
from aiodocker.networks import DockerNetwork
from temporalio import activity
from temporalio.exceptions import ApplicationError

from contract.engine import (
    DOCKER_UNAVAILABLE_TYPE,
    ENSURE_REMOVED_ACTIVITY,
    ENSURE_RUNNING_ACTIVITY,
    EngineOutcome,
    EnsureEngineRemoved,
    EnsureEngineRunning,
)
from contract.models import (
    LABEL_GAME_ID,
    LABEL_JOB_RUN,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    MAX_STOP_TIMEOUT_S,
    ErrorCode,
    container_name,
    is_valid_game_id,
    is_valid_image_ref,
    one_line,
)
from contract.settings import Settings

T = TypeVar("T")
Inspect = dict[str, Any]

HEARTBEAT_EVERY_S = 1.0
LOG_TAIL_LINES = 20
LOG_TAIL_CHARS = 1024
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"


def permanent(code: ErrorCode, message: str) -> ApplicationError:
    """A failure that retrying cannot fix: its type is the contract's error code."""
    return ApplicationError(one_line(message), type=code.value, non_retryable=True)


def unavailable(message: str) -> ApplicationError:
    """Docker did not answer: retryable, within the workflow's retry budget."""
    return ApplicationError(one_line(message), type=DOCKER_UNAVAILABLE_TYPE, non_retryable=False)


def normalize_image_ref(ref: str) -> str:
    """`busybox` and `docker.io/library/busybox:latest` name the same image."""
    name, _, digest = ref.partition("@")
    last = name.rsplit("/", 1)[-1]
    if ":" not in last and not digest:
        name += ":latest"
    for prefix in ("docker.io/", "index.docker.io/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    if name.startswith("library/") and name.count("/") == 1:
        name = name[len("library/") :]
    return f"{name}@{digest}" if digest else name


def is_ours(info: Inspect, game_id: str) -> bool:
    labels = (info.get("Config") or {}).get("Labels") or {}
    return bool(labels.get(LABEL_MANAGED_BY) == MANAGED_BY and labels.get(LABEL_GAME_ID) == game_id)


def is_running(info: Inspect) -> bool:
    state = info.get("State") or {}
    return bool(state.get("Running")) and not state.get("Paused") and not state.get("Restarting")


def _is_connection_error(err: DockerError) -> bool:
    # aiodocker reports a refused/reset/missing socket as status 900; a proxy in front of a TCP
    # DOCKER_HOST answers 502/503/504 when the daemon behind it is away.
    return err.status in (900, 502, 503, 504)


def _job_run() -> str:
    """The job run (workflow id / run id) calling this activity: the `galaxy.job-run` label's value."""
    info = activity.info()
    return f"{info.workflow_id}/{info.workflow_run_id}" if info.workflow_id else ""


def _recorded_container_id() -> str:
    """The container id an earlier attempt of this activity created, from its heartbeat details."""
    details = activity.info().heartbeat_details
    if details and isinstance(details[0], str):
        return details[0]
    return ""


class _Heartbeat:
    """Heartbeats every second from a side task (also during a pull or a long stop), carrying the
    id of the container this job created, so that a retried attempt recognises it."""

    def __init__(self, container_id: str) -> None:
        self.container_id = container_id

    def beat(self) -> None:
        if self.container_id:
            activity.heartbeat(self.container_id)
        else:
            activity.heartbeat()

    def record(self, container_id: str) -> None:
        self.container_id = container_id
        self.beat()

    async def run(self) -> None:
        while True:
            self.beat()
            await asyncio.sleep(HEARTBEAT_EVERY_S)


@asynccontextmanager
async def _heartbeating(container_id: str) -> AsyncIterator[_Heartbeat]:
    hb = _Heartbeat(container_id)
    task = asyncio.create_task(hb.run())
    try:
        yield hb
    finally:
        task.cancel()
        # asyncio.wait neither raises the side task's CancelledError nor swallows our own.
        await asyncio.wait([task])


class EngineActivities:
    """Holds the worker's one Docker client; its two methods are the Docker activities."""

    def __init__(self, settings: Settings, docker: aiodocker.Docker | None = None) -> None:
        self._settings = settings
        self._docker = docker
        self._known_networks: set[str] = set()
        self._network_lock = asyncio.Lock()

    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def docker(self) -> aiodocker.Docker:
        """Created on first use (inside the event loop), from DOCKER_HOST or the default socket."""
        if self._docker is None:
            url = self._settings.docker_host or DEFAULT_DOCKER_HOST
            self._docker = aiodocker.Docker(
                url=url, timeout=aiohttp.ClientTimeout(sock_connect=self._settings.docker_call_timeout_s)
            )
        return self._docker

    async def close(self) -> None:
        if self._docker is not None:
            await self._docker.close()
            self._docker = None

    # --- the activities ----------------------------------------------------------------------------

    @activity.defn(name=ENSURE_RUNNING_ACTIVITY)
    async def ensure_engine_running(self, request: EnsureEngineRunning) -> EngineOutcome:
        game_id = _check_game_id(request.game_id)
        image = _check_image(request.image or self._settings.engine_image)
        name = container_name(game_id)
        code = ErrorCode.CONTAINER_START_FAILED
        async with _heartbeating(_recorded_container_id()) as hb:
            info = await self._inspect(name, code)
            if info is not None:
                if not is_ours(info, game_id):
                    raise permanent(
                        ErrorCode.CONTAINER_CONFLICT,
                        f"container {name} exists but is not managed by rtjobs for game {game_id}",
                    )
                if is_running(info):
                    if not await self._runs_image(info, image):
                        raise permanent(
                            ErrorCode.CONTAINER_CONFLICT,
                            f"container {name} runs image {info['Config'].get('Image')!r}, not {image!r}",
                        )
                    # Ours and running: a replay, unless an earlier attempt of this very job made it
                    # (its label says so even when the worker died before a heartbeat carried the id).
                    labels = info["Config"].get("Labels") or {}
                    own = info["Id"] == hb.container_id or labels.get(LABEL_JOB_RUN) == _job_run()
                    deadline = self._readiness_deadline()
                    if own:
                        await self._until_ready_or_removed(info["Id"], name, deadline)
                    else:
                        await self._until_ready(info["Id"], name, deadline)
                    return EngineOutcome(container_id=info["Id"], replay=not own)
                activity.logger.info("removing stopped engine container %s to make it anew", name)
                await self._remove(info["Id"], code)

            container_id, adopted, deadline = await self._create(name, game_id, image)
            if adopted:
                await self._until_ready(container_id, name, deadline)
                return EngineOutcome(container_id=container_id, replay=True)
            hb.record(container_id)
            try:
                await self._call(
                    f"start {name}",
                    lambda: self.docker.containers.container(container_id).start(),
                    code,
                    daemon_errors_permanent=True,
                )
                await self._until_ready(container_id, name, deadline)
            except BaseException:
                await self._remove_quietly(container_id, name)
                raise
            return EngineOutcome(container_id=container_id, replay=False)

    @activity.defn(name=ENSURE_REMOVED_ACTIVITY)
    async def ensure_engine_removed(self, request: EnsureEngineRemoved) -> EngineOutcome:
        game_id = _check_game_id(request.game_id)
        grace = self._settings.stop_timeout_s if request.stop_timeout_s is None else request.stop_timeout_s
        if not 0 <= grace <= MAX_STOP_TIMEOUT_S:
            raise permanent(ErrorCode.INVALID_REQUEST, f"stop_timeout_s must be 0-{MAX_STOP_TIMEOUT_S}")
        name = container_name(game_id)
        code = ErrorCode.CONTAINER_STOP_FAILED
        async with _heartbeating(""):
            info = await self._inspect(name, code)
            if info is None:
                return EngineOutcome(container_id="", replay=True)
            if not is_ours(info, game_id):
                raise permanent(
                    ErrorCode.CONTAINER_CONFLICT,
                    f"container {name} exists but is not managed by rtjobs for game {game_id}; left alone",
                )
            container_id: str = info["Id"]
            if is_running(info):
                # Docker's `t` is the grace period; the HTTP deadline is that plus the call timeout.
                margin = self._settings.docker_call_timeout_s
                try:
                    await self._call(
                        f"stop {name}",
                        lambda: self.docker.containers.container(container_id).stop(
                            t=grace, timeout=aiohttp.ClientTimeout(total=grace + margin)
                        ),
                        code,
                        daemon_errors_permanent=True,
                        passthrough={404},
                        timeout_s=grace + margin + 1,
                    )
                except DockerError:  # 404: gone between inspect and stop (someone removed it)
                    return EngineOutcome(container_id=container_id, replay=False)
            await self._remove(container_id, code)
            return EngineOutcome(container_id=container_id, replay=False)

    # --- steps -------------------------------------------------------------------------------------

    def _readiness_deadline(self) -> float:
        return asyncio.get_running_loop().time() + self._settings.start_timeout_s

    async def _call(
        self,
        what: str,
        fn: Callable[[], Awaitable[T]],
        code: ErrorCode,
        *,
        daemon_errors_permanent: bool = False,
        passthrough: set[int] | frozenset[int] = frozenset(),
        timeout_s: float | None = None,
    ) -> T:
        """One Engine API call under a client-side deadline, its failure classified.

        Statuses in `passthrough` re-raise the `DockerError` for the caller. Connection failures,
        deadlines and 5xx are Docker being unavailable (retryable), except a 500 from an endpoint
        whose server errors describe the request (`daemon_errors_permanent`: create, start, stop,
        remove); any other 4xx is the permanent `code`.
        """
        deadline = self._settings.docker_call_timeout_s if timeout_s is None else timeout_s
        try:
            async with asyncio.timeout(deadline):
                return await fn()
        except TimeoutError:
            raise unavailable(f"{what}: Docker did not answer within {deadline:g}s") from None
        except DockerError as err:
            if err.status in passthrough:
                raise
            if _is_connection_error(err):
                raise unavailable(f"{what}: Docker is unavailable: {err.message}") from None
            if err.status >= 500 and not daemon_errors_permanent:
                raise unavailable(f"{what}: Docker failed (HTTP {err.status}): {err.message}") from None
            raise permanent(code, f"{what} failed (HTTP {err.status}): {err.message}") from None
        except (aiohttp.ClientError, OSError) as err:
            raise unavailable(f"{what}: Docker connection failed: {type(err).__name__}: {err}") from None

    async def _inspect(self, ref: str, code: ErrorCode) -> Inspect | None:
        """The container's inspect data, or None when there is no such container."""
        try:
            info: Inspect = await self._call(
                f"inspect {ref}",
                lambda: self.docker.containers.container(ref).show(),
                code,
                passthrough={404},
            )
        except DockerError:
            return None
        return info

    async def _image_id(self, image: str) -> str | None:
        try:
            data: Inspect = await self._call(
                f"inspect image {image}",
                lambda: self.docker.images.inspect(image),
                ErrorCode.CONTAINER_START_FAILED,
                passthrough={404},
            )
        except DockerError:
            return None
        return str(data.get("Id", ""))

    async def _runs_image(self, info: Inspect, image: str) -> bool:
        """Same image id as the requested reference resolves to locally (a re-pointed tag is another
        image); when the reference does not resolve here, the same normalized reference."""
        image_id = await self._image_id(image)
        if image_id:
            return image_id == info.get("Image")
        configured = str((info.get("Config") or {}).get("Image", ""))
        return normalize_image_ref(configured) == normalize_image_ref(image)

    async def _ensure_network(self) -> str:
        """The game network, created on first use. Docker before API 1.44 can create two networks of one
        name when two creates race (then every create on it fails as ambiguous): creates in this process
        are serialised, and duplicates made by another process are removed, keeping the oldest."""
        network = self._settings.game_network
        if network in self._known_networks:
            return network
        async with self._network_lock:
            if network not in self._known_networks:
                await self._create_network(network)
                self._known_networks.add(network)
        return network

    async def _create_network(self, network: str) -> None:
        code = ErrorCode.CONTAINER_START_FAILED
        try:
            await self._call(
                f"inspect network {network}",
                lambda: self.docker.networks.get(network),
                code,
                passthrough={404},
            )
            return
        except DockerError:
            pass
        config = {
            "Name": network,
            "Driver": "bridge",
            "CheckDuplicate": True,
            "Labels": {LABEL_MANAGED_BY: MANAGED_BY},
        }
        with suppress(DockerError):  # 409: a concurrent creator made it first
            await self._call(
                f"create network {network}",
                lambda: self.docker.networks.create(config),
                code,
                passthrough={409},
            )
        same_name = await self._call(
            f"list networks {network}",
            lambda: self.docker.networks.list(filters={"name": [network]}),
            code,
        )
        duplicates = sorted((n for n in same_name if n["Name"] == network), key=lambda n: (n["Created"], n["Id"]))
        for extra in duplicates[1:]:
            with suppress(DockerError):
                await DockerNetwork(self.docker, extra["Id"]).delete()  # type: ignore[no-untyped-call]

    def _container_config(self, game_id: str, image: str, network: str, job_run: str = "") -> dict[str, Any]:
        s = self._settings
        name = container_name(game_id)
        labels = {LABEL_GAME_ID: game_id, LABEL_MANAGED_BY: MANAGED_BY}
        if job_run:
            labels[LABEL_JOB_RUN] = job_run
        return {
            "Image": image,
            "Labels": labels,
            "HostConfig": {
                "Privileged": False,
                "CapDrop": ["ALL"],
                "CapAdd": list(s.engine_cap_add),
                "SecurityOpt": ["no-new-privileges"],
                "Memory": s.engine_memory_bytes,
                "MemorySwap": s.engine_memory_bytes,  # no swap on top of the memory limit
                "NanoCpus": s.engine_nano_cpus,
                "PidsLimit": s.engine_pids_limit,
                "NetworkMode": network,
                "AutoRemove": False,
                "RestartPolicy": {"Name": "no"},
            },
            "NetworkingConfig": {"EndpointsConfig": {network: {"Aliases": [name]}}},
        }

    async def _create(self, name: str, game_id: str, image: str) -> tuple[str, bool, float]:
        """Create the container, pulling the image only if create says it is absent.

        Returns (container id, adopted, readiness deadline). `adopted` is a container a concurrent
        creator made (ours, same image) found after a 409 name conflict.
        """
        code = ErrorCode.CONTAINER_START_FAILED
        deadline = self._readiness_deadline()
        pulled = network_retried = False
        for _ in range(4):
            network = await self._ensure_network()
            config = self._container_config(game_id, image, network, _job_run())
            try:
                container = await self._call(
                    f"create {name}",
                    lambda: self.docker.containers.create(config, name=name),  # noqa: B023
                    code,
                    daemon_errors_permanent=True,
                    passthrough={404, 409},
                )
                return str(container.id), False, deadline
            except DockerError as err:
                if err.status == 404 and "image" in err.message.lower() and not pulled:
                    await self._pull(image)
                    pulled = True
                    deadline = self._readiness_deadline()  # the readiness clock starts after the pull
                    continue
                if err.status == 404 and "network" in err.message.lower() and not network_retried:
                    self._known_networks.discard(network)  # removed behind our back: make it again
                    network_retried = True
                    continue
                if err.status == 404:
                    raise permanent(code, f"create {name} failed: {err.message}") from None
                # 409: a concurrent creator holds the name. Adopt its container if it is ours and
                # runs our image; create again if it vanished meanwhile; else a clean conflict.
                info = await self._inspect(name, code)
                if info is None:
                    continue
                if is_ours(info, game_id) and await self._runs_image(info, image):
                    return str(info["Id"]), True, deadline
                raise permanent(
                    ErrorCode.CONTAINER_CONFLICT,
                    f"container {name} was created concurrently by someone else or with another image",
                ) from None
        raise permanent(code, f"create {name} failed: the name kept being taken and freed")

    async def _pull(self, image: str) -> None:
        """Pull a locally absent image; errors inside the pull stream count, and the pull is bounded."""
        limit = self._settings.docker_pull_timeout_s
        activity.logger.info("pulling engine image %s", image)
        try:
            async with asyncio.timeout(limit):
                async for message in self.docker.images.pull(image, stream=True):
                    if isinstance(message, dict) and (message.get("error") or message.get("errorDetail")):
                        detail = message.get("errorDetail") or {}
                        reason = message.get("error") or detail.get("message") or str(detail)
                        raise permanent(ErrorCode.IMAGE_PULL_FAILED, f"pull of {image} failed: {reason}")
        except TimeoutError:
            raise permanent(ErrorCode.IMAGE_PULL_FAILED, f"pull of {image} did not finish within {limit:g}s") from None
        except DockerStreamError as err:
            raise permanent(ErrorCode.IMAGE_PULL_FAILED, f"pull of {image} failed: {err.message}") from None
        except DockerError as err:
            if err.status == 900:
                raise unavailable(f"pull of {image}: Docker is unavailable: {err.message}") from None
            raise permanent(ErrorCode.IMAGE_PULL_FAILED, f"pull of {image} failed: {err.message}") from None
        except (aiohttp.ClientError, OSError) as err:
            raise unavailable(f"pull of {image}: Docker connection failed: {err}") from None
        if await self._image_id(image) is None:
            raise permanent(ErrorCode.IMAGE_PULL_FAILED, f"pull of {image} ended without the image")

    async def _until_ready_or_removed(self, container_id: str, name: str, deadline: float) -> None:
        try:
            await self._until_ready(container_id, name, deadline)
        except BaseException:
            await self._remove_quietly(container_id, name)
            raise

    async def _until_ready(self, container_id: str, name: str, deadline: float) -> None:
        """Wait until healthy (the image's HEALTHCHECK) or, without one, running."""
        loop = asyncio.get_running_loop()
        code = ErrorCode.CONTAINER_START_FAILED
        while True:
            info = await self._inspect(container_id, code)
            if info is None:
                raise permanent(code, f"container {name} vanished before it became healthy")
            state: dict[str, Any] = info.get("State") or {}
            status = state.get("Status")
            if status in ("exited", "dead"):
                raise await self._exited_error(container_id, name, state)
            health = state.get("Health")
            if is_running(info):
                if not health:
                    return
                if health.get("Status") == "healthy":
                    return
                if health.get("Status") == "unhealthy":
                    raise permanent(
                        ErrorCode.ENGINE_UNHEALTHY,
                        f"engine {name} reported unhealthy: {_last_probe(health)}",
                    )
            remaining = deadline - loop.time()
            if remaining <= 0:
                shown = health.get("Status") if health else status
                raise permanent(
                    ErrorCode.ENGINE_UNHEALTHY,
                    f"engine {name} was not healthy within {self._settings.start_timeout_s:g}s "
                    f"(state: {shown}){_probe_suffix(health)}",
                )
            await asyncio.sleep(min(self._settings.docker_poll_interval_s, remaining))

    async def _exited_error(self, container_id: str, name: str, state: dict[str, Any]) -> ApplicationError:
        oom = " (OOM-killed)" if state.get("OOMKilled") else ""
        tail = await self._log_tail(container_id)
        return permanent(
            ErrorCode.CONTAINER_EXITED,
            f"engine {name} exited with code {state.get('ExitCode')}{oom} before it became healthy; "
            f"last log lines: {tail}",
        )

    async def _log_tail(self, container_id: str) -> str:
        """The last lines of the engine's output, one line, at most ~1 KB (the newest part kept)."""
        try:
            async with asyncio.timeout(self._settings.docker_call_timeout_s):
                lines = await self.docker.containers.container(container_id).log(
                    stdout=True, stderr=True, tail=LOG_TAIL_LINES
                )
        except (DockerError, TimeoutError, aiohttp.ClientError, OSError) as err:
            return f"(logs unavailable: {type(err).__name__})"
        text = one_line("".join(lines), limit=1_000_000)
        if len(text) > LOG_TAIL_CHARS:
            text = "…" + text[-(LOG_TAIL_CHARS - 1) :]
        return text or "(no output)"

    async def _remove(self, container_id: str, code: ErrorCode) -> None:
        """Force-remove (with anonymous volumes); already gone counts as removed."""
        container = self.docker.containers.container(container_id)
        try:
            await self._call(
                f"remove {container_id[:12]}",
                lambda: container.delete(force=True, v=True),
                code,
                daemon_errors_permanent=True,
                passthrough={404, 409},
            )
        except DockerError as err:
            if err.status == 409:  # "removal already in progress": wait until it is gone
                await self._until_gone(container_id, code)
            return

    async def _until_gone(self, container_id: str, code: ErrorCode) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.docker_call_timeout_s
        while await self._inspect(container_id, code) is not None:
            if loop.time() >= deadline:
                raise permanent(code, f"container {container_id[:12]} was still being removed")
            await asyncio.sleep(self._settings.docker_poll_interval_s)

    async def _remove_quietly(self, container_id: str, name: str) -> None:
        """Cleanup after a failed or cancelled start: best effort, never masks the original error."""
        try:
            await self._remove(container_id, ErrorCode.CONTAINER_START_FAILED)
        except (ApplicationError, DockerError) as err:
            activity.logger.warning("could not remove failed engine container %s: %s", name, err)


def _last_probe(health: dict[str, Any]) -> str:
    log = health.get("Log") or []
    if not log:
        return "(no probe output)"
    last = log[-1]
    output = one_line(str(last.get("Output", "")), limit=300) or "(no output)"
    return f"last probe exit code {last.get('ExitCode')}: {output}"


def _probe_suffix(health: dict[str, Any] | None) -> str:
    return f"; {_last_probe(health)}" if health else ""


def _check_game_id(game_id: str) -> str:
    if not is_valid_game_id(game_id):
        raise permanent(ErrorCode.INVALID_REQUEST, f"invalid game_id {game_id[:80]!r}")
    return game_id


def _check_image(image: str) -> str:
    if not is_valid_image_ref(image):
        raise permanent(ErrorCode.INVALID_REQUEST, f"invalid image reference {image[:80]!r}")
    return image
