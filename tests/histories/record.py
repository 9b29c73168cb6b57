"""Record the histories that tests/replay/test_replay.py replays: `python -m tests.histories.record VERSION`
(e.g. `1.1`: versions are MAJOR.MINOR; 1.0 is the first version anyone ran).

Writes `tests/histories/VERSION/*.json` and `VERSION.sha256`, and refuses a version that exists:
a history of a released workflow version is never replaced (docs/development.md, "Changing workflow code").

Every history comes from a real run: its own Temporal dev server, Redis (REDIS_URL, default
127.0.0.1:6379), Docker (DOCKER_HOST when it answers, else a private dockerd, as in the tests) and
the worker as `rtjobs.hosting.serving` runs it, talking to Docker through a relay (tests/support/docker_relay.py:
byte for byte, but for the requests a scenario cuts; so Docker must be a unix socket). Re-record only
on purpose: a workflow change that breaks replay of the committed histories would break every run
still open in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiodocker
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle

from activities.fleet import Fleet, send_report
from activities.publish import redis_client
from contract.engine import DOCKER_UNAVAILABLE_TYPE, ENSURE_RUNNING_ACTIVITY
from contract.hosts import (
    DRAIN_UPDATE,
    FORGET_UPDATE,
    UNDRAIN_UPDATE,
    HostRef,
    HostReport,
    host_queue,
    host_workflow_id,
)
from contract.lock import LockGrant, lock_workflow_id
from contract.models import LABEL_GAME_ID, LABEL_MANAGED_BY, MANAGED_BY, JobResult, JobStatus, container_name
from contract.reconcile import RECONCILE_WORKFLOW, ReconcileRequest, ReconcileSummary
from contract.settings import Settings
from rtjobs.client import START_WORKFLOW, new_job_id, start_job, start_workflow_id, stop_job
from tests.support.docker_engine import DockerEngine, acquire_engine
from tests.support.docker_relay import DockerRelay
from tests.support.job_worker import e2e_settings, real_worker, remove_game_containers, until_running_container
from tests.support.runs import activity_runs, pending_attempt
from tests.support.stand_ins import until_listed
from tests.support.temporal_server import start_dev_server

HERE = Path(__file__).resolve().parent
WAIT_S = 120.0
# RTJOBS_HOST_WAIT_S of the recording worker: the silent host's job gives up on it this soon.
HOST_WAIT_S = 5.0

Handle = WorkflowHandle[Any, Any]


class Recorder:
    """Runs the scenarios on one worker and writes `{name}.json` for each recorded run."""

    def __init__(
        self,
        client: Client,
        engine: DockerEngine,
        settings: Settings,
        out: Path,
        only: set[str] | None = None,
        relay: DockerRelay | None = None,
    ) -> None:
        self.client = client
        self.engine = engine
        self.settings = settings
        self.out = out
        # Between the worker and Docker (None: the worker talks to the engine itself).
        self.relay = relay
        self.only = only  # `--add`: the histories to write (every scenario still runs, in its order)
        self.games: list[str] = []

    def game(self) -> str:
        self.games.append(f"hist-{uuid.uuid4().hex[:8]}")
        return self.games[-1]

    async def save(self, name: str, handle: Handle) -> None:
        if self.only is not None and name not in self.only:
            return
        history = await handle.fetch_history()
        text = json.dumps(json.loads(history.to_json()), indent=1, sort_keys=True) + "\n"
        with (self.out / f"{name}.json").open("x") as f:  # never over a recorded history
            f.write(text)
        print(f"recorded {name}: {len(history.events)} events of {handle.id}", file=sys.stderr)

    async def finish(
        self, name: str, handle: WorkflowHandle[Any, JobResult], expect: str, *, save: bool = True
    ) -> None:
        result = await asyncio.wait_for(handle.result(), WAIT_S)
        if result.error_code != expect:
            raise SystemExit(f"{name}: expected error_code {expect!r}, got {result}")
        if save:
            await self.save(name, handle)

    async def run(self) -> None:
        images, tq = self.engine.images, self.settings.task_queue
        gid = self.game()
        await self.finish("start_fresh", await start_job(self.client, gid, task_queue=tq), "")
        await self.finish("start_replay", await start_job(self.client, gid, task_queue=tq), "replay_no_op")
        await self.finish("stop_fresh", await stop_job(self.client, gid, stop_timeout_s=1, task_queue=tq), "")
        await self.finish("stop_replay", await stop_job(self.client, gid, task_queue=tq), "replay_no_op")

        exits = await start_job(self.client, self.game(), image=images.exits, task_queue=tq)
        await self.finish("start_container_exited", exits, "container_exited")

        cancelled_game = self.game()
        cancelled = await start_job(self.client, cancelled_game, image=images.never_healthy, task_queue=tq)
        async with aiodocker.Docker(url=self.engine.url) as docker:
            await until_running_container(docker, cancelled_game)
        await cancelled.cancel()
        await self.finish("start_cancelled", cancelled, "cancelled")

        invalid = await start_job(self.client, self.game(), image="Not A Ref", task_queue=tq)
        await self.finish("start_invalid_request", invalid, "invalid_request")
        await self.retried_step()

        bad = await self.client.start_workflow("StartRuntimeJob", {}, id=f"hist-bad-{uuid.uuid4().hex}", task_queue=tq)
        try:
            await asyncio.wait_for(bad.result(), WAIT_S)
            raise SystemExit("start_bad_payload: the run did not fail")
        except WorkflowFailureError:
            await self.save("start_bad_payload", bad)

        # Two jobs of one game together: the second waits for its turn; the lock's history has both.
        together = self.game()
        first = await start_job(self.client, together, image=images.slow_healthy, task_queue=tq)
        second = await stop_job(self.client, together, stop_timeout_s=1, task_queue=tq)
        await self.finish("start_together_first", first, "")
        await self.finish("stop_together_waited", second, "")
        await self.save("game_lock", self.client.get_workflow_handle(lock_workflow_id(together, tq)))
        await self.timeout_refused()
        await self.silent_host()
        # (From 1.1.) The real host's own workflow: its worker's reports, the reservations of the starts
        # above, the jobs' word of engines made and removed, a drain and an undrain.
        [real] = await Fleet(self.client, tq).views()
        await self.save("host", self.client.get_workflow_handle(host_workflow_id(tq, real.host_id)))
        await self.reconcile()

    async def retried_step(self) -> None:
        """A start whose Docker step failed its first attempt and succeeded on a retry: Docker is
        unreachable for the game's requests (the relay cuts them, as a daemon gone away would) until
        the first attempt has failed (DockerUnavailable, retryable), then answers again.
        """
        if self.relay is None:
            raise SystemExit("start_retried_step: needs the relay in front of a unix-socket Docker engine")
        gid = self.game()
        self.relay.cut(gid.encode())  # the step's first call (inspect of the game's container) names it
        try:
            handle = await start_job(self.client, gid, task_queue=self.settings.task_queue)
            deadline = time.monotonic() + WAIT_S
            while await pending_attempt(handle, ENSURE_RUNNING_ACTIVITY) < 2:
                if time.monotonic() > deadline:
                    raise SystemExit(f"start_retried_step: the step's first attempt did not fail within {WAIT_S:g} s")
                await asyncio.sleep(0.1)
        finally:
            self.relay.restore()
        await self.finish("start_retried_step", handle, "", save=False)
        [step] = await activity_runs(handle, ENSURE_RUNNING_ACTIVITY)
        if not (step.completed and step.attempt >= 2 and step.last_failure == DOCKER_UNAVAILABLE_TYPE):
            raise SystemExit(f"start_retried_step: expected a step retried after DockerUnavailable: {step}")
        await self.save("start_retried_step", handle)

    async def timeout_refused(self) -> None:
        """A start with a workflow execution timeout: refused at once, published, no turn taken."""
        gid = self.game()
        handle = await self.client.start_workflow(
            START_WORKFLOW,
            {"game_id": gid},
            id=start_workflow_id(gid, new_job_id()),
            task_queue=self.settings.task_queue,
            execution_timeout=timedelta(minutes=30),
            result_type=JobResult,
        )
        await self.finish("start_timeout_refused", handle, "invalid_request")

    async def silent_host(self) -> None:
        """A start placed on a host whose workers then fall silent (a host that reported once, whose
        queue nobody polls): the step is given up after RTJOBS_HOST_WAIT_S (`docker_unavailable`), the
        clean-up waits for the host, and ends once an operator forgets it.
        """
        tq = self.settings.task_queue
        fleet = Fleet(self.client, tq)
        [real] = await fleet.views()
        ghost = HostRef(host_id=f"ghost-{uuid.uuid4().hex[:8]}", name="ghost", queue="")
        ghost = ghost.model_copy(update={"queue": host_queue(tq, ghost.host_id)})
        await fleet.command(DRAIN_UPDATE, real.host_id)
        report = HostReport(host=ghost, worker="ghost-1", capacity=10, report_every_s=2)

        async def reporting() -> None:
            while True:
                await send_report(self.client, tq, report)
                await asyncio.sleep(1)

        # The ghost reports from before the start asks for a host until the start's step is on its queue
        # (under load a single report could age out first); then it falls silent.
        reporter = asyncio.create_task(reporting())
        try:
            await until_listed(self.client, tq, [ghost.host_id])
            gid = self.game()
            handle = await start_job(self.client, gid, task_queue=tq)
            for _ in range(int(WAIT_S * 10)):
                step = (await handle.query("status", result_type=JobStatus)).step
                if "on host ghost" in step:
                    break
                await asyncio.sleep(0.1)
            else:
                raise SystemExit(f"start_silent_host: the step never went to the ghost host ({step})")
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
        # Its result is published before the clean-up, which then waits for the host.
        for _ in range(int(WAIT_S)):
            if (await handle.query("status", result_type=JobStatus)).entry_id:
                break
            await asyncio.sleep(1)
        else:
            raise SystemExit(f"start_silent_host: no result published within {WAIT_S:g} s")
        await fleet.command(FORGET_UPDATE, ghost.host_id)
        await fleet.command(UNDRAIN_UPDATE, real.host_id)
        await self.finish("start_silent_host", handle, "docker_unavailable")
        # (From 1.1.) Its game's workflow: the clean-up ended with the host forgotten, so the record of
        # the engine is lost, and the workflow stays with that (1.0: it ended when idle).
        lock = self.client.get_workflow_handle(lock_workflow_id(gid, tq))
        record = await lock.query("placement", result_type=LockGrant)
        if not record.placement_lost:
            raise SystemExit(f"game_lock_lost: the record is not lost: {record}")
        await self.save("game_lock_lost", lock)

    async def reconcile(self) -> None:
        """(From v4.) A host with a stopped container of ours, a running engine without record and a
        record whose engine was removed by hand: one reconcile run removes, adopts and clears.

        With a grace of 0 it acts on every container of ours on the engine: record with a Docker engine
        of your own (unset DOCKER_HOST: a private dockerd), never one that others' engines run on.
        """
        tq = self.settings.task_queue
        gone = self.game()
        await self.finish("-", await start_job(self.client, gone, task_queue=tq), "", save=False)
        exited, unrecorded = self.game(), self.game()
        async with aiodocker.Docker(url=self.engine.url) as docker:
            await remove_game_containers(docker, gone)
            for game_id, cmd in ((exited, ["/bin/sh", "-c", "exit 3"]), (unrecorded, None)):
                labels = {LABEL_GAME_ID: game_id, LABEL_MANAGED_BY: MANAGED_BY}
                config: dict[str, Any] = {"Image": self.engine.images.healthy, "Labels": labels}
                config["HostConfig"] = {"NetworkMode": "none"}
                if cmd:
                    config["Cmd"] = cmd
                container = await docker.containers.create(config, name=container_name(game_id))
                await container.start()
                if cmd:
                    await container.wait()
        [view] = await Fleet(self.client, tq).views()
        host = HostRef(host_id=view.host_id, name=view.name, queue=view.queue)
        handle = await self.client.start_workflow(
            RECONCILE_WORKFLOW,
            ReconcileRequest(host=host, grace_s=0),
            id=f"hist-reconcile-{uuid.uuid4().hex[:8]}",
            task_queue=tq,
            result_type=ReconcileSummary,
        )
        summary = await asyncio.wait_for(handle.result(), WAIT_S)
        if summary.done_counts() != {"removed": 1, "adopted": 1, "cleared": 1}:
            raise SystemExit(f"reconcile: expected one removed, adopted and cleared: {summary}")
        await self.save("reconcile", handle)


async def lock_continued(engine: DockerEngine, out: Path, only: set[str] | None = None) -> None:
    """The game's workflow continuing as new between turns with waiters: on a server that allows a run
    3 updates (`history.maxTotalUpdates`), it is told to continue as new after the first take_turn
    updates; three jobs queued behind a slow start are carried into the next run.
    """
    env = await start_dev_server(["history.maxTotalUpdates=3"])
    settings = recording_settings(engine)
    recorder = Recorder(env.client, engine, settings, out, only)
    tq = settings.task_queue
    try:
        async with real_worker(env.client, settings):
            gid = recorder.game()
            first = await start_job(env.client, gid, image=engine.images.slow_healthy, task_queue=tq)
            behind = [
                await stop_job(env.client, gid, stop_timeout_s=1, task_queue=tq),
                await start_job(env.client, gid, task_queue=tq),
                await stop_job(env.client, gid, stop_timeout_s=1, task_queue=tq),
            ]
            for handle in [first, *behind]:
                await asyncio.wait_for(handle.result(), WAIT_S)
            lock_id = lock_workflow_id(gid, tq)
            runs = [w async for w in env.client.list_workflows(f"WorkflowId = '{lock_id}'")]
            continued = [
                w
                for w in sorted(runs, key=lambda w: w.start_time)
                if w.status == WorkflowExecutionStatus.CONTINUED_AS_NEW
            ]
            if not continued:
                raise SystemExit("game_lock_continued: the game's workflow never continued as new")
            await recorder.save(
                "game_lock_continued", env.client.get_workflow_handle(lock_id, run_id=continued[0].run_id)
            )
    finally:
        await cleanup(engine, recorder, settings)
        await env.shutdown()


def recording_settings(engine: DockerEngine, docker_url: str | None = None) -> Settings:
    """The recording worker's settings: `docker_url` (a relay in front of the engine) or the engine."""
    return e2e_settings(
        docker_url=docker_url or engine.url,
        redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        task_queue=f"hist-{uuid.uuid4().hex[:8]}",
        stream=f"hist:job_results:{uuid.uuid4().hex[:8]}",
        engine_image=engine.images.healthy,
        # Long enough for a cancellation to reach the never-healthy start before it times out.
        start_timeout_s=60.0,
        host_wait_s=HOST_WAIT_S,
    )


