"""This worker's host in the fleet: which Docker engine it is, and its reports to the host's workflow
(`workflows/host.py`).

A host is keyed (and its task queue named) by the id in its marker volume `rtjobs-host`, not by the
engine's own `ID`, which cloned machines and daemons sharing a key file report alike (docs/fleet.md).
A marker copied with a daemon's data root is told from the labels it carries and warned of.
`RTJOBS_HOST_NAME` (default the engine's `Name`) is what operators read and type.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiodocker.exceptions import DockerError
from temporalio.client import Client

from activities.docker_gateway import DockerGateway
from activities.engine_spec import ours_filters
from activities.fleet import Fleet, send_report
from contract.hosts import HostRef, HostReport, host_queue
from contract.models import LABEL_GAME_ID, ErrorCode
from contract.settings import Settings
from rtjobs.ops.metrics import record_engines

log = logging.getLogger("rtjobs.hosts")

# A Docker engine may advertise how many engines it takes: `dockerd --label rtjobs.max-engines=40`.
CAPACITY_LABEL = "rtjobs.max-engines"
IDENTIFY_TIMEOUT_S = 10.0


# The host's marker: a named local volume, which lives in the daemon's data root (never in a key file).
# `docker volume prune` of Docker 20.10 removes unused named volumes too: a host that loses its marker
# while engines of ours run there takes back its id from the fleet's inventory (`adopt_from_fleet`).
HOST_VOLUME = "rtjobs-host"
HOST_ID_LABEL = "rtjobs.host-id"
# Who made the marker: a marker whose engine is not this one says the data root was copied (a clone).
MARKER_ENGINE_ID_LABEL = "rtjobs.engine-id"
MARKER_ENGINE_NAME_LABEL = "rtjobs.engine-name"
# How many of the engine's games a worker without a marker looks up in the fleet.
ADOPT_SAMPLE = 20
# A reporter counts the fleet's hosts (one visibility call) every this many reports.
COUNT_HOSTS_EVERY = 10

# Given the games with a container of ours here, the host id the fleet knows them under (None: unknown).
Adopt = Callable[[Sequence[str]], Awaitable[str | None]]


@dataclass(frozen=True)
class HostMarker:
    """The `rtjobs-host` volume's labels: the host id, and the engine (ID, Name) that made it."""

    host_id: str
    engine_id: str
    engine_name: str


@dataclass(frozen=True)
class HostFacts:
    """What a worker learns about its Docker engine at start-up."""

    ref: HostRef
    capacity: int
    capacity_from: str
    docker_version: str
    network_driver: str
    # The engine's own `ID` and `Name` (GET /info): not the host's key, only compared with the marker's.
    engine_id: str = ""
    engine_name: str = ""
    marker: HostMarker | None = None

    def clone_hint(self) -> str:
        """Why this engine's marker looks copied from another engine ("" when it does not)."""
        marker = self.marker
        if marker is None or (marker.engine_id, marker.engine_name) == (self.engine_id, self.engine_name):
            return ""
        return (
            f"the marker volume {HOST_VOLUME} (host id {marker.host_id}) was made by engine {marker.engine_id} "
            f"named {marker.engine_name!r}, not by this engine ({self.engine_id}, {self.engine_name!r}): if this "
            f"machine's Docker state was copied from another host (a clone), both are one host to the fleet; on "
            f"the clone remove the {HOST_VOLUME} volume and the copied engine containers, then restart its workers "
            "(README: Running a fleet)"
        )


async def identify_host(gateway: DockerGateway, settings: Settings, adopt: Adopt | None = None) -> HostFacts:
    """The host's id (its marker volume, made on first use), the engine's capacity (`GET /info`), and
    its game network's driver (if made). `adopt` is asked only when the marker is missing while
    containers of ours run here (see `host_marker`).
    """
    code = ErrorCode.DOCKER_UNAVAILABLE
    info = await gateway.call("docker info", gateway.client.system.info, code, timeout_s=IDENTIFY_TIMEOUT_S)
    engine_id = str(info.get("ID") or "")
    engine_name = str(info.get("Name") or "")
    marker = await host_marker(gateway, engine_id, engine_name, adopt)
    host_id = marker.host_id
    name = settings.host_name or engine_name or host_id
    capacity, capacity_from = _capacity(info, settings)
    driver = await network_driver(gateway, settings.game_network)
    return HostFacts(
        ref=HostRef(host_id=host_id, name=name, queue=host_queue(settings.task_queue, host_id)),
        capacity=capacity,
        capacity_from=capacity_from,
        docker_version=str(info.get("ServerVersion") or ""),
        network_driver=driver,
        engine_id=engine_id,
        engine_name=engine_name,
        marker=marker,
    )


