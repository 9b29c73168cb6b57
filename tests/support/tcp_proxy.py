"""A loopback TCP proxy that can lose a reply: the command reaches Redis, its answer never comes back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Sequence
from typing import Any


class LossyProxy:
    """Forwards bytes both ways; when armed, the first reply to a command containing `trigger` is
    swallowed and both connections are cut, exactly like a network that died after the write.
    """

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.trigger = b"EVALSHA"
        self.armed = 0
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> LossyProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def lose_next_reply(self, times: int = 1) -> None:
        self.armed = times

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(*self.upstream)
        pending_cut = asyncio.Event()

        async def client_to_upstream() -> None:
            while data := await client_r.read(65536):
                if self.armed and self.trigger in data:
                    self.armed -= 1
                    pending_cut.set()
                up_w.write(data)
                await up_w.drain()

        async def upstream_to_client() -> None:
            while data := await up_r.read(65536):
                if pending_cut.is_set():
                    self.cuts += 1
                    return  # the reply is dropped; the finally below cuts both sides
                client_w.write(data)
                await client_w.drain()

        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await pump_until_either_ends([client_to_upstream(), upstream_to_client()], (client_w, up_w))
        finally:
            self._tasks.discard(task)


async def pump_until_either_ends(
    pumps: Sequence[Coroutine[Any, Any, None]], writers: Sequence[asyncio.StreamWriter]
) -> None:
    """Run both directions of a relayed connection until either ends (or is cancelled), then close both
    sides: a peer that hung up, or a cut the proxy decided, ends the whole connection.
    """
    tasks = [asyncio.create_task(pump) for pump in pumps]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pump in tasks:
            pump.cancel()
        for writer in writers:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
