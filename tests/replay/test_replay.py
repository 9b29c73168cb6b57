"""Replay safety: the committed histories of real runs (tests/histories/VERSION/) replay on today's code.

A change that makes the workflows non-deterministic (another activity, timer or signal before an
existing step, a reordered step) would break every run still open when it is deployed; here it fails
CI first. 1.0 is the first version anyone runs (the pre-release versions were retired with their
histories); from it on every version keeps its histories: a version's files are checked against its
`VERSION.sha256`, so none is replaced or dropped. A workflow change goes behind `workflow.patched`
(or a new Worker Versioning build) and gets its histories recorded as a new version beside the old
ones (`python -m tests.histories.record 1.1`); all versions replay.
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

from contract.engine import DOCKER_UNAVAILABLE_TYPE, ENSURE_RUNNING_ACTIVITY
from contract.models import JobRequest, JobResult
from contract.reconcile import ReconcileSummary
from workflows import ALL_WORKFLOWS, RuntimeGameLock, StartRuntimeJob, StopRuntimeJob
from workflows.jobs import FAILURE_TYPES

HISTORIES = Path(__file__).resolve().parents[1] / "histories"

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
    "start_timeout_refused": "invalid_request",
    "start_silent_host": "docker_unavailable",
    "start_retried_step": "",
}
LOCK_HISTORIES = {"game_lock", "game_lock_continued"}
LONG_LIVED = {"reconcile"}
# Recorded from the version that introduced them...
INTRODUCED: dict[str, str] = {"host_registry": "1.0", "host": "1.1", "game_lock_lost": "1.1"}
# ...up to the last version that had them (1.0's fleet-wide registry gave way to one workflow per host).
RETIRED_AFTER: dict[str, str] = {"host_registry": "1.0"}
FIRST = "1.0"
# The patch each version after 1.0 introduced (workflows/patches.py), and the histories that must ask it.
PATCHED_IN = {
    "1.1": ("1.1-host-workflows", {"start_fresh", "stop_fresh", "start_together_first", "reconcile", "game_lock_lost"})
}


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


VERSIONS = sorted(
    (p.name for p in HISTORIES.iterdir() if p.is_dir() and (HISTORIES / f"{p.name}.sha256").exists()),
    key=version_key,
)
# The newest version is recorded from today's workflow code; older ones from released versions.
CURRENT = VERSIONS[-1]


def recorded_in(version: str) -> set[str]:
    def kept(name: str) -> bool:
        return name not in RETIRED_AFTER or version_key(version) <= version_key(RETIRED_AFTER[name])

    since = {n for n, v in INTRODUCED.items() if version_key(v) <= version_key(version) and kept(n)}
    return set(EXPECTED) | LOCK_HISTORIES | LONG_LIVED | since


ALL_RECORDED = [(v, n) for v in VERSIONS for n in sorted(recorded_in(v))]


def load(name: str, version: str = CURRENT) -> WorkflowHistory:
    return WorkflowHistory.from_json(f"recorded-{version}-{name}", (HISTORIES / version / f"{name}.json").read_text())


def replayer(workflows: list[type]) -> Replayer:
    return Replayer(workflows=workflows, data_converter=pydantic_data_converter)


def test_released_histories_are_kept_unchanged() -> None:
    """The first version (1.0) and every later one stay, byte for byte, as recorded."""
    assert VERSIONS[0] == FIRST, VERSIONS
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


@pytest.mark.parametrize("version", [v for v in VERSIONS if v in PATCHED_IN])
def test_a_later_version_records_its_patch(version: str) -> None:
    """A version after 1.0 is recorded from code that asks its patch: else its histories would replay
    the old branch only, and the new one would go untested.
    """
    patch, names = PATCHED_IN[version]
    for name in sorted(names):
        assert patch in _markers(load(name, version).events), (version, name)


def test_a_game_workflow_that_lost_its_record_stays() -> None:
    """1.1: the silent host's game, its clean-up ended by a forget: its workflow holds that its record
    is lost and waits for the next job instead of ending when idle (a new run would take the game for one
    without an engine).
    """
    events = load("game_lock_lost", "1.1").events
    closing = {
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW,
    }
    assert not any(e.event_type in closing for e in events)
    assert not any(e.event_type == EventType.EVENT_TYPE_TIMER_STARTED for e in events[-4:])


def test_the_first_version_carries_no_patch() -> None:
    """1.0 is the base every later `workflow.patched` branches from: none of its histories asks a patch."""
    for name in sorted(recorded_in(FIRST)):
        assert not _markers(load(name, FIRST).events), name


# Jobs that must clean up after a failed start release the turn themselves.
CLEAN_UP_FIRST = {"start_container_exited", "start_cancelled", "start_silent_host"}


@pytest.mark.parametrize("name", sorted(set(EXPECTED) - {"start_bad_payload"}))
def test_the_publish_hands_the_turn_on(name: str) -> None:
    """The publish activity sends the registry's word and the release; the job sends no signal after its
    publish, unless it cleans up first (then it releases itself, after the clean-up).
    """
    for version in VERSIONS:
        events = load(name, version).events
        sent = [e for e in events if e.event_type == EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED]
        assert bool(sent) == (name in CLEAN_UP_FIRST), (version, name)


def _scheduled(name: str, version: str = CURRENT) -> list[str]:
    return [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in load(name, version).events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]


def test_a_refused_job_publishes_without_taking_a_turn() -> None:
    events = load("start_timeout_refused").events
    assert _scheduled("start_timeout_refused") == ["publish_job_result"]
    assert not [e for e in events if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED]


def test_silent_hosts_step_is_given_up() -> None:
    """A silent host's step is given up and its clean up waits for the host.

    The step on the silent host was cancelled (never started), the failure published, and the clean-up
    scheduled there too, ended by the host being forgotten; the liveness asked between (local activities).
    """
    events = load("start_silent_host").events
    assert _scheduled("start_silent_host") == ["ensure_engine_running", "publish_job_result", "remove_failed_start"]
    kinds = [e.event_type for e in events]
    assert kinds.count(EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED) == 2
    assert kinds.count(EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED) == 1  # the publish's: no worker took the others
    assert kinds.count(EventType.EVENT_TYPE_MARKER_RECORDED) >= 3  # the turn, the placement, liveness checks


@pytest.mark.parametrize("version", VERSIONS)
def test_a_retried_docker_step_is_replayed(version: str) -> None:
    """Replay covers a step that succeeded on a retry: Temporal records a retried activity's earlier
    attempts only in its last attempt's started event, so that is where the first attempt's
    DockerUnavailable must show (else the history is just another fresh start).
    """
    events = load("start_retried_step", version).events
    [scheduled] = [
        e.event_id
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == ENSURE_RUNNING_ACTIVITY
    ]
    [started] = [
        e.activity_task_started_event_attributes
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
        and e.activity_task_started_event_attributes.scheduled_event_id == scheduled
    ]
    assert started.attempt >= 2
    assert started.last_failure.application_failure_info.type == DOCKER_UNAVAILABLE_TYPE
    completed = [
        e
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
        and e.activity_task_completed_event_attributes.scheduled_event_id == scheduled
    ]
    assert len(completed) == 1


def test_a_failed_start_removes_what_it_left_before_its_turn_ends() -> None:
    assert _scheduled("start_container_exited") == [
        "ensure_engine_running",
        "publish_job_result",
        "remove_failed_start",
    ]


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
    """The idle game's turn is the answer of the first job's take_turn update; only the job that waited
    gets a grant signal.
    """
    events = load("game_lock", version).events
    grants = [
        e
        for e in events
        if e.event_type == EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED
        and e.signal_external_workflow_execution_initiated_event_attributes.signal_name == "lock_granted"
    ]
    updates = [e for e in events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED]
    assert (len(grants), len(updates)) == (1, 2)


def test_the_continued_lock_history_carried_its_waiters() -> None:
    """The game's workflow continued as new between turns (told to by the server, its updates near the
    limit) with jobs still waiting: the continue-as-new branch of its loop is replayed.
    """
    events = load("game_lock_continued").events
    last = events[-1]
    assert last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
    [payload] = last.workflow_execution_continued_as_new_event_attributes.input.payloads
    assert json.loads(payload.data)["waiting"], "continued without waiters"


def test_the_reconcile_history_removed_adopted_and_cleared() -> None:
    """Its run took three games' turns and did one of each action (so replay covers every branch that acts)."""
    events = load("reconcile", FIRST).events
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
    workflows: list[type[Any]] = [StartRuntimeJobWithExtraTimer, StopRuntimeJob, RuntimeGameLock]
    with pytest.raises(NondeterminismError):
        await replayer(workflows).replay_workflow(load(name, version))
