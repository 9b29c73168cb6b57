"""A fleet of real Docker hosts for the tests: private dockerds (each with an engine ID of its own), real
`python worker.py` processes per host on one task queue, and what the tests read back: the registry's
view of the hosts, a game's placement, the engine containers on every host, and the `rtjobs` CLI.

Docker 20.10 (Debian's docker.io) derives the engine `ID` of `GET /info` from the daemon's trust key,
`/etc/docker/key.json` by default: every private dockerd on this machine would report the same ID.
The fleet keys a host by its marker volume instead (activities/hosts.py), but each daemon here still
gets a key of its own (the `deprecated-key-path` setting of a daemon.json; 20.10 has no command-line
flag for it), unless a test asks for one key shared by all (`fleet_hosts(shared_key=True)`), the
case of machines cloned from one image.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiodocker
import pytest
from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from activities.docker_gateway import DockerGateway
from activities.fleet import Fleet as TemporalFleet
from activities.hosts import host_marker
from contract.hosts import DRAIN_UPDATE, UNDRAIN_UPDATE, HostView
from contract.lock import LockGrant, lock_workflow_id
from contract.models import LABEL_GAME_ID, LABEL_MANAGED_BY, MANAGED_BY, JobResult
from contract.policies import PUBLISH_ACTIVITY
from contract.reconcile import schedule_id
from contract.settings import Settings
from rtjobs.client import start_job, stop_job
from tests.support.docker_engine import (
    IMAGE_CHANGES,
    EngineUnavailable,
    image_ref,
    import_image,
    rootfs_tar,
    static_busybox,
)
from tests.support.processes import ROOT, Process, process_env
from tests.support.restartable_dockerd import RestartableDockerd
from tests.support.runs import Run, activity_runs, results
from tests.support.streams import read_entries_at
from workflows.search import RUNTIME_HOST

HOST_NAMES = ("h1", "h2", "h3")
# The fleet's engine: the test image's httpd without a HEALTHCHECK (ready once it has run for
# RTJOBS_ENGINE_MIN_RUNNING_S). Thirty engines probed every second by `docker exec` are more than this
# 2-core machine runs on time: probes then exceed their 2 s timeout and healthy engines are reported
# unhealthy, which says nothing about the fleet. Same repository, so the default image policy admits it.
FLEET_IMAGE = image_ref("fleet")
FLEET_IMAGE_CHANGES = [c for c in IMAGE_CHANGES["healthy"] if not c.startswith("HEALTHCHECK")]
# The engines' network on every host (each daemon has its own; the module's daemons are private).
FLEET_NETWORK = "rtjobs-fleet-games"
# Generous: a worker process imports temporalio, connects Temporal, Redis and Docker and reports its
# host; on a loaded 2-core machine that has taken several seconds.
WORKER_READY_S = 60.0
CLI_TIMEOUT_S = 60.0
QUERY_CONCURRENCY = 16


class FleetDockerd(RestartableDockerd):
    """A private dockerd with its own trust key, hence its own engine ID (see the module's docstring),
    or with the key file `key_path` that other daemons use too (hence their engine ID).
    """

    def __init__(self, key_path: Path | None = None) -> None:
        super().__init__()
        config = self.dir / "daemon.json"
        config.write_text(json.dumps({"deprecated-key-path": str(key_path or self.dir / "key.json")}))
        # PrivateDockerd runs `self.binary` with its own flags; a wrapper adds the config file's.
        wrapper = self.dir / "dockerd-own-key"
        wrapper.write_text(f'#!/bin/sh\nexec {self.binary} --config-file={config} "$@"\n')
        wrapper.chmod(0o755)
        self.binary = str(wrapper)


@dataclass(frozen=True)
class FleetHost:
    name: str
    daemon: FleetDockerd
    host_id: str  # the id in the engine's marker volume, the fleet's key for the host
    engine_id: str  # the engine's ID (GET /info)

    @property
    def url(self) -> str:
        return self.daemon.url


@contextlib.asynccontextmanager
async def fleet_hosts(
    names: Iterable[str] = HOST_NAMES, *, shared_key: bool = False
) -> AsyncIterator[dict[str, FleetHost]]:
    """One private dockerd per name, with the fleet's engine image and its host marker (made here, as a
    worker would, so that a test knows each host's id up front), closed whatever happens; the test is
    skipped (a failure under CI=true) where no private dockerd can run. `shared_key`: every daemon uses
    one key file, so all report the same engine ID.
    """
    names = list(names)
    key_dir = tempfile.TemporaryDirectory(prefix="rtjobs-shared-key-")
    key_path = Path(key_dir.name) / "key.json" if shared_key else None
    try:
        static_busybox()
        # Made one after the other: a wrapper script being written while another thread forks and
        # execs would fail with ETXTBSY.
        daemons = [FleetDockerd(key_path) for _ in names]
    except EngineUnavailable as err:
        key_dir.cleanup()
        pytest.skip(f"no private dockerd: {err}")
    try:
        try:
            first = 1 if key_path is not None else 0
            # The first daemon makes the shared key file; started together, two could each write one.
            for daemon in daemons[:first]:
                await asyncio.to_thread(daemon.start)
            await asyncio.gather(*(asyncio.to_thread(d.start) for d in daemons[first:]))
        except EngineUnavailable as err:
            pytest.skip(f"no private dockerd: {err}")
        rootfs = rootfs_tar()
        hosts: dict[str, FleetHost] = {}
        for name, daemon in zip(names, daemons, strict=True):
            async with aiodocker.Docker(url=daemon.url) as docker:
                await import_image(docker, FLEET_IMAGE, rootfs, FLEET_IMAGE_CHANGES)
                info = await docker.system.info()
            gateway = DockerGateway(Settings(docker_host=daemon.url))
            try:
                marker = await host_marker(gateway, str(info["ID"]), str(info["Name"]))
            finally:
                await gateway.close()
            hosts[name] = FleetHost(name=name, daemon=daemon, host_id=marker.host_id, engine_id=str(info["ID"]))
        engine_ids = [h.engine_id for h in hosts.values()]
        expected = 1 if shared_key else len(engine_ids)
        assert len(set(engine_ids)) == expected, f"the private dockerds' engine IDs: {engine_ids}"
        yield hosts
    finally:
        await asyncio.gather(*(asyncio.to_thread(d.close) for d in daemons))
        key_dir.cleanup()


@dataclass(frozen=True)
class Engine:
    """One engine container as `GET /containers/json` lists it."""

    host: str
    game_id: str
    container_id: str
    state: str  # running, exited, created, ...


@dataclass
class Fleet:
    """The hosts, the worker processes serving them, and the parts every worker shares."""

    hosts: dict[str, FleetHost]
    client: Client
    task_queue: str
    stream: str
    redis_url: str
    # RTJOBS_* settings of every worker of this fleet (a test sets its own before starting them).
    settings: dict[str, str] = field(default_factory=dict)
    workers: dict[str, list[Process]] = field(default_factory=dict)

    def env(self, host: str, **overrides: str) -> dict[str, str]:
        base = {
            "TEMPORAL_ADDRESS": self.client.service_client.config.target_host,
            "TEMPORAL_NAMESPACE": self.client.namespace,
            "REDIS_URL": self.redis_url,
            "RTJOBS_TASK_QUEUE": self.task_queue,
            "RTJOBS_RESULTS_STREAM": self.stream,
            "DOCKER_HOST": self.hosts[host].url,
            "RTJOBS_HOST_NAME": host,
            # Live while a report came within 3 intervals (6 s): a worker starved of CPU for a while
            # on this loaded machine must not look dead; a killed one is seen dead within seconds.
            "RTJOBS_HOST_REPORT_EVERY_S": "2",
            "RTJOBS_ENGINE_IMAGE": FLEET_IMAGE,
            "RTJOBS_GAME_NETWORK": FLEET_NETWORK,
            "RTJOBS_ENGINE_MEMORY_BYTES": str(64 * 1024 * 1024),
            "RTJOBS_START_TIMEOUT_S": "20",
            "RTJOBS_STOP_TIMEOUT_S": "1",
            "RTJOBS_DOCKER_POLL_INTERVAL_S": "0.1",
            "RTJOBS_GRACEFUL_SHUTDOWN_TIMEOUT_S": "5",
        }
        return process_env(**{**base, **self.settings, **overrides})

    async def start_worker(self, host: str, **overrides: str) -> Process:
        """A real `python worker.py` next to `host`'s engine, once it serves the host's own queue."""
        proc = Process(["worker.py"], self.env(host, **overrides))
        self.workers.setdefault(host, []).append(proc)
        name = overrides.get("RTJOBS_HOST_NAME", host)
        await proc.wait_for(f"host {name} (id {self.hosts[host].host_id}, engine ", WORKER_READY_S)
        return proc

    async def start_workers(self, hosts: Iterable[str] | None = None, **overrides: str) -> None:
        """One worker per host (all hosts by default), started together, and every host live."""
        names = list(self.hosts if hosts is None else hosts)
        await asyncio.gather(*(self.start_worker(h, **overrides) for h in names))
        await self.until_hosts(lambda v: all(n in v and v[n].live for n in names), f"{names} live")

    def kill_worker(self, host: str, index: int = 0) -> Process:
        """SIGKILL one worker of the host."""
        proc = self.workers[host].pop(index)
        proc.kill()
        return proc

    def kill_workers(self, host: str) -> None:
        """SIGKILL every worker of the host: the host's engines go on; nobody serves its queue."""
        for proc in self.workers.pop(host, []):
            proc.kill()

    # --- what the fleet knows ------------------------------------------------------------------------

    async def host_views(self, answer_within_s: float = 30.0) -> dict[str, HostView]:
        """Every host's view, asked again while one does not answer: right after a worker's SIGKILL, a
        query of a host workflow that ran last on that worker waits on its dead sticky queue until the
        server stops counting the poller as live (~10 s, as long as a query's own timeout).
        """
        fleet = TemporalFleet(self.client, self.task_queue)
        deadline = time.monotonic() + answer_within_s
        while True:
            survey = await fleet.survey()
            if not survey.unanswered:
                return {v.name: v for v in survey.views}
            if time.monotonic() > deadline:
                raise AssertionError(f"hosts did not answer within {answer_within_s}s: {survey.unanswered}")
            await asyncio.sleep(0.2)

    async def until_hosts(
        self, ok: Callable[[dict[str, HostView]], bool], what: str, timeout_s: float = 60.0
    ) -> dict[str, HostView]:
        deadline = time.monotonic() + timeout_s
        while True:
            views = await self.host_views()
            if ok(views):
                return views
            if time.monotonic() > deadline:
                raise AssertionError(f"registry: not {what} within {timeout_s}s: {views}")
            await asyncio.sleep(0.2)

    async def placement(self, game_id: str) -> LockGrant:
        """What the game's own workflow remembers of where its engine lives."""
        handle = self.client.get_workflow_handle(lock_workflow_id(game_id, self.task_queue))
        turn: LockGrant = await handle.query("placement", result_type=LockGrant)
        return turn

    async def engines(self) -> list[Engine]:
        """Every engine container (any state) on every host of the fleet."""

        async def on(host: FleetHost) -> list[Engine]:
            async with aiodocker.Docker(url=host.url) as docker:
                listed = await docker.containers.list(all=True, filters={"label": [f"{LABEL_MANAGED_BY}={MANAGED_BY}"]})
            return [
                Engine(
                    host=host.name,
                    game_id=str(c._container.get("Labels", {}).get(LABEL_GAME_ID, "")),
                    container_id=str(c._container["Id"]),
                    state=str(c._container.get("State", "")),
                )
                for c in listed
            ]

        found = await asyncio.gather(*(on(h) for h in self.hosts.values()))
        return [engine for per_host in found for engine in per_host]

    async def engines_by_game(self) -> dict[str, list[Engine]]:
        by_game: dict[str, list[Engine]] = {}
        for engine in await self.engines():
            by_game.setdefault(engine.game_id, []).append(engine)
        return by_game

    async def cli(self, *args: str, host: str = HOST_NAMES[0]) -> subprocess.CompletedProcess[str]:
        """`python -m rtjobs.cli ARGS` with the environment of `host`'s workers."""
        return await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "rtjobs.cli", *args],
            cwd=ROOT,
            env=self.env(host),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
        )

    async def close(self) -> None:
        """Kill every worker, then remove every container the test's jobs made (the daemons stay).

        Each worker's warnings (counted) and last lines are printed first: a failed test shows them
        (pytest's captured teardown output), since a killed worker's log file goes with it.
        """
        for fleet_host in self.hosts.values():  # (the reconcile tests turn the schedules on)
            with contextlib.suppress(RPCError):
                await self.client.get_schedule_handle(schedule_id(self.task_queue, fleet_host.host_id)).delete()
        for host, procs in self.workers.items():
            for proc in procs:
                print(f"--- worker of {host} (pid {proc.proc.pid}):\n{log_digest(proc.output())}")
        for host in list(self.workers):
            self.kill_workers(host)
        await asyncio.gather(*(remove_engines(h) for h in self.hosts.values()))


