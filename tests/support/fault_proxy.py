"""A Redis TCP proxy that injects reply faults after the command has reached Redis.

Extends `LossyProxy` (which loses one armed reply) with two steady modes the fault suite needs:
dropping a seeded share of write replies (and cutting the connection, as a network would), and
holding every write reply back (the write is done, the worker never hears of it) until released.
Error replies (e.g. NOSCRIPT) always pass: they did not write anything.
"""

from __future__ import annotations

import asyncio
import random

from tests.support.tcp_proxy import LossyProxy, pump_until_either_ends


class FaultProxy(LossyProxy):
    """`drop_share` of trigger replies are dropped with a cut; while `holding`, they are withheld."""

    def __init__(self, upstream_port: int, *, drop_share: float = 0.0, seed: int = 1) -> None:
        super().__init__(upstream_port)
        self.drop_share = drop_share
        self.holding = False
        self.dropped = 0
        self.held = 0
        self.passed = 0
        self._rng = random.Random(seed)

    async def __aenter__(self) -> FaultProxy:
        await super().__aenter__()
        return self

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_r, up_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.close()
            self._tasks.discard(task)
            return
        # Replies come in command order on one connection: one flag per trigger command in flight.
        awaiting: list[bool] = []

        async def client_to_upstream() -> None:
            while data := await client_r.read(65536):
                if self.trigger in data:
                    awaiting.append(True)
                up_w.write(data)
                await up_w.drain()

        async def upstream_to_client() -> None:
            while data := await up_r.read(65536):
                if awaiting:
                    awaiting.pop(0)
                    if not data.startswith(b"-"):
                        if self.holding:
                            self.held += 1
                            await asyncio.Event().wait()  # withheld until the connection is closed
                        if self._rng.random() < self.drop_share:
                            self.dropped += 1
                            return  # dropped; the finally below cuts both sides
                        self.passed += 1
                client_w.write(data)
                await client_w.drain()

        try:
            await pump_until_either_ends([client_to_upstream(), upstream_to_client()], (client_w, up_w))
        finally:
            self._tasks.discard(task)