async def host_marker(
    gateway: DockerGateway, engine_id: str, engine_name: str, adopt: Adopt | None = None
) -> HostMarker:
    """The engine's marker, made when missing: create-then-inspect, so that workers racing on one engine
    all adopt the label of the one volume that exists (a create of an existing name returns it as is).

    A new marker gets a fresh uuid4, unless containers of ours already run here (a marker pruned
    away, e.g. by `docker volume prune`): then the host the fleet has their games on
    (`adopt`) keeps its id, so their placements and queue stay valid.
    """
    found = await _read_marker(gateway)
    if found is not None:
        return found
    host_id = ""
    games = await _games_here(gateway)
    if games and adopt is not None:
        try:
            host_id = await adopt(games) or ""
        except Exception as err:
            raise RuntimeError(
                f"no marker volume {HOST_VOLUME} while {len(games)} games have engines here, and the fleet could "
                f"not say which host they are placed on (asked again later): {type(err).__name__}: {err}"
            ) from None
        if host_id:
            log.info(
                "host marker %s made with the id the fleet knows this engine's games under: %s", HOST_VOLUME, host_id
            )
    labels = {
        HOST_ID_LABEL: host_id or str(uuid.uuid4()),
        MARKER_ENGINE_ID_LABEL: engine_id,
        MARKER_ENGINE_NAME_LABEL: engine_name,
    }
    await gateway.call(
        f"create volume {HOST_VOLUME}",
        lambda: gateway.client.volumes.create({"Name": HOST_VOLUME, "Labels": labels}),  # type: ignore[no-untyped-call]
        ErrorCode.DOCKER_UNAVAILABLE,
    )
    made = await _read_marker(gateway)
    if made is None:
        raise RuntimeError(f"the Docker engine's volume {HOST_VOLUME} vanished right after it was made")
    return made


async def _read_marker(gateway: DockerGateway) -> HostMarker | None:
    async def inspect() -> dict[str, Any]:
        volume = await gateway.client.volumes.get(HOST_VOLUME)  # type: ignore[no-untyped-call]
        shown: dict[str, Any] = await volume.show()
        return shown

    try:
        data = await gateway.call(
            f"inspect volume {HOST_VOLUME}", inspect, ErrorCode.DOCKER_UNAVAILABLE, passthrough={404}
        )
    except DockerError:
        return None
    labels = data.get("Labels") or {}
    host_id = str(labels.get(HOST_ID_LABEL) or "")
    if not host_id:
        raise RuntimeError(
            f"the Docker engine's volume {HOST_VOLUME} has no {HOST_ID_LABEL} label (not made by rtjobs?): remove it "
            "and restart the worker"
        )
    return HostMarker(
        host_id=host_id,
        engine_id=str(labels.get(MARKER_ENGINE_ID_LABEL) or ""),
        engine_name=str(labels.get(MARKER_ENGINE_NAME_LABEL) or ""),
    )


async def _games_here(gateway: DockerGateway) -> list[str]:
    """Games with a container of ours on the engine, in any state."""
    containers = await gateway.call(
        "list engine containers",
        lambda: gateway.client.containers.list(all=True, filters=ours_filters()),
        ErrorCode.DOCKER_UNAVAILABLE,
    )
    games = {str(c._container.get("Labels", {}).get(LABEL_GAME_ID, "")) for c in containers}
    return sorted(g for g in games if g)


