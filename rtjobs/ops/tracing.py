"""Tracing (optional extra `rtjobs[otel]`): the SDK's OpenTelemetry plugin, exporting over OTLP.

On when the standard `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT` names an endpoint (unless `OTEL_SDK_DISABLED`
or `OTEL_TRACES_EXPORTER=none`); the exporter reads the other `OTEL_*` variables. The plugin, not the older
interceptor: jobs arrive without trace context, and the plugin's replay-safe workflow span roots one trace
per job, where the interceptor started a new trace at each workflow task.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from temporalio.contrib.opentelemetry import OpenTelemetryPlugin, ReplaySafeTracerProvider

log = logging.getLogger("rtjobs.tracing")

DEFAULT_SERVICE_NAME = "rtjobs-worker"
_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


class TracingUnavailable(Exception):
    """Tracing is asked for but the `otel` extra is not installed; the message says what to install."""


def wanted(env: Mapping[str, str] = os.environ) -> bool:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return any(env.get(name, "").strip() for name in _ENDPOINT_VARIABLES)


def endpoint(env: Mapping[str, str] = os.environ) -> str:
    return next((env[name].strip() for name in _ENDPOINT_VARIABLES if env.get(name, "").strip()), "")


def plugin() -> OpenTelemetryPlugin:
    """The SDK's plugin, with its spans for each workflow, activity, signal and update (given to the client,
    which hands it to every Worker).
    """
    from temporalio.contrib.opentelemetry import OpenTelemetryPlugin

    return OpenTelemetryPlugin(add_temporal_spans=True)


def otlp_provider() -> ReplaySafeTracerProvider:
    """The global tracer provider, batching spans to the OTLP/HTTP exporter the OTEL_* variables configure."""
    if importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http") is None:
        raise TracingUnavailable(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but the tracing packages are missing: "
            "pip install 'rtjobs[otel]' (or unset the OTEL_EXPORTER_OTLP_* variables)"
        )
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from temporalio.contrib.opentelemetry import create_tracer_provider

    # Resource.create merges OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME over this default.
    named = os.environ.get("OTEL_SERVICE_NAME") or "service.name=" in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    default = {} if named else {SERVICE_NAME: DEFAULT_SERVICE_NAME}
    provider = create_tracer_provider(resource=Resource.create(default))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider
