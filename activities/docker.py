"""The Docker activities: make a game's engine run (healthy), make it be gone, clean up after a
failed start.

All are idempotent and retry-safe (the workflows use `contract.policies`). A permanent failure is a
non-retryable `ApplicationError` typed by the contract's error code; an engine that does not answer
raises a retryable one of type `DOCKER_UNAVAILABLE_TYPE`, reported as `docker_unavailable` once the
retries are spent. The parts: `docker_gateway`, `engine_spec`, `readiness`, `heartbeat`, `game_network`.
"""

from __future__ import annotations

import asyncio

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.docker_gateway import DockerGateway, Inspect, permanent
from activities.engine_spec import (
    container_config,
    is_ours,
    is_running,
    job_run_filters,
    made_by,
    normalize_image_ref,
)
from activities.game_network import GameNetwork
from activities.heartbeat import Heartbeat, heartbeating, job_run, recorded_container_id
from activities.readiness import Readiness
from contract.engine import (
    ENSURE_REMOVED_ACTIVITY,
    ENSURE_RUNNING_ACTIVITY,
    REMOVE_FAILED_START_ACTIVITY,
    EngineOutcome,
    EnsureEngineRemoved,
    EnsureEngineRunning,
    FailedStartRemoved,
    RemoveFailedStart,
)
from contract.models import MAX_STOP_TIMEOUT_S, ErrorCode, container_name, is_valid_game_id, is_valid_image_ref
from contract.settings import Settings

# A create may meet a name taken and freed again by concurrent creators; after this many rounds the
# start gives up rather than chase them (it also bounds an attempt's calls: see contract.policies).
CREATE_ROUNDS = 4
# How long the clean-up of a start that failed during a Docker outage waits before it looks again.
OUTAGE_SETTLE_S = 2.0


class EngineActivities:
    """One per worker process: holds its Docker gateway; the `@activity.defn` methods are the activities."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.gateway = DockerGateway(settings)
        self._readiness = Readiness(self.gateway, settings)
        self._network = GameNetwork(self.gateway, settings.game_network)

    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def docker(self) -> aiodocker.Docker:
        """The aiodocker client (the worker's start-up check asks it for the daemon's version)."""
        return self.gateway.client

    async def close(self) -> None:
        await self.gateway.close()

    # --- the activities ----------------------------------------------------------------------------

    @activity.defn(name=ENSURE_RUNNING_ACTIVITY)
    async def ensure_engine_running(self, request: EnsureEngineRunning) -> EngineOutcome:
        game_id = _check_game_id(request.game_id)
        image = _check_image(request.image or self._settings.engine_image)
        # The image policy decides before any Docker call: a refused image is never pulled or created.
        refused = self._settings.image_refusal(image)
        if refused is not None:
            raise permanent(ErrorCode.INVALID_REQUEST, refused)
        name = container_name(game_id)
        code = ErrorCode.CONTAINER_START_FAILED
        async with heartbeating(recorded_container_id()) as hb:
            info = await self.gateway.inspect(name, code)
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
                    own = info["Id"] == hb.container_id or made_by(info, job_run())
                    deadline = self._readiness_deadline()
                    if own:
                        await self._until_ready_or_removed(info["Id"], name, deadline)
                    else:
                        await self._readiness.until_ready(info["Id"], name, deadline)
                    return EngineOutcome(container_id=info["Id"], replay=not own)
                activity.logger.info("removing stopped engine container %s to make it anew", name)
                await self.gateway.remove(info["Id"], code)
            elif not request.create:
                # Not here after all (a stale placement): the job looks elsewhere before anything is made.
                return EngineOutcome(container_id="", replay=False, absent=True)

            container_id, adopted, deadline = await self._create(name, game_id, image, hb)
            if adopted:
                await self._readiness.until_ready(container_id, name, deadline)
                return EngineOutcome(container_id=container_id, replay=True)
            hb.record(container_id)
            try:
                await self.gateway.call(
                    f"start {name}",
                    lambda: self.docker.containers.container(container_id).start(),
                    code,
                    daemon_errors_permanent=True,
                )
                await self._readiness.until_ready(container_id, name, deadline)
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
        async with heartbeating(""):
            info = await self.gateway.inspect(name, code)
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
                    await self.gateway.call(
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
            await self.gateway.remove(container_id, code)
            return EngineOutcome(container_id=container_id, replay=False)

    @activity.defn(name=REMOVE_FAILED_START_ACTIVITY)
    async def remove_failed_start(self, request: RemoveFailedStart) -> FailedStartRemoved:
        """Compensation after a failed or cancelled start: remove whatever this job run made for the game.

        The start removes its container itself when it fails, but not when the daemon went away in
        the middle (the remove fails too) or the worker died; the workflow calls this after it
        published the failure, with a retry budget that outlasts a Docker outage. Only containers
        carrying this run's `galaxy.job-run` label (and ours, for this game) are touched, in any state.
        """
        run = job_run()
        if not run or not is_valid_game_id(request.game_id):
            return FailedStartRemoved(removed=[])  # a start without a job run or a valid game makes nothing
        removed: list[str] = []
        async with heartbeating(""):
            removed += await self._remove_containers_of(run, request.game_id)
            if request.after_outage or activity.info().attempt > 1:
                # A daemon that did not answer still carries out the requests it had accepted once it
                # answers again (a create can land just after a frozen dockerd is thawed): look again.
                await asyncio.sleep(OUTAGE_SETTLE_S)
                removed += await self._remove_containers_of(run, request.game_id)
        return FailedStartRemoved(removed=removed)

    async def _remove_containers_of(self, run: str, game_id: str) -> list[str]:
        code = ErrorCode.CONTAINER_START_FAILED
        found = await self.gateway.list_containers(job_run_filters(game_id, run), code)
        for container_id in found:
            activity.logger.info("removing container %s left by failed start of %s", container_id[:12], run)
            await self.gateway.remove(container_id, code)
        return found

    # --- steps -------------------------------------------------------------------------------------

    def _readiness_deadline(self) -> float:
        return asyncio.get_running_loop().time() + self._settings.start_timeout_s

    async def _runs_image(self, info: Inspect, image: str) -> bool:
        """Same image id as the requested reference resolves to locally (a re-pointed tag is another
        image); when the reference does not resolve here, the same normalized reference.
        """
        image_id = await self.gateway.image_id(image)
        if image_id:
            return image_id == info.get("Image")
        configured = str((info.get("Config") or {}).get("Image", ""))
        return normalize_image_ref(configured) == normalize_image_ref(image)

    async def _create(self, name: str, game_id: str, image: str, hb: Heartbeat) -> tuple[str, bool, float]:
        """Create the container, pulling the image only if create says it is absent (its progress in
        the heartbeat).

        Returns (container id, adopted, readiness deadline). `adopted` is a container a concurrent
        creator made (ours, same image) found after a 409 name conflict.
        """
        code = ErrorCode.CONTAINER_START_FAILED
        deadline = self._readiness_deadline()
        pulled = network_retried = False
        for _ in range(CREATE_ROUNDS):
            network = await self._network.ensure()
            config = container_config(self._settings, game_id, image, network, job_run())
            try:
                container = await self.gateway.call(
                    f"create {name}",
                    lambda: self.docker.containers.create(config, name=name),  # noqa: B023
                    code,
                    daemon_errors_permanent=True,
                    passthrough={404, 409},
                )
                return str(container.id), False, deadline
            except DockerError as err:
                if err.status == 404 and "image" in err.message.lower() and not pulled:
                    activity.logger.info("pulling engine image %s", image)
                    await self.gateway.pull(image, hb.pulling)
                    pulled = True
                    deadline = self._readiness_deadline()  # the readiness clock starts after the pull
                    continue
                if err.status == 404 and "network" in err.message.lower() and not network_retried:
                    self._network.forget()  # removed behind our back: make it again
                    network_retried = True
                    continue
                if err.status == 404:
                    raise permanent(code, f"create {name} failed: {err.message}") from None
                # 409: a concurrent creator holds the name. Adopt its container if it is ours and
                # runs our image; create again if it vanished meanwhile; else a clean conflict.
                info = await self.gateway.inspect(name, code)
                if info is None:
                    continue
                if is_ours(info, game_id) and await self._runs_image(info, image):
                    return str(info["Id"]), True, deadline
                raise permanent(
                    ErrorCode.CONTAINER_CONFLICT,
                    f"container {name} was created concurrently by someone else or with another image",
                ) from None
        raise permanent(code, f"create {name} failed: the name kept being taken and freed")

    async def _until_ready_or_removed(self, container_id: str, name: str, deadline: float) -> None:
        try:
            await self._readiness.until_ready(container_id, name, deadline)
        except BaseException:
            await self._remove_quietly(container_id, name)
            raise

    async def _remove_quietly(self, container_id: str, name: str) -> None:
        """Cleanup after a failed or cancelled start: best effort, never masks the original error
        (what it cannot remove, `remove_failed_start` removes later).
        """
        try:
            await self.gateway.remove(container_id, ErrorCode.CONTAINER_START_FAILED)
        except (ApplicationError, DockerError) as err:
            activity.logger.warning("could not remove failed engine container %s: %s", name, err)


def _check_game_id(game_id: str) -> str:
    if not is_valid_game_id(game_id):
        raise permanent(ErrorCode.INVALID_REQUEST, f"invalid game_id {game_id[:80]!r}")
    return game_id


def _check_image(image: str) -> str:
    if not is_valid_image_ref(image):
        raise permanent(ErrorCode.INVALID_REQUEST, f"invalid image reference {image[:80]!r}")
    return image
