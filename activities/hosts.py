"""This worker's host in the fleet: who the Docker engine is, and reporting it to the host registry
(the placement activity, which asks the registry, is `activities/placement.py`).

The engine names itself: its `ID` (stable across daemon restarts, from `GET /info`) keys the host and
its task queue; `RTJOBS_HOST_NAME` (default the engine's `Name`) is what operators read and type.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from aiodocker.exceptions import DockerError
from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy

from activities.docker_gateway import DockerGateway
from activities.engine_spec import ours_filters
from contract.hosts import (
    REPORT_SIGNAL,
    HostRef,
    HostReport,
    RegistryState,
    host_queue,
    registry_workflow_id,
)
from contract.lock import coordination_queue
from contract.models import LABEL_GAME_ID, ErrorCode
from contract.settings import Settings
from metrics import record_engines
from workflows.hosts import HostRegistry

log = logging.getLogger("rtjobs.hosts")

# A Docker engine may advertise how many engines it takes: `dockerd --label rtjobs.max-engines=40`.
CAPACITY_LABEL = "rtjobs.max-engines"
IDENTIFY_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class HostFacts:
    """What a worker learns about its Docker engine at start-up."""

    ref: HostRef
    capacity: int
    capacity_from: str
    docker_version: str
    network_driver: str


async def identify_host(gateway: DockerGateway, settings: Settings) -> HostFacts:
    """The engine's identity and capacity (`GET /info`), and its game network's driver (if made)."""
    code = ErrorCode.DOCKER_UNAVAILABLE
    info = await gateway.call("docker info", gateway.client.system.info, code, timeout_s=IDENTIFY_TIMEOUT_S)
    host_id = str(info.get("ID") or "")
    if not host_id:
        raise RuntimeError("the Docker engine reported no ID in GET /info")
    name = settings.host_name or str(info.get("Name") or host_id)
    capacity, capacity_from = _capacity(info, settings)
    driver = await network_driver(gateway, settings.game_network)
    return HostFacts(
        ref=HostRef(host_id=host_id, name=name, queue=host_queue(settings.task_queue, host_id)),
        capacity=capacity,
        capacity_from=capacity_from,
        docker_version=str(info.get("ServerVersion") or ""),
        network_driver=driver,
    )


async def network_driver(gateway: DockerGateway, name: str) -> str:
    """`driver/scope` of the game network (e.g. `overlay/swarm`, `bridge/local`); "" while it does not exist."""
    with contextlib.suppress(DockerError):
        network = await gateway.call(
            f"inspect network {name}",
            lambda: gateway.client.networks.get(name),
            ErrorCode.DOCKER_UNAVAILABLE,
            passthrough={404},
        )
        details = await network.show()
        return f"{details.get('Driver', '')}/{details.get('Scope', '')}"
    return ""


def _capacity(info: Mapping[str, Any], settings: Settings) -> tuple[int, str]:
    if settings.host_max_engines is not None:
        return settings.host_max_engines, "RTJOBS_HOST_MAX_ENGINES"
    labels = info.get("Labels") or []
    for label in labels if isinstance(labels, list) else []:
        key, _, value = str(label).partition("=")
        if key == CAPACITY_LABEL and value.strip().isdigit():
            return int(value), f"engine label {CAPACITY_LABEL}"
    memory = int(str(info.get("MemTotal") or 0))
    return max(1, memory // settings.engine_memory_bytes), "engine memory / RTJOBS_ENGINE_MEMORY_BYTES"


def registry_start_options(task_queue: str) -> dict[str, Any]:
    """How the fleet's registry is started by whoever reaches it first: a worker's report here, a job's
    placement (`activities/placement.py`)."""
    return {
        "id": registry_workflow_id(task_queue),
        "task_queue": coordination_queue(task_queue),
        "id_reuse_policy": WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        "static_summary": f"the Docker hosts of task queue {task_queue}",
    }


async def send_report(client: Client, task_queue: str, report: HostReport) -> None:
    """Signal-with-start of the fleet's registry: the first report of a fleet starts it."""
    await client.start_workflow(
        HostRegistry.run,
        RegistryState(task_queue=task_queue),
        start_signal=REPORT_SIGNAL,
        start_signal_args=[report],
        **registry_start_options(task_queue),
    )


class HostReporter:
    """Reports the host to the registry now and then every RTJOBS_HOST_REPORT_EVERY_S: a host whose
    workers all stop reporting gets no new engines, and its games wait for it (RTJOBS_HOST_WAIT_S)."""

    def __init__(self, client: Client, gateway: DockerGateway, settings: Settings, facts: HostFacts) -> None:
        self._client = client
        self._gateway = gateway
        self._settings = settings
        self.facts = facts

    async def report(self) -> None:
        """One report (signal-with-start: the first worker of a fleet starts the registry)."""
        games = await self._games()
        if not self.facts.network_driver:
            # The first start makes the game network: report its driver from then on.
            driver = await network_driver(self._gateway, self._settings.game_network)
            if driver:
                self.facts = dataclasses.replace(self.facts, network_driver=driver)
        report = HostReport(
            host=self.facts.ref,
            worker=self._client.identity,
            capacity=self.facts.capacity,
            games=games,
            report_every_s=self._settings.host_report_every_s,
            docker_version=self.facts.docker_version,
            network_driver=self.facts.network_driver,
        )
        record_engines(self._client, self.facts.ref.name, len(games), self.facts.capacity)
        await send_report(self._client, self._settings.task_queue, report)

    async def _games(self) -> list[str]:
        """Games with a container of ours here, in any state (what must never be placed elsewhere)."""
        code = ErrorCode.DOCKER_UNAVAILABLE
        containers = await self._gateway.call(
            "list engine containers",
            lambda: self._gateway.client.containers.list(all=True, filters=ours_filters()),
            code,
        )
        games = {str(c._container.get("Labels", {}).get(LABEL_GAME_ID, "")) for c in containers}
        return sorted(g for g in games if g)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        task = asyncio.create_task(self._loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        every = self._settings.host_report_every_s
        failing = False
        while True:
            await asyncio.sleep(every)
            try:
                await asyncio.wait_for(self.report(), timeout=max(every, 5.0))
            except asyncio.CancelledError:
                raise
            except Exception as err:  # a missed report only ages the host; the next one may work
                if not failing:
                    log.warning("could not report host %s to the registry: %s", self.facts.ref.name, err)
                failing = True
            else:
                if failing:
                    log.info("reporting host %s to the registry again", self.facts.ref.name)
                failing = False
