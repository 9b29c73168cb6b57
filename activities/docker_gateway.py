"""The worker's one door to the Docker Engine API, and the one place where a failure is classified.

Every call runs under a client-side deadline, so a daemon that hangs cannot hold an activity beyond its
bounds. Each failure becomes either a permanent `ApplicationError` whose type is the contract's error code
(retrying cannot fix it) or a retryable `DockerUnavailable` (the daemon did not answer, or is going
away), and nothing else: the activities never see a raw `DockerError` unless they asked for its status.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError, DockerStreamError
from aiodocker.jsonstream import json_stream_stream
from aiodocker.types import SENTINEL
from temporalio.exceptions import ApplicationError

from activities.pull_progress import PullTracker
from activities.registry_auth import RegistryAuthError, RegistryCredentials, credentials_for, registry_of
from contract.engine import DOCKER_UNAVAILABLE_TYPE, PullProgress
from contract.models import ErrorCode, one_line
from contract.settings import Settings

T = TypeVar("T")
Inspect = dict[str, Any]

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"

# aiodocker reports a refused/reset/missing socket as status 900; a proxy in front of a TCP DOCKER_HOST
# answers 502/503/504 when the daemon behind it is away.
_CONNECTION_STATUSES = frozenset({900, 502, 503, 504})
# How a daemon reports a registry's 401 in a pull's answer or stream.
_LOGIN_REFUSED = ("unauthorized", "authentication required", "no basic auth credentials")


def permanent(code: ErrorCode, message: str) -> ApplicationError:
    """A failure that retrying cannot fix: its type is the contract's error code."""
    return ApplicationError(one_line(message), type=code.value, non_retryable=True)


def unavailable(message: str) -> ApplicationError:
    """Docker did not answer (or is going away): retryable, within the workflow's retry budget."""
    return ApplicationError(one_line(message), type=DOCKER_UNAVAILABLE_TYPE, non_retryable=False)


