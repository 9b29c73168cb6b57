"""Replay safety: the committed histories of real runs (tests/histories/VERSION/) replay on today's code.

A change that makes the workflows non-deterministic (another activity, timer or signal before an
existing step, a reordered step) would break every run still open when it is deployed; here it fails
CI first. Every released shape keeps its histories: a version's files are checked against its
`VERSION.sha256`, so none is replaced or dropped. A workflow change goes behind `workflow.patched`
and gets its histories recorded as a new version beside the old ones
(`python -m tests.histories.record v3`); all versions replay.
"""

from __future__ import annotations

import hashlib
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

from contract.lock import JOB_PATCH_V2, JOB_PATCH_V3, JOB_PATCH_V4, LOCK_PATCH_V2, LOCK_PATCH_V3
from contract.models import JobRequest, JobResult
from contract.reconcile import ReconcileSummary
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
# Long-lived workflows recorded from the version that introduced them.
INTRODUCED = {"host_registry": "v3", "reconcile": "v4"}
VERSIONS = sorted(
    (p.name for p in HISTORIES.iterdir() if p.is_dir() and (HISTORIES / f"{p.name}.sha256").exists()),
    key=lambda v: int(v[1:]),
)
# The newest version is recorded from today's workflow code; older ones from released shapes.
CURRENT = VERSIONS[-1]


def recorded_in(version: str) -> set[str]:
    since = {n for n, v in INTRODUCED.items() if int(v[1:]) <= int(version[1:])}
    return set(EXPECTED) | LOCK_HISTORIES | since


ALL_RECORDED = [(v, n) for v in VERSIONS for n in sorted(recorded_in(v))]


def load(name: str, version: str = CURRENT) -> WorkflowHistory:
    return WorkflowHistory.from_json(f"recorded-{version}-{name}", (HISTORIES / version / f"{name}.json").read_text())


def replayer(workflows: list[type]) -> Replayer:
    return Replayer(workflows=workflows, data_converter=pydantic_data_converter)


def test_released_histories_are_kept_unchanged() -> None:
    """The first released shape (v1) and every later version stay, byte for byte, as recorded."""
    assert VERSIONS[0] == "v1" and len(VERSIONS) >= 2, VERSIONS
    for version in VERSIONS:
        listed = {}
        for line in (HISTORIES / f"{version}.sha256").read_text().splitlines():
            digest, name = line.split()
            listed[name] = digest
        files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (HISTORIES / version).glob("*.json")}
        assert files == listed, f"histories of {version} changed or went missing"


@pytest.mark.parametrize("version", VERSIONS)
def test_every_scenario_is_recorded_and_nothing_else(version: str) -> None:
    """A history deleted (or added without a stated expectation) must not go unnoticed."""
    assert {p.stem for p in (HISTORIES / version).glob("*.json")} == recorded_in(version)


@pytest.mark.parametrize(("version", "name"), ALL_RECORDED)
async def test_recorded_history_replays_on_the_current_workflows(version: str, name: str) -> None:
    result = await replayer(ALL_WORKFLOWS).replay_workflow(load(name, version))
    assert result.replay_failure is None


def _markers(events: Any) -> set[str]:
    found = set()
    for e in events:
        if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
            details = e.marker_recorded_event_attributes.details
            if e.marker_recorded_event_attributes.marker_name == "core_patch" and "patch-data" in details:
                found.add(json.loads(details["patch-data"].payloads[0].data)["id"])
    return found


@pytest.mark.parametrize("name", sorted(set(EXPECTED) - {"start_bad_payload"}) + sorted(LOCK_HISTORIES))
def test_each_version_carries_its_patches(name: str) -> None:
    """Each version exercises the code paths of its shape: v1 no patch, v2 the second shape's, v3
    (the fleet) its own (the jobs also the second's); so every branch kept for an older shape is
    replayed by some history."""
    v2, v3 = (LOCK_PATCH_V2, LOCK_PATCH_V3) if name in LOCK_HISTORIES else (JOB_PATCH_V2, JOB_PATCH_V3)
    assert not _markers(load(name, "v1").events)
    assert _markers(load(name, "v2").events) == {v2}
    # The fleet-shape lock branches before the second shape's patch is asked: it carries v3 only.
    assert (v3 in _markers(load(name, "v3").events)) and (
        name in LOCK_HISTORIES or v2 in _markers(load(name, "v3").events)
    )


