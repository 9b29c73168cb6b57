"""Tracing: the real worker with the SDK's OpenTelemetry interceptor (`rtjobs.ops.tracing`) exporting to an
in-memory exporter; a start job begun by a starter without tracing (as the Go Runtime Manager and the CLI
begin them) gives its workflow span, Docker step span and publish span, in one trace.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import aiodocker
import pytest
from aiohttp import web
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio.client import Client
from temporalio.contrib.opentelemetry import create_tracer_provider

from rtjobs.client import start_job, stop_job
from rtjobs.ops import tracing
from tests.support.job_worker import MakeSettings, real_worker, remove_game_containers
from tests.support.processes import Process, start_ready_worker

pytestmark = pytest.mark.docker

RESULT_WAIT_S = 120.0  # only stops a hang


@pytest.fixture
async def game(docker: aiodocker.Docker) -> AsyncIterator[str]:
    game_id = f"trace-{uuid.uuid4().hex[:10]}"
    yield game_id
    await remove_game_containers(docker, game_id)


async def test_start_job_is_one_trace(client: Client, make_settings: MakeSettings, game: str) -> None:
    """A start job is one trace of workflow Docker step and publish spans."""
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


class Collector:
    """An OTLP/HTTP trace receiver on loopback: what `python worker.py` exports, decoded with the protocol's
    own messages.
    """

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, bytes]] = []  # (service name, span name, trace id)
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> Collector:
        app = web.Application()
        app.router.add_post("/v1/traces", self._receive)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def _receive(self, request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest.FromString(await request.read())
        for resource_spans in export.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    self.spans.append((attributes.get("service.name", ""), span.name, span.trace_id))
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def test_worker_exports_spans_over_otlp(
    client: Client, processes: list[Process], worker_env: dict[str, str]
) -> None:
    """The worker process exports a job's spans over OTLP where the OTEL variables say."""
    collector = await Collector().start()
    try:
        env = {**worker_env, "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
        worker = await start_ready_worker(processes, env)
        assert f"tracing: spans over OTLP to {collector.url}" in worker.output()
        # A stop of a game without an engine anywhere: no Docker step (worker_env has no Docker engine).
        handle = await stop_job(client, f"trace-{uuid.uuid4().hex[:10]}", task_queue=env["RTJOBS_TASK_QUEUE"])
        assert (await asyncio.wait_for(handle.result(), RESULT_WAIT_S)).error_code == "replay_no_op"
        deadline = time.monotonic() + 30
        wanted = {"RunWorkflow:StopRuntimeJob", "RunActivity:publish_job_result"}
        while not wanted <= {name for _, name, _ in collector.spans}:
            assert time.monotonic() < deadline, collector.spans
            await asyncio.sleep(0.1)
        job = [(service, trace_id) for service, name, trace_id in collector.spans if name in wanted]
        assert {service for service, _ in job} == {"rtjobs-worker"}
        assert len({trace_id for _, trace_id in job}) == 1
    finally:
        await collector.close()