async def cleanup(engine: DockerEngine, recorder: Recorder, settings: Settings) -> None:
    async with aiodocker.Docker(url=engine.url) as docker:
        for game_id in recorder.games:
            await remove_game_containers(docker, game_id)
    redis = redis_client(settings.redis_url)
    await redis.delete(settings.results_stream, settings.engine_events_stream)
    await redis.aclose()


@asynccontextmanager
async def relayed(engine: DockerEngine) -> AsyncIterator[DockerRelay | None]:
    """A relay in front of a unix-socket engine (None for another kind: its scenarios cannot run)."""
    if not engine.url.startswith("unix://"):
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="rtjobs-hist-") as tmp:
        async with DockerRelay(Path(engine.url.removeprefix("unix://")), Path(tmp) / "docker.sock") as relay:
            yield relay


async def main(out: Path, only: set[str] | None = None) -> None:
    env = await start_dev_server()
    engine = await acquire_engine()
    try:
        async with relayed(engine) as relay:
            settings = recording_settings(engine, relay.url if relay is not None else None)
            recorder = Recorder(env.client, engine, settings, out, only, relay)
            try:
                async with real_worker(env.client, settings):
                    await recorder.run()
            finally:
                await cleanup(engine, recorder, settings)
        if only is None or "game_lock_continued" in only:
            await lock_continued(engine, out, only)
    finally:
        await engine.close()
        await env.shutdown()


