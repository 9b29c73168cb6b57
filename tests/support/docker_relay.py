"""A transparent Unix-socket relay in front of a dockerd, that can act just before one request passes.

The worker talks to the relay as to Docker (its DOCKER_HOST); every connection is piped to the daemon
byte for byte, and closed on both sides when either side closes, as a direct connection would be. The
one thing it adds: `before(marker, hook)` runs `hook` (in a thread) the first time a request whose
bytes contain `marker` comes, and forwards those bytes only once the hook has returned. With
`RestartableDockerd.freeze` as the hook, the daemon hangs at the exact moment that request reaches it
(it is queued, and served when the daemon is thawed), which no polling from outside could time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

from tests.support.tcp_proxy import pump_until_either_ends


class DockerRelay:
    def __init__(self, upstream: Path, path: Path) -> None:
        self.upstream = upstream
        self.path = path
        self._marker = b""
        self._hook: Callable[[], None] | None = None
        self.fired = asyncio.Event()
        self.hook_error: BaseException | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def before(self, marker: bytes, hook: Callable[[], None]) -> None:
        """Run `hook` once, before the first request containing `marker` is forwarded."""
        self._marker, self._hook = marker, hook
        self.fired.clear()

    async def __aenter__(self) -> DockerRelay:
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await self._server.wait_closed()
        with contextlib.suppress(OSError):
            self.path.unlink()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_r, up_w = await asyncio.open_unix_connection(str(self.upstream))
        except OSError:
            client_w.close()
            self._tasks.discard(task)
            return

        async def client_to_upstream() -> None:
            while data := await client_r.read(65536):
                hook = self._hook
                if hook is not None and self._marker in data:
                    self._hook = None
                    try:
                        await asyncio.to_thread(hook)
                    except Exception as err:
                        self.hook_error = err
                        raise
                    finally:
                        self.fired.set()
                up_w.write(data)
                await up_w.drain()

        async def upstream_to_client() -> None:
            while data := await up_r.read(65536):
                client_w.write(data)
                await client_w.drain()

        try:
            await pump_until_either_ends([client_to_upstream(), upstream_to_client()], (client_w, up_w))
        finally:
            self._tasks.discard(task)