def adopt_from_fleet(client: Client, task_queue: str) -> Adopt:
    """Asks the fleet's hosts (their `has_games` query) which of them holds these games: the id most of
    them are found under. No host yet: None (a new fleet). A failure raises, so the worker asks again
    later rather than give engines that the fleet placed here a new, unknown host.
    """

    async def adopt(games: Sequence[str]) -> str | None:
        fleet = Fleet(client, task_queue)
        sample = list(games)[:ADOPT_SAMPLE]
        hosts = await fleet.hosts(fresh=True)
        counts = {h.host_id: len(await fleet.has_games(h, sample)) for h in hosts}
        counts = {h: n for h, n in counts.items() if n}
        return max(counts, key=lambda h: (counts[h], h)) if counts else None

    return adopt


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


def report_interval(hosts: int, settings: Settings) -> float:
    """Seconds between a worker's reports in a fleet of `hosts`: RTJOBS_HOST_REPORT_EVERY_S, or longer
    once the fleet would report more than RTJOBS_FLEET_REPORTS_PER_S times a second (as Nomad scales its
    heartbeats: the servers' load from reports stops growing with the fleet).
    """
    return max(settings.host_report_every_s, hosts / settings.fleet_reports_per_s)


class HostReporter:
    """Reports the host to its workflow now and then every `report_interval` seconds: a host whose
    workers all stop reporting gets no new engines, and its games wait for it (RTJOBS_HOST_WAIT_S).
    Each report names the interval to the next, by which its workflow judges the host live.
    """

    def __init__(self, client: Client, gateway: DockerGateway, settings: Settings, facts: HostFacts) -> None:
        self._client = client
        self._gateway = gateway
        self._settings = settings
        self.facts = facts
        self.every_s = settings.host_report_every_s
        self._fleet = Fleet(client, settings.task_queue)
        self._reports_since_count = COUNT_HOSTS_EVERY  # counted before the first periodic report
        self._pause_s: float | None = None  # the pause before the next report, when not every_s

    async def _next_interval(self) -> None:
        """Sets the interval for the coming report: the fleet counted again every COUNT_HOSTS_EVERY reports
        (a count that fails keeps the interval, and is tried again at the next report).
        """
        self._reports_since_count += 1
        if self._reports_since_count >= COUNT_HOSTS_EVERY:
            try:
                interval = report_interval(await self._fleet.count(), self._settings)
            except Exception as err:  # a failed count only keeps the interval
                log.debug("could not count the fleet's hosts: %s", err)
                return
            self._reports_since_count = 0
            if interval != self.every_s:
                # Workers that started together would report in step at the new interval too (seen: 1,000
                # hosts' reports within 12 s of every 50 s, the placements' p99 4 s meanwhile): the report
                # after this one comes at a random point of the new interval (early is never late).
                self._pause_s = random.uniform(0.0, interval)
            self.every_s = interval

    def pause_s(self) -> float:
        """How long the loop waits before the next report: the interval, or once after it changed, less."""
        pause, self._pause_s = self._pause_s, None
        return self.every_s if pause is None else pause

    async def report(self) -> None:
        """One report (signal-with-start: the host's first report starts its workflow)."""
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
            report_every_s=self.every_s,
            docker_version=self.facts.docker_version,
            network_driver=self.facts.network_driver,
        )
        record_engines(self._client, self.facts.ref.name, len(games), self.facts.capacity)
        await send_report(self._client, self._settings.task_queue, report)

    async def _games(self) -> list[str]:
        """Games with a container of ours here, in any state (what must never be placed elsewhere)."""
        return await _games_here(self._gateway)

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
        failing = False
        while True:
            # As long as the last report said (its workflow counts the host live for LIVE_REPORTS of it).
            await asyncio.sleep(self.pause_s())
            try:
                # (asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
                # arrives as the report completes, and the loop would outlive the worker's shutdown.)
                async with asyncio.timeout(max(self.every_s, 5.0)):
                    await self._next_interval()
                    await self.report()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # a missed report only ages the host; the next one may work
                if not failing:
                    log.warning("could not report host %s to its workflow: %s", self.facts.ref.name, err)
                failing = True
            else:
                if failing:
                    log.info("reporting host %s to its workflow again", self.facts.ref.name)
                failing = False