def write_checksums(out: Path) -> None:
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in sorted(out.glob("*.json"))]
    (out.parent / f"{out.name}.sha256").write_text("".join(lines))


USAGE = """usage: python -m tests.histories.record VERSION [--add NAME ...]
  VERSION   MAJOR.MINOR, e.g. 1.2: a new version, every history recorded
  --add     histories a version lacks, added beside its others (which are never rewritten)"""

if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or not re.fullmatch(r"[1-9][0-9]*\.[0-9]+", args[0]) or (len(args) > 1 and args[1] != "--add"):
        raise SystemExit(USAGE)
    target = HERE / args[0]
    add = set(args[2:])
    if len(args) > 1 and not add:
        raise SystemExit(USAGE)
    if add:
        there = sorted(n for n in add if (target / f"{n}.json").exists())
        if not target.is_dir() or there:
            raise SystemExit(f"--add: {target} does not exist, or already has {there}: histories are never replaced")
        before = {p.name: p.read_bytes() for p in target.glob("*.json")}
    elif target.exists():
        raise SystemExit(f"{target} exists: released histories are never replaced; record a new version")
    else:
        target.mkdir()
    asyncio.run(main(target, add or None))
    if add and ({p.name: p.read_bytes() for p in target.glob("*.json") if p.name in before} != before):
        raise SystemExit("--add rewrote a history that was there: restore it from git")
    missing = sorted(n for n in add if not (target / f"{n}.json").exists())
    if missing:
        raise SystemExit(f"--add: no scenario records {missing}")
    write_checksums(target)
    os._exit(0)  # temporalio's core can abort at interpreter exit (sdk-python issue #300)
