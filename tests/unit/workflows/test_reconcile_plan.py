"""The reconcile decision (`workflows.reconcile.plan`) case by case, without Temporal or Docker.

The real parts run the same function in tests/reliability/test_reconcile.py (containers planted on real
dockerds, records in real per-game workflows); here each rule and its edges, quickly.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from contract.hosts import HostRef, Placement, PlacementNote
from contract.lock import LockGrant
from contract.reconcile import Action, ContainerSeen, FindingKind, ReconcileRequest
from workflows.reconcile import plan

HERE = HostRef(host_id="ID-HERE", name="h1", queue="q@host-here")
THERE = HostRef(host_id="ID-THERE", name="h2", queue="q@host-there")
NOW = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)
REQUEST = ReconcileRequest(host=HERE, grace_s=300)
NO_RECORD = LockGrant(granted=True)


def record(host: HostRef, container_id: str = "c1") -> LockGrant:
    return LockGrant(granted=True, placement_known=True, placement=Placement(host=host, container_id=container_id))


def container(
    state: str, container_id: str = "c1", age_s: float = 3600, finished_s: float | None = None
) -> ContainerSeen:
    return ContainerSeen(
        container_id=container_id,
        game_id="g",
        state=state,
        created_at=NOW - timedelta(seconds=age_s),
        finished_at=None if finished_s is None else NOW - timedelta(seconds=finished_s),
    )


def decided(
    containers: list[ContainerSeen], record: LockGrant, request: ReconcileRequest = REQUEST
) -> list[tuple[str, list[Action]]]:
    return [(f.kind.value, f.actions) for f in plan("g", containers, record, HERE, NOW, request).findings]


def test_a_running_engine_as_its_record_says_is_left_alone() -> None:
    result = plan("g", [container("running")], record(HERE), HERE, NOW, REQUEST)
    assert (result.findings, result.after) == ([], None)


def test_engine_without_record_adopted_or_removed() -> None:
    """A running engine without record is adopted or with remove unknown removed."""
    adopted = plan("g", [container("running")], NO_RECORD, HERE, NOW, REQUEST)
    assert [(f.kind, f.actions) for f in adopted.findings] == [(FindingKind.RUNNING_UNRECORDED, [Action.ADOPTED])]
    assert adopted.after == PlacementNote(known=True, placement=Placement(host=HERE, container_id="c1"))
    # A record naming another container here (an engine re-made by hand): the running one is adopted.
    assert decided([container("running", "c2")], record(HERE, "c1")) == [("running_unrecorded", [Action.ADOPTED])]
    removing = REQUEST.model_copy(update={"remove_unknown": True})
    assert decided([container("running")], NO_RECORD, removing) == [("running_unrecorded", [Action.REMOVED_UNKNOWN])]


def test_engine_recorded_elsewhere_is_reported() -> None:
    """A running engine whose record names another host is only reported."""
    result = plan("g", [container("running")], record(THERE), HERE, NOW, REQUEST)
    assert [(f.kind, f.actions) for f in result.findings] == [(FindingKind.CONFLICT, [])]
    assert result.after is None


def test_stopped_containers_removed_after_grace() -> None:
    """Stopped containers are removed after the grace period counted from when they stopped."""
    for state in ("created", "exited", "dead"):
        assert decided([container(state)], NO_RECORD) == [("stopped_container", [Action.REMOVED])], state
    # Created an hour ago, exited a minute ago: still within 300 s of grace.
    young = plan("g", [container("exited", finished_s=60)], NO_RECORD, HERE, NOW, REQUEST)
    assert [(f.kind, f.actions) for f in young.findings] == [(FindingKind.STOPPED_CONTAINER, [])]
    assert "within the grace period" in young.findings[0].note
    at_once = REQUEST.model_copy(update={"grace_s": 0})
    assert decided([container("exited", finished_s=0)], NO_RECORD, at_once) == [("stopped_container", [Action.REMOVED])]


def test_recorded_engine_not_running_is_cleared() -> None:
    """A recorded engine that does not run is removed and its record cleared."""
    result = plan("g", [container("exited")], record(HERE), HERE, NOW, REQUEST)
    assert [(f.kind, f.actions) for f in result.findings] == [
        (FindingKind.ENGINE_NOT_RUNNING, [Action.REMOVED, Action.CLEARED])
    ]
    assert result.after == PlacementNote(known=False)
    # Within the grace period: neither removed nor cleared.
    young = plan("g", [container("exited", finished_s=10)], record(HERE), HERE, NOW, REQUEST)
    assert ([f.actions for f in young.findings], young.after) == ([[]], None)


def test_a_record_whose_engine_is_gone_is_cleared() -> None:
    result = plan("g", [], record(HERE), HERE, NOW, REQUEST)
    assert [(f.kind, f.actions) for f in result.findings] == [(FindingKind.ENGINE_GONE, [Action.CLEARED])]
    assert result.after == PlacementNote(known=False)
    # A record of another host is not this host's business.
    assert plan("g", [], record(THERE), HERE, NOW, REQUEST).findings == []


def test_paused_or_restarting_containers_are_left_alone() -> None:
    for state in ("paused", "restarting", "removing"):
        result = plan("g", [container(state)], NO_RECORD, HERE, NOW, REQUEST)
        assert [(f.kind, f.actions) for f in result.findings] == [(FindingKind.OTHER_STATE, [])], state