def log_digest(output: str, last: int = 30) -> str:
    """A worker's log, short: each kind of warning or error with its count, then the last lines."""
    lines = output.splitlines()
    kinds = Counter(
        line.split(": ", 1)[-1][:200] for line in lines if " WARNING " in line or " ERROR " in line or " WARN" in line
    )
    counted = [f"{n:5d} x {kind}" for kind, n in kinds.most_common(20)]
    return "\n".join([*counted, "...", *(line[:300] for line in lines[-last:])])


async def remove_engines(host: FleetHost) -> None:
    async with aiodocker.Docker(url=host.url) as docker:
        for container in await docker.containers.list(all=True):
            with contextlib.suppress(aiodocker.DockerError):
                await container.delete(force=True, v=True)


@contextlib.asynccontextmanager
async def open_fleet(
    hosts: dict[str, FleetHost], temporal_env: WorkflowEnvironment, redis_url: str, task_queue: str, stream: str
) -> AsyncIterator[Fleet]:
    """A fleet on these hosts with no worker yet (the test sets `fleet.settings` first), closed whatever
    happens: its workers killed and its jobs' containers removed, the daemons left for the next test.
    """
    made = Fleet(hosts=hosts, client=temporal_env.client, task_queue=task_queue, stream=stream, redis_url=redis_url)
    try:
        yield made
    finally:
        await made.close()


