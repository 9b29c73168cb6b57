"""The game network the engines join, made on first use.

Docker before API 1.44 can create two networks of one name when two creates race, and then every
container create on that name fails as ambiguous: creates in this process are serialised, and duplicates
made by another process are removed, keeping the oldest.
"""

from __future__ import annotations

import asyncio
from contextlib import suppress

from aiodocker.exceptions import DockerError
from aiodocker.networks import DockerNetwork

from activities.docker_gateway import DockerGateway
from activities.engine_spec import network_config
from contract.models import ErrorCode

_ANY_ANSWER = frozenset(range(400, 600))


class GameNetwork:
    """Remembers which network names this process has already made sure of."""

    def __init__(self, gateway: DockerGateway, name: str) -> None:
        self._gateway = gateway
        self.name = name
        self._known = False
        self._lock = asyncio.Lock()

    async def ensure(self) -> str:
        """The network's name, once it exists (checked or created only the first time)."""
        if self._known:
            return self.name
        async with self._lock:
            if not self._known:
                await self._create()
                self._known = True
        return self.name

    def forget(self) -> None:
        """Someone removed it behind our back: the next `ensure` makes it again."""
        self._known = False

    async def _create(self) -> None:
        gw, name, code = self._gateway, self.name, ErrorCode.CONTAINER_START_FAILED
        try:
            await gw.call(f"inspect network {name}", lambda: gw.client.networks.get(name), code, passthrough={404})
            return
        except DockerError:
            pass
        with suppress(DockerError):  # 409: a concurrent creator made it first
            await gw.call(
                f"create network {name}",
                lambda: gw.client.networks.create(network_config(name)),
                code,
                passthrough={409},
            )
        same_name = await gw.call(
            f"list networks {name}", lambda: gw.client.networks.list(filters={"name": [name]}), code
        )
        duplicates = sorted((n for n in same_name if n["Name"] == name), key=lambda n: (n["Created"], n["Id"]))
        for extra in duplicates[1:]:
            network = DockerNetwork(gw.client, extra["Id"])  # type: ignore[no-untyped-call]
            # Best effort, whatever the daemon answers (gone already, in use by a racing create).
            with suppress(DockerError):
                await gw.call(
                    f"remove duplicate network {extra['Id'][:12]}", network.delete, code, passthrough=_ANY_ANSWER
                )
