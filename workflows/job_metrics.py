"""A job's outcome on the worker's metrics endpoint, recorded by the workflow through the SDK's workflow
meter: it records nothing while a history replays, so a job counts once however often its workflow is
replayed (after eviction, on another worker, in the replay tests).
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from contract import metrics as names
    from contract.models import JobKind, JobResult


def record_published(kind: JobKind, result: JobResult) -> None:
    """Once the result is on the stream: what the Lobby saw, and how long it waited for it."""
    meter = workflow.metric_meter()
    labels = {"job_kind": kind.value, "outcome": result.outcome}
    meter.create_counter(names.JOBS, "Job results published").add(1, {**labels, "error_code": result.error_code})
    waited = workflow.now() - workflow.info().workflow_start_time
    meter.create_histogram_timedelta(names.JOB_DURATION, "Workflow start to result published").record(waited, labels)