# --- fixtures (imported by the fleet's test modules) -------------------------------------------------


# Not a speed bound: how long a scenario's jobs may take before a test calls it a hang.
HANG_S = 240.0

# tests/reliability/conftest.py imports the fixtures under these names (`fleet_fixture`, `fleet_daemons_fixture`);
# tests ask for them as `fleet` and `fleet_daemons`.


@pytest.fixture(scope="module", name="fleet_daemons")
async def fleet_daemons_fixture() -> AsyncIterator[dict[str, FleetHost]]:
    """The module's three hosts: started once, their containers removed after every test."""
    async with fleet_hosts() as started:
        yield started


@pytest.fixture(name="fleet")
async def fleet_fixture(
    fleet_daemons: dict[str, FleetHost], temporal_env: WorkflowEnvironment, redis_url: str, task_queue: str, stream: str
) -> AsyncIterator[Fleet]:
    """The test's fleet: its own task queue (so its own registry and host queues) and stream; no worker
    yet (the test sets `fleet.settings` first).
    """
    async with open_fleet(fleet_daemons, temporal_env, redis_url, task_queue, stream) as made:
        yield made


def game_ids(count: int, label: str = "g") -> list[str]:
    prefix = f"fl{uuid.uuid4().hex[:6]}"
    return [f"{prefix}-{label}{i}" for i in range(count)]