# Jobs that must clean up after a failed start release the turn themselves: they never ask JOB_PATCH_V4.
CLEAN_UP_FIRST = {"start_container_exited", "start_cancelled"}


@pytest.mark.parametrize("name", sorted(set(EXPECTED) - {"start_bad_payload"}))
def test_from_v5_the_publish_hands_the_turn_on(name: str) -> None:
    """v5 (JOB_PATCH_V4): the publish activity sends the registry's word and the release; the job sends
    no signal after its publish. Earlier versions and jobs that clean up first send them themselves."""
    for version in VERSIONS:
        events = load(name, version).events
        handed_over = int(version[1:]) >= 5 and name not in CLEAN_UP_FIRST
        assert (JOB_PATCH_V4 in _markers(events)) == handed_over, (version, name)
        sent = [e for e in events if e.event_type == EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED]
        if int(version[1:]) >= 3:  # the fleet shape: the release (and maybe the registry's word) at the end
            assert (not sent) == handed_over, (version, name)


def test_a_failed_start_removes_what_it_left_before_its_turn_ends() -> None:
    events = load("start_container_exited").events
    scheduled = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    assert scheduled == ["ensure_engine_running", "publish_job_result", "remove_failed_start"]


@pytest.mark.parametrize(("version", "name"), [(v, n) for v in VERSIONS for n in sorted(EXPECTED)])
def test_recorded_history_is_the_scenario_it_is_named_for(version: str, name: str) -> None:
    """Guards the recorder: a history must show the outcome its name promises, or replaying it proves little."""
    events = load(name, version).events
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
            for e in load("start_together_first", version).events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
        ]
        assert signalled and signalled[0].event_time.ToDatetime() >= max(start_done)


@pytest.mark.parametrize("version", VERSIONS)
def test_lock_history_granted_two_jobs(version: str) -> None:
    """Before the fleet both turns were granted by signal; from v3 the idle game's turn is the answer
    of the first job's take_turn update, and only the job that waited gets a grant signal."""
    events = load("game_lock", version).events
    grants = [
        e
        for e in events
        if e.event_type == EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED
        and e.signal_external_workflow_execution_initiated_event_attributes.signal_name == "lock_granted"
    ]
    updates = [e for e in events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED]
    if int(version[1:]) < 3:
        assert (len(grants), len(updates)) == (2, 0)
    else:
        assert (len(grants), len(updates)) == (1, 2)


def test_the_reconcile_history_removed_adopted_and_cleared() -> None:
    """Its run took three games' turns and did one of each action (so replay covers every branch that acts)."""
    events = load("reconcile", INTRODUCED["reconcile"]).events
    [payload] = events[-1].workflow_execution_completed_event_attributes.result.payloads
    summary = ReconcileSummary.model_validate(json.loads(payload.data))
    assert summary.done_counts() == {"removed": 1, "adopted": 1, "cleared": 1}, summary
    markers = [e for e in events if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED]
    assert len(markers) >= 3  # a take_game_turn local activity per game


# --- the replay test would catch a non-deterministic change ----------------------------------------


# Unsandboxed: the sandbox would re-import this test module, which reads files at import.
@workflow.defn(name="StartRuntimeJob", failure_exception_types=FAILURE_TYPES, sandboxed=False)
class StartRuntimeJobWithExtraTimer(StartRuntimeJob):
    """Today's start job with one timer added before its work: the kind of change replay must reject."""

    @workflow.run
    async def run(self, request: JobRequest) -> JobResult:
        await workflow.sleep(0.01)
        return await self._job(request)


@pytest.mark.parametrize(("version", "name"), [(v, n) for v in VERSIONS for n in ("start_fresh", "start_cancelled")])
async def test_a_non_deterministic_change_fails_replay(version: str, name: str) -> None:
    workflows: list[type[Any]] = [StartRuntimeJobWithExtraTimer, StopRuntimeJob, GameLock]
    with pytest.raises(NondeterminismError):
        await replayer(workflows).replay_workflow(load(name, version))
