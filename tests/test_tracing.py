"""Tracing: the real worker with the SDK's OpenTelemetry interceptor (`tracing.interceptor`) exporting to an
in-memory exporter; a start job begun by a starter without tracing (as the Go Runtime Manager and the CLI
begin them) gives its workflow span, Docker step span and publish span, in one trace."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import aiodocker
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio.client import Client
from temporalio.contrib.opentelemetry import create_tracer_provider

import tracing
from starter import start_job
from tests.support.job_worker import MakeSettings, real_worker, remove_game_containers

pytestmark = pytest.mark.docker

RESULT_WAIT_S = 120.0  # only stops a hang


@pytest.fixture
async def game(docker: aiodocker.Docker) -> AsyncIterator[str]:
    game_id = f"trace-{uuid.uuid4().hex[:10]}"
    yield game_id
    await remove_game_containers(docker, game_id)


async def test_a_start_job_is_one_trace_of_workflow_docker_step_and_publish_spans(
    client: Client, make_settings: MakeSettings, game: str
) -> None:
    exporter = InMemorySpanExporter()
    provider = create_tracer_provider()  # as tracing.otlp_provider makes it, with an in-memory exporter
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # (the only test that sets the process's provider)
    config = client.config()  # the session's client, its connection shared, with the plugin added
    config["plugins"] = [*config["plugins"], tracing.plugin()]
    traced = Client(**config)
    settings = make_settings()
    async with real_worker(traced, settings):
        handle = await start_job(client, game, task_queue=settings.task_queue)  # no trace context sent
        result = await asyncio.wait_for(handle.result(), RESULT_WAIT_S)
    assert result.outcome == "success"
    provider.force_flush()

    spans: list[ReadableSpan] = [
        s for s in exporter.get_finished_spans() if (s.attributes or {}).get("temporalWorkflowID") == handle.id
    ]
    names = {s.name for s in spans}
    assert {
        "RunWorkflow:StartRuntimeJob",
        "StartActivity:ensure_engine_running",
        "RunActivity:ensure_engine_running",
        "StartActivity:publish_job_result",
        "RunActivity:publish_job_result",
    } <= names, names
    traces = {s.context.trace_id for s in spans if s.context is not None}
    assert len(traces) == 1, [(s.name, s.context and f"{s.context.trace_id:x}", s.parent) for s in spans]
    [root] = [s for s in spans if s.name == "RunWorkflow:StartRuntimeJob"]
    assert root.parent is None  # the job's trace starts at its workflow
