"""Replay safety: the committed histories of real runs (tests/histories/) replay on today's workflow code.

A change that makes the workflows non-deterministic (another activity, timer or signal before an
existing step, a reordered step) would break every run still open when it is deployed; here it fails
CI first. Re-record with `python -m tests.histories.record` only for a deliberate, versioned change.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer
from temporalio.workflow import NondeterminismError

from contract.models import JobRequest, JobResult
from workflows import ALL_WORKFLOWS, GameLock, StartRuntimeJob, StopRuntimeJob
from workflows.jobs import FAILURE_TYPES

HISTORIES = Path(__file__).resolve().parent / "histories"

# Each recorded history and the `error_code` its run published (None: the run failed, publishing nothing).
EXPECTED: dict[str, str | None] = {
    "start_fresh": "",
    "start_replay": "replay_no_op",
    "stop_fresh": "",
    "stop_replay": "replay_no_op",
    "start_container_exited": "container_exited",
    "start_cancelled": "cancelled",
    "start_invalid_request": "invalid_request",
    "start_bad_payload": None,
    "start_together_first": "",
    "stop_together_waited": "",
}
LOCK_HISTORIES = {"game_lock"}


def load(name: str) -> WorkflowHistory:
    return WorkflowHistory.from_json(f"recorded-{name}", (HISTORIES / f"{name}.json").read_text())


def replayer(workflows: list[type]) -> Replayer:
    return Replayer(workflows=workflows, data_converter=pydantic_data_converter)


def test_every_scenario_is_recorded_and_nothing_else() -> None:
    """A history deleted (or added without a stated expectation) must not go unnoticed."""
    assert {p.stem for p in HISTORIES.glob("*.json")} == set(EXPECTED) | LOCK_HISTORIES


@pytest.mark.parametrize("name", sorted(set(EXPECTED) | LOCK_HISTORIES))
async def test_recorded_history_replays_on_the_current_workflows(name: str) -> None:
    result = await replayer(ALL_WORKFLOWS).replay_workflow(load(name))
    assert result.replay_failure is None


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recorded_history_is_the_scenario_it_is_named_for(name: str) -> None:
    """Guards the recorder: a history must show the outcome its name promises, or replaying it proves little."""
    events = load(name).events
    last = events[-1]
    expected = EXPECTED[name]
    if expected is None:
        assert last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED
        assert not any(e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED for e in events)
        return
    assert last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED
    [payload] = last.workflow_execution_completed_event_attributes.result.payloads
    result = JobResult.model_validate(json.loads(payload.data))
    assert result.error_code == expected
    kinds = [e.event_type for e in events]
    if name == "start_cancelled":
        assert EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED in kinds
    if name == "stop_together_waited":
        # It really waited: its turn was granted only after the start job it queued behind had finished.
        signalled = [e for e in events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED]
        start_done = [
            e.event_time.ToDatetime()
            for e in load("start_together_first").events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
        ]
        assert signalled and signalled[0].event_time.ToDatetime() >= max(start_done)


def test_lock_history_granted_two_jobs() -> None:
    events = load("game_lock").events
    grants = [
        e
        for e in events
        if e.event_type == EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED
        and e.signal_external_workflow_execution_initiated_event_attributes.signal_name == "lock_granted"
    ]
    assert len(grants) == 2


# --- the replay test would catch a non-deterministic change ----------------------------------------


# Unsandboxed: the sandbox would re-import this test module, which reads files at import.
@workflow.defn(name="StartRuntimeJob", failure_exception_types=FAILURE_TYPES, sandboxed=False)
class StartRuntimeJobWithExtraTimer(StartRuntimeJob):
    """Today's start job with one timer added before its work: the kind of change replay must reject."""

    @workflow.run
    async def run(self, request: JobRequest) -> JobResult:
        await workflow.sleep(0.01)
        return await self._job(request)


@pytest.mark.parametrize("name", ["start_fresh", "start_cancelled"])
async def test_a_non_deterministic_change_fails_replay(name: str) -> None:
    workflows: list[type[Any]] = [StartRuntimeJobWithExtraTimer, StopRuntimeJob, GameLock]
    with pytest.raises(NondeterminismError):
        await replayer(workflows).replay_workflow(load(name))
