"""The worker as operators run it: a real `python worker.py` process against the session's dev server.

Each test gives the worker its own task queue and result stream, and kills the process (group)
whatever happens, so a failing test leaves no worker behind.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from temporalio.api.enums.v1 import EventType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from contract.models import JobResult
from rtjobs.client import start_job, stop_job
from tests.support.binaries import temporal_cli
from tests.support.docker_engine import DockerEngine
from tests.support.processes import STARTUP_S, WORKER_READY, Process, start_ready_worker, start_worker
from tests.support.redis_server import free_port
from tests.support.streams import read_entries

IDLE_EXIT_WAIT_S = 60.0


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if " ERROR " in line]


# --- start-up checks --------------------------------------------------------------------------------


async def test_redis_unreachable_is_one_line_error_without_password(
    processes: list[Process], worker_env: dict[str, str]
) -> None:
    port = free_port()
    worker = start_worker(processes, {**worker_env, "REDIS_URL": f"redis://user:s3cret@127.0.0.1:{port}/0"})
    assert await worker.wait(STARTUP_S) == 1
    out = worker.output()
    assert "s3cret" not in out
    [line] = error_lines(out)
    assert f"Redis check failed at redis://user:***@127.0.0.1:{port}/0" in line


async def test_temporal_unreachable_is_one_line_error_without_api_key(
    processes: list[Process], worker_env: dict[str, str]
) -> None:
    port = free_port()
    env = {**worker_env, "TEMPORAL_ADDRESS": f"127.0.0.1:{port}", "TEMPORAL_API_KEY": "k3y-s3cret"}
    worker = start_worker(processes, env)
    assert await worker.wait(STARTUP_S) == 1
    out = worker.output()
    assert "k3y-s3cret" not in out
    [line] = error_lines(out)
    assert f"Temporal unreachable at 127.0.0.1:{port}" in line
    assert "api-key=***" in line


async def test_invalid_configuration_is_one_line_error(processes: list[Process], worker_env: dict[str, str]) -> None:
    worker = start_worker(processes, {**worker_env, "RTJOBS_STOP_TIMEOUT_S": "99999"})
    assert await worker.wait(STARTUP_S) == 1
    [line] = worker.output().strip().splitlines()
    assert line.startswith("worker.py: error: invalid configuration") and "stop_timeout_s" in line


# --- shutdown ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_idle_worker_exits_0_on_signal(processes: list[Process], worker_env: dict[str, str], signum: int) -> None:
    # With nothing running there is nothing to wait for: an idle worker must not sit out its grace
    # period. The grace is made far longer than the wait below, which is itself far longer than an
    # idle shutdown takes (under 0.1 s; bench/latency.py measures it): a worker that waited out the
    # grace fails, a slow machine does not.
    env = {**worker_env, "RTJOBS_GRACEFUL_SHUTDOWN_TIMEOUT_S": str(10 * IDLE_EXIT_WAIT_S)}
    worker = await start_ready_worker(processes, env)
    # Docker being away is only a warning: the worker runs, start jobs report docker_unavailable.
    assert "WARNING rtjobs.worker: Docker unreachable" in worker.output()
    worker.send(signum)
    assert await worker.wait(IDLE_EXIT_WAIT_S) == 0, worker.output()
    assert "worker stopped" in worker.output()


async def test_registers_missing_search_attributes(processes: list[Process], worker_env: dict[str, str]) -> None:
    bare = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(temporal_cli()), dev_server_log_level="error"
    )
    try:
        env = {**worker_env, "TEMPORAL_ADDRESS": bare.client.service_client.config.target_host}
        worker = await start_ready_worker(processes, env)
        assert (
            "registered search attributes GameId, RuntimeJobKind, RuntimeHost in namespace default" in worker.output()
        )
        listed = await bare.client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace="default")
        )
        assert {"GameId", "RuntimeJobKind", "RuntimeHost"} <= set(listed.custom_attributes)
        worker.send(signal.SIGTERM)
        assert await worker.wait(10) == 0
    finally:
        await bare.shutdown()


# --- a job in flight --------------------------------------------------------------------------------


@pytest.fixture
def game_id() -> str:
    return f"wp-{uuid.uuid4().hex[:10]}"


async def test_json_logs_are_one_object_per_line_with_the_job_context(
    processes: list[Process],
    worker_env: dict[str, str],
    temporal_env: WorkflowEnvironment,
    task_queue: str,
    game_id: str,
) -> None:
    # Docker away and a short host wait: the start reports docker_unavailable after 1 s, with the job's lines
    # (steps, placement retried) and warnings carrying exceptions on the way.
    env = {**worker_env, "RTJOBS_LOG_FORMAT": "json", "RTJOBS_HOST_WAIT_S": "1"}
    worker = await start_ready_worker(processes, env)
    handle = await start_job(temporal_env.client, game_id, task_queue=task_queue)
    result = await asyncio.wait_for(handle.result(), 60)
    assert result.error_code == "docker_unavailable", result
    worker.send(signal.SIGTERM)
    assert await worker.wait(30) == 0, worker.output()

    records = [json.loads(line) for line in worker.output().splitlines()]  # every line, or this fails
    for record in records:
        assert list(record)[:4] == ["time", "level", "logger", "message"], record
        assert record["time"].endswith("Z") and datetime.fromisoformat(record["time"]).utcoffset() == timedelta(0)
        assert isinstance(record.get("exception", ""), str)
    job = [r for r in records if r.get("workflow_id") == handle.id]
    assert any(r.get("game_id") == game_id and r.get("job_kind") == "start" for r in job), job
    assert all(r["run_id"] == handle.result_run_id for r in job if "run_id" in r)
    assert any(r["message"].startswith("worker polling task queue") for r in records)


@pytest.mark.docker
async def test_sigterm_mid_job_completes_with_exactly_one_result(
    processes: list[Process],
    worker_env: dict[str, str],
    temporal_env: WorkflowEnvironment,
    docker_engine: DockerEngine,
    redis: aioredis.Redis,
    stream: str,
    task_queue: str,
    game_id: str,
) -> None:
    env = {**worker_env, "DOCKER_HOST": docker_engine.url, "RTJOBS_GRACEFUL_SHUTDOWN_TIMEOUT_S": "30"}
    first = await start_ready_worker(processes, env)
    client = temporal_env.client
    # ~3 s from container start to healthy: long enough to stop the worker inside the activity.
    handle = await start_job(client, game_id, image=docker_engine.images.slow_healthy, task_queue=task_queue)
    await _until_activity_started(handle, "ensure_engine_running")

    began = time.monotonic()
    first.send(signal.SIGTERM)
    assert await first.wait(40) == 0, first.output()
    assert time.monotonic() - began > 1.0, "the worker did not wait for the running activity"

    second = start_worker(processes, env)  # the rest of the job (the publish) needs a worker
    await second.wait_for(WORKER_READY)
    result = await asyncio.wait_for(handle.result(), 60)
    assert result.outcome == "success", result
    entries = await read_entries(redis, stream)
    assert [JobResult.model_validate(fields) for _id, fields in entries] == [result]

    # The running activity was allowed to finish: it was never failed, timed out, cancelled or retried.
    bad = {
        EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED,
        EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT,
        EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED,
    }
    history = await handle.fetch_history()
    assert not [e for e in history.events if e.event_type in bad]

    stop = await stop_job(client, game_id, stop_timeout_s=0, task_queue=task_queue)
    assert (await asyncio.wait_for(stop.result(), 60)).outcome == "success"
    second.send(signal.SIGTERM)
    assert await second.wait(40) == 0


async def _until_activity_started(
    handle: WorkflowHandle[Any, JobResult], activity_type: str, timeout_s: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        desc = await handle.describe()
        for pending in desc.raw_description.pending_activities:
            if pending.activity_type.name == activity_type and pending.HasField("last_started_time"):
                return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{activity_type} did not start within {timeout_s}s")


async def test_dev_mode_runs_embedded_server_with_ui_and_stops_it(
    processes: list[Process], worker_env: dict[str, str], tmp_path: Path
) -> None:
    port, ui_port, metrics_port = free_port(), free_port(), free_port()
    env = {
        **worker_env,
        "TEMPORAL_ADDRESS": "127.0.0.1:1",  # ignored in --dev
        "RTJOBS_DEV_PORT": str(port),
        "RTJOBS_DEV_UI_PORT": str(ui_port),
        "RTJOBS_STATE_DIR": str(tmp_path),
        # (--dev's default 127.0.0.1:9464 may be taken by a `make run` on this machine)
        "RTJOBS_METRICS_ADDRESS": f"127.0.0.1:{metrics_port}",
    }
    worker = Process(["worker.py", "--dev"], env)
    processes.append(worker)
    await worker.wait_for(WORKER_READY)
    assert f"UI http://127.0.0.1:{ui_port}" in worker.output()
    assert f"TEMPORAL_ADDRESS=127.0.0.1:{port}" in worker.output()
    assert (tmp_path / "temporal-dev.db").is_file()
    assert f"metrics on http://127.0.0.1:{metrics_port}/metrics" in worker.output()
    worker.send(signal.SIGTERM)
    assert await worker.wait(20) == 0, worker.output()
    with pytest.raises(OSError):  # the dev server went with the worker
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