# --- jobs -------------------------------------------------------------------------------------------

START, STOP = "start", "stop"
FRESH = frozenset({("success", "")})
REPLAY = frozenset({("success", "replay_no_op")})


async def send(
    fleet: Fleet, kind: str, game_id: str, accepted: frozenset[tuple[str, str]], job: str | None = None
) -> Run:
    if kind == START:
        handle = await start_job(fleet.client, game_id, job=job, task_queue=fleet.task_queue)
    else:
        handle = await stop_job(fleet.client, game_id, job=job, task_queue=fleet.task_queue)
    return Run(game_id, handle, accepted)


async def run_jobs(
    fleet: Fleet, kind: str, ids: Iterable[str], accepted: frozenset[tuple[str, str]], timeout_s: float
) -> tuple[list[Run], list[JobResult]]:
    """One job of `kind` per game, all at once; their results once every one has ended."""
    runs = list(await asyncio.gather(*(send(fleet, kind, g, accepted) for g in ids)))
    return runs, await results(runs, timeout_s)


async def start_on(
    fleet: Fleet, per_host: Mapping[str, list[str]], timeout_s: float
) -> tuple[list[Run], dict[str, JobResult]]:
    """Fresh starts of each host's games, started while the fleet's other hosts are drained: placement
    samples hosts at random, so a test that needs games on a given host puts them there.
    """
    hosts = TemporalFleet(fleet.client, fleet.task_queue)
    runs: list[Run] = []
    finished: dict[str, JobResult] = {}
    for host, ids in per_host.items():
        others = [fleet.hosts[h].host_id for h in fleet.hosts if h != host]  # (ids: names may be shared)
        for other in others:
            await hosts.command(DRAIN_UPDATE, other)
        try:
            started, ended = await run_jobs(fleet, START, ids, FRESH, timeout_s)
        finally:
            for other in others:
                await hosts.command(UNDRAIN_UPDATE, other)
        runs += started
        finished.update(zip(ids, ended, strict=True))
    return runs, finished


async def send_games(fleet: Fleet, plan: Mapping[str, list[str]], accepted: frozenset[tuple[str, str]]) -> list[Run]:
    """Every game's jobs, games all at once; a game's jobs one after the other (each sent once the one
    before was accepted), as the Runtime Manager sends them.
    """

    async def game(game_id: str, kinds: list[str]) -> list[Run]:
        return [await send(fleet, kind, game_id, accepted, job=f"{i}") for i, kind in enumerate(kinds)]

    per_game = await asyncio.gather(*(game(g, kinds) for g, kinds in plan.items()))
    return [run for runs in per_game for run in runs]


async def until_stream_holds(fleet: Fleet, count: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while (length := len(await read_entries_at(fleet.redis_url, fleet.stream))) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{length} entries, not {count}, within {timeout_s}s")
        await asyncio.sleep(0.1)
    return length


async def ran_on(run: Run) -> str | None:
    """The host (name) a job ran its Docker step on, as its `RuntimeHost` search attribute says."""
    return (await run.handle.describe()).typed_search_attributes.get(RUNTIME_HOST)


# --- the verdict ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Done:
    """A finished run, with its stream entry (the one its `status` query names)."""

    run: Run
    kind: str  # start | stop
    result: JobResult
    entry_id: str


def kind_of(run: Run) -> str:
    return START if run.handle.id.startswith("runtime-start-") else STOP


async def one_entry_per_run(fleet: Fleet, runs: list[Run], timeout_s: float) -> list[Done]:
    """Every run ended with an accepted outcome, and its result is on the stream exactly once, under
    the entry id the run recorded; the stream holds nothing else. Returned in stream order.

    (`tests.support.runs.assert_one_entry_per_run`, for a few hundred runs: that one's `status`
    queries, one after the other, take a minute on this machine.)
    """
    finished = await results(runs, timeout_s)
    entries = await read_entries_at(fleet.redis_url, fleet.stream)
    assert len(entries) == len(runs), f"{len(entries)} entries for {len(runs)} runs: {entries}"
    by_id = dict(entries)
    order = {entry_id: i for i, (entry_id, _fields) in enumerate(entries)}
    limit = asyncio.Semaphore(QUERY_CONCURRENCY)

    async def entry_of(run: Run) -> str:
        # What the run's publish returned (its history): reading it costs the server one call, where
        # the run's `status` query would make a worker replay the whole closed run.
        async with limit:
            published = [a for a in await activity_runs(run.handle, PUBLISH_ACTIVITY) if a.completed]
        assert len(published) == 1, (run.handle.id, published)
        entry_id: str = json.loads(published[0].result)
        return entry_id

    entry_ids = await asyncio.gather(*(entry_of(r) for r in runs))
    done = []
    for run, result, entry_id in zip(runs, finished, entry_ids, strict=True):
        assert entry_id in by_id, f"{run.handle.id}: entry {entry_id!r} not on the stream"
        assert JobResult.model_validate(by_id[entry_id]) == result, (run.handle.id, by_id[entry_id], result)
        assert (result.outcome, result.error_code) in run.accepted, (run.handle.id, result)
        done.append(Done(run=run, kind=kind_of(run), result=result, entry_id=entry_id))
    assert len({d.entry_id for d in done}) == len(runs), "two runs name the same entry"
    return sorted(done, key=lambda d: order[d.entry_id])


def replay_states(done: list[Done]) -> dict[str, str | None]:
    """Each game's engine after its jobs, replayed in stream order (the order they ran in), checking
    that every result fits what came before it: a start replay names the running engine, a fresh stop
    removes it, a fresh start makes a new one. Returns each game's running container id (None: none).

    A stop may report `replay_no_op` for an engine it did remove: its first attempt removed it and
    died with its worker; the retry finds nothing (as on a single host).
    """
    state: dict[str, str | None] = {}
    for d in done:
        game, result = d.run.game_id, d.result
        before = state.get(game)
        assert result.outcome == "success", (d.run.handle.id, result)
        if d.kind == START:
            if result.error_code == "replay_no_op":
                assert result.container_id == before, (d.run.handle.id, "start replay of", before, result)
            else:
                assert result.container_id and result.container_id != before, (d.run.handle.id, before, result)
            state[game] = result.container_id
        else:
            if result.error_code != "replay_no_op":
                assert result.container_id == before, (d.run.handle.id, "stop of", before, result)
            state[game] = None
    return state


async def assert_engines_as(fleet: Fleet, expected: Mapping[str, str | None]) -> dict[str, str]:
    """Each game has exactly the engine `expected` says (a running container of that id on one host)
    or none on any host, and a game's own workflow, when it knows the placement, names that host.
    Returns the host of each game that has an engine.
    """
    by_game = await fleet.engines_by_game()
    where: dict[str, str] = {}
    for game_id, container_id in expected.items():
        found = [(e.host, e.container_id, e.state) for e in by_game.get(game_id, [])]
        if container_id is None:
            assert found == [], (game_id, found)
            continue
        assert len(found) == 1 and found[0][1:] == (container_id, "running"), (game_id, container_id, found)
        where[game_id] = found[0][0]
    turns = await asyncio.gather(*(fleet.placement(g) for g in where))
    for (game_id, host), turn in zip(where.items(), turns, strict=True):
        if turn.placement_known:
            assert turn.placement is not None, (game_id, turn)
            assert (turn.placement.host.name, turn.placement.container_id) == (host, expected[game_id]), (game_id, turn)
    return where
