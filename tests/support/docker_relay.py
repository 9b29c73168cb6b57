"""A transparent Unix-socket relay in front of a dockerd, that can act just before one request passes.

The worker talks to the relay as to Docker (its DOCKER_HOST); every connection is piped to the daemon
byte for byte, and closed on both sides when either side closes, as a direct connection would be. The
one thing it adds: `before(marker, hook)` runs `hook` (in a thread) the first time a request whose
bytes contain `marker` comes, and forwards those bytes only once the hook has returned. With
`RestartableDockerd.freeze` as the hook, the daemon hangs at the exact moment that request reaches it
(it is queued, and served when the daemon is thawed), which no polling from outside could time.
And `cut(marker)`: until `restore()`, every request whose bytes contain `marker` is not forwarded and
its connection is closed on both sides, as a daemon gone away would leave it (the client sees the
server disconnect; aiohttp's one retry of an idempotent request on a new connection is cut too).

It also records each request's method and target (`requests`), read from the client's byte stream
(keep-alive connections, Content-Length and chunked bodies): the socket proxy's allowlist is derived
from what the worker really sent (tests/unit/deploy/test_socket_proxy.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

from tests.support.tcp_proxy import pump_until_either_ends


class RequestLog:
    """Parses one connection's client-to-daemon bytes into (method, target) of each HTTP request."""

    def __init__(self, into: list[tuple[str, str]]) -> None:
        self._into = into
        self._buf = b""
        self._body_left = 0  # bytes of a Content-Length body still to skip
        self._chunked = False
        self.broken = False  # bytes that are no HTTP request (recording stops for this connection)

    def feed(self, data: bytes) -> None:
        if self.broken:
            return
        self._buf += data
        while self._step():
            pass

    def _step(self) -> bool:
        if self._body_left:
            taken = min(self._body_left, len(self._buf))
            self._buf, self._body_left = self._buf[taken:], self._body_left - taken
            return bool(self._buf) and not self._body_left
        if self._chunked:
            return self._chunk()
        head, sep, rest = self._buf.partition(b"\r\n\r\n")
        if not sep:
            return False
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            self.broken = True
            return False
        self._into.append((parts[0], parts[1]))
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        self._buf = rest
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._chunked = True
        else:
            self._body_left = int(headers.get("content-length") or 0)
        return bool(self._buf)

    def _chunk(self) -> bool:
        size_line, sep, rest = self._buf.partition(b"\r\n")
        if not sep:
            return False
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:  # last chunk (no trailers from our clients): the request ends after its CRLF
            if len(rest) < 2:
                return False
            self._buf, self._chunked = rest[2:], False
            return bool(self._buf)
        if len(rest) < size + 2:
            return False
        self._buf = rest[size + 2 :]
        return bool(self._buf)


class DockerRelay:
    def __init__(self, upstream: Path, path: Path) -> None:
        self.upstream = upstream
        self.path = path
        self._marker = b""
        self._hook: Callable[[], None] | None = None
        self._cut = b""
        self.cuts = 0  # requests cut so far
        self.fired = asyncio.Event()
        self.hook_error: BaseException | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.requests: list[tuple[str, str]] = []  # (method, target) of every request relayed, in order
        self.unparsed = 0  # connections whose bytes were not all HTTP requests

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def before(self, marker: bytes, hook: Callable[[], None]) -> None:
        """Run `hook` once, before the first request containing `marker` is forwarded."""
        self._marker, self._hook = marker, hook
        self.fired.clear()

    def cut(self, marker: bytes) -> None:
        """Until `restore()`, cut every request containing `marker` (the daemon unreachable for it)."""
        self._cut = marker

    def restore(self) -> None:
        self._cut = b""

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

        log = RequestLog(self.requests)

        async def client_to_upstream() -> None:
            while data := await client_r.read(65536):
                if self._cut and self._cut in data:
                    self.cuts += 1
                    return  # not forwarded; both sides are closed below
                log.feed(data)
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
        except asyncio.CancelledError:
            # Only `__aexit__` cancels a connection (a client still connected when the relay closes). End
            # quietly: Python 3.11's server callback calls `exception()` on a cancelled handler task and
            # logs "Exception in callback ... CancelledError" (3.12 checks `cancelled()` first).
            pass
        finally:
            self.unparsed += log.broken
            self._tasks.discard(task)