class DockerGateway:
    """Holds the one aiodocker client of a worker process and classifies what its calls raise."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: aiodocker.Docker | None = None

    @property
    def url(self) -> str:
        return self._settings.docker_host or DEFAULT_DOCKER_HOST

    @property
    def client(self) -> aiodocker.Docker:
        """Created on first use, because aiohttp binds its session to the running event loop."""
        if self._client is None:
            self._client = aiodocker.Docker(
                url=self.url, timeout=aiohttp.ClientTimeout(sock_connect=self._settings.docker_call_timeout_s)
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def call(
        self,
        what: str,
        fn: Callable[[], Awaitable[T]],
        code: ErrorCode,
        *,
        daemon_errors_permanent: bool = False,
        passthrough: frozenset[int] | set[int] = frozenset(),
        timeout_s: float | None = None,
        overrun_code: ErrorCode | None = None,
    ) -> T:
        """One Engine API call under a deadline, its failure classified (see `classify`).

        Statuses in `passthrough` re-raise the `DockerError`, for callers to whom that status is an
        answer (404: no such thing; 409: someone else was first). `overrun_code` makes running past the
        deadline that permanent code: for work the daemon does while answering (a pull from a registry
        that trickles), where the deadline bounds the work, not the daemon's silence.
        """
        deadline = self._settings.docker_call_timeout_s if timeout_s is None else timeout_s
        bound = asyncio.timeout(deadline)
        try:
            async with bound:
                return await fn()
        except DockerError as err:
            if err.status in passthrough:
                raise
            raise await self.classify(what, err, code, daemon_errors_permanent=daemon_errors_permanent) from None
        except TimeoutError:
            if bound.expired() and overrun_code is not None:
                raise permanent(overrun_code, f"{what} did not finish within {deadline:g}s") from None
            if bound.expired():
                raise unavailable(f"{what}: Docker did not answer within {deadline:g}s") from None
            raise unavailable(f"{what}: Docker did not answer in time (the HTTP client's own timeout)") from None
        except (aiohttp.ClientError, OSError) as err:
            raise unavailable(f"{what}: Docker connection failed: {type(err).__name__}: {err}") from None

    async def classify(
        self, what: str, err: DockerError, code: ErrorCode, *, daemon_errors_permanent: bool
    ) -> ApplicationError:
        """The single classification of a daemon's error answer.

        Connection failures are unavailability. A 5xx is unavailability too, except from endpoints
        whose server errors describe the request (`daemon_errors_permanent`: create, start, stop,
        remove, pull, and errors a pull reports inside its stream); such a verdict is passed on as the
        permanent `code` only while the daemon still answers a new connection: a dockerd that got
        SIGTERM fails what is in flight on open connections while it shuts down. Any other 4xx is
        the permanent `code`.
        """
        status = f"HTTP {err.status}" if not isinstance(err, DockerStreamError) else "in the stream"
        if err.status in _CONNECTION_STATUSES:
            return unavailable(f"{what}: Docker is unavailable: {err.message}")
        daemon_error = isinstance(err, DockerStreamError) or err.status >= 500
        if daemon_error and not daemon_errors_permanent:
            return unavailable(f"{what}: Docker failed ({status}): {err.message}")
        if daemon_error and not await self.daemon_is_up():
            return unavailable(f"{what} failed ({status}) while Docker was going away: {err.message}")
        return permanent(code, f"{what} failed ({status}): {err.message}")

    async def daemon_is_up(self) -> bool:
        """Whether the daemon answers `/_ping` on a new connection.

        Not the pooled connections: Debian's dockerd 20.10, on SIGTERM, closes its listener (and
        removes its socket) at once, then keeps answering on connections already open for as long
        as it takes to stop its containers, reporting them `exited` with the code their SIGTERM gave.
        Only a fresh connection tells that it is going away.
        """
        deadline = self._settings.docker_call_timeout_s  # the same "does not answer" as for every call
        probe = aiodocker.Docker(url=self.url, timeout=aiohttp.ClientTimeout(sock_connect=deadline))
        try:
            async with asyncio.timeout(deadline):
                async with probe._query("_ping", versioned_api=False) as response:
                    await response.read()
            return True
        except (DockerError, TimeoutError, aiohttp.ClientError, OSError):
            return False
        finally:
            await probe.close()

    # --- calls several activities make ---------------------------------------------------------------

    async def inspect(self, ref: str, code: ErrorCode) -> Inspect | None:
        """The container's inspect data, or None when there is no such container."""
        try:
            info: Inspect = await self.call(
                f"inspect {ref}", lambda: self.client.containers.container(ref).show(), code, passthrough={404}
            )
        except DockerError:
            return None
        return info

    async def image_id(self, image: str) -> str | None:
        """The id the reference resolves to here, or None when no such image is present."""
        try:
            data: Inspect = await self.call(
                f"inspect image {image}",
                lambda: self.client.images.inspect(image),
                ErrorCode.CONTAINER_START_FAILED,
                passthrough={404},
            )
        except DockerError:
            return None
        return str(data.get("Id", ""))

    async def list_containers(self, filters: Mapping[str, list[str]], code: ErrorCode) -> list[str]:
        """Ids of the containers (any state) that match the filters."""
        listed = await self.call(
            "list containers", lambda: self.client.containers.list(all=True, filters=dict(filters)), code
        )
        return [str(container.id) for container in listed]

    async def remove(self, container_id: str, code: ErrorCode) -> None:
        """Force-remove (with anonymous volumes); already gone counts as removed."""
        container = self.client.containers.container(container_id)
        try:
            await self.call(
                f"remove {container_id[:12]}",
                lambda: container.delete(force=True, v=True),
                code,
                daemon_errors_permanent=True,
                passthrough={404, 409},
            )
        except DockerError as err:
            if err.status == 409:  # "removal already in progress": wait until it is gone
                await self._until_gone(container_id, code)

    async def _until_gone(self, container_id: str, code: ErrorCode) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.docker_call_timeout_s
        while await self.inspect(container_id, code) is not None:
            if loop.time() >= deadline:
                raise permanent(code, f"container {container_id[:12]} was still being removed")
            await asyncio.sleep(self._settings.docker_poll_interval_s)

    async def pull(self, image: str, progress: Callable[[PullProgress], None] | None = None) -> None:
        """Pull a locally absent image with the registry's credentials (activities.registry_auth, read
        now): bounded by RTJOBS_DOCKER_PULL_TIMEOUT_S, errors in its stream count, a refused login says
        so; `progress` gets the pull's progress (activities.pull_progress) as it goes.
        """
        what = f"pull of {image}"
        registry = registry_of(image)
        auth_file = self._settings.registry_auth_path
        try:
            credentials = await credentials_for(image, auth_file, self._settings.docker_call_timeout_s)
        except RegistryAuthError as err:
            raise permanent(ErrorCode.IMAGE_PULL_FAILED, f"{what}: {err}") from None
        tracker = PullTracker(image, progress or (lambda _: None))

        async def consume() -> None:
            try:
                async for message in self._pull_stream(image, credentials):
                    if not isinstance(message, dict):
                        continue
                    if message.get("error") or message.get("errorDetail"):
                        detail = message.get("errorDetail") or {}
                        reason = message.get("error") or detail.get("message") or str(detail)
                        raise DockerStreamError(str(reason), error_detail=detail)
                    tracker.update(message)
            except DockerError as err:
                if login_refused(err):
                    used = f"credentials from {credentials.source}" if credentials else f"no credentials in {auth_file}"
                    raise permanent(
                        ErrorCode.IMAGE_PULL_FAILED,
                        f"{what}: authentication failed for registry {registry} ({used}): {err.message}",
                    ) from None
                raise

        await self.call(
            what,
            consume,
            ErrorCode.IMAGE_PULL_FAILED,
            daemon_errors_permanent=True,
            timeout_s=self._settings.docker_pull_timeout_s,
            overrun_code=ErrorCode.IMAGE_PULL_FAILED,
        )
        tracker.finish()
        if await self.image_id(image) is None:
            raise permanent(ErrorCode.IMAGE_PULL_FAILED, f"{what} ended without the image")

    def _pull_stream(self, image: str, credentials: RegistryCredentials | None) -> AsyncIterator[Any]:
        """`POST /images/create`'s JSON stream, with our own `X-Registry-Auth`: aiodocker's `images.pull`
        replaces the header's server address by the reference's first component and refuses a reference
        without one (`ubuntu`), which a Docker Hub login must be able to pull.
        """
        name, _, digest = image.partition("@")
        params = {"fromImage": image}
        if not digest and ":" not in name.rsplit("/", 1)[-1]:
            params["tag"] = "latest"  # an empty tag would pull every tag of the repository
        headers = {"X-Registry-Auth": credentials.header()} if credentials else {}
        docker = self.client
        query = docker._query(
            "images/create",
            "POST",
            params=params,
            headers=headers,
            timeout=docker._resolve_long_running_timeout(SENTINEL),  # bounded by `call`'s deadline
        )

        async def stream() -> AsyncIterator[Any]:
            async with query as response:
                async for item in json_stream_stream(response):
                    yield item

        return stream()


def login_refused(err: DockerError) -> bool:
    """Whether the daemon's error is the registry refusing the login (or asking for one)."""
    message = err.message.lower()
    return err.status == 401 or any(sign in message for sign in _LOGIN_REFUSED)
