"""The survey a reconcile run works from (`contract.reconcile.survey`), without Temporal or Docker: it leaves out
exactly the games the plan finds nothing for, and at 5,000 games on a host its payload (and the summary made from
it) stays under Temporal's 256 KiB warning, serialized as the worker serializes it (pydantic_data_converter).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import BaseModel
from temporalio.contrib.pydantic import pydantic_data_converter

from contract.hosts import HostRef, Placement
from contract.lock import LockGrant
from contract.reconcile import (
    MAX_GAMES_LISTED,
    ContainerSeen,
    GameSeen,
    ReconcileRequest,
    ReconcileSummary,
    RecordSeen,
    in_line,
    survey,
)
from workflows.reconcile import plan

HERE = HostRef(host_id="ID-HERE", name="h1", queue="q@host-here")
NOW = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)
GAMES = 5_000
BOUND = 256 * 1024  # Temporal's payload size warning


def payload_size(value: BaseModel | list[RecordSeen] | list[ContainerSeen]) -> int:
    [payload] = pydantic_data_converter.payload_converter.to_payloads([value])
    return len(payload.data)


def game_id(i: int) -> str:
    return f"g{i:05d}-" + "x" * 44  # 51 characters, the longest a game id may be


def container_id(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()  # 64 hex digits, as Docker's


def seen(i: int, state: str = "running") -> ContainerSeen:
    finished = NOW - timedelta(seconds=3600) if state != "running" else None
    return ContainerSeen(
        container_id=container_id(i),
        game_id=game_id(i),
        state=state,
        created_at=NOW - timedelta(days=3),
        finished_at=finished,
    )


def record(i: int) -> RecordSeen:
    return RecordSeen(game_id=game_id(i), container_id=container_id(i))


def listed_turn(game: GameSeen) -> LockGrant:
    """The record as the run plans from it before the turn (workflows/reconcile.py)."""
    if game.recorded_id is None:
        return LockGrant(granted=False)
    return LockGrant(granted=False, placement_known=True, placement=Placement(host=HERE, container_id=game.recorded_id))


# --- the comparison leaves out exactly the games the plan finds nothing for -------------------------------------


STATES = ("running", "exited", "created", "dead", "paused", "restarting")


@pytest.mark.parametrize("remove_unknown", [False, True])
@pytest.mark.parametrize("grace_s", [0.0, 1e9])
def test_a_game_is_left_out_exactly_when_the_plan_finds_nothing(grace_s: float, remove_unknown: bool) -> None:
    request = ReconcileRequest(host=HERE, grace_s=grace_s, remove_unknown=remove_unknown)
    cases = 0
    for n in range(3):
        for states in itertools.product(STATES, repeat=n):
            containers = [
                ContainerSeen(container_id=f"c{k}", game_id="g", state=s, created_at=NOW - timedelta(hours=1))
                for k, s in enumerate(states)
            ]
            for recorded_id in (None, "", "c0", "c1", "c9"):
                if n == 0 and recorded_id is None:
                    continue  # no container, no record: not a game of the host
                game = GameSeen(game_id="g", containers=containers, recorded_id=recorded_id)
                found = plan("g", containers, listed_turn(game), HERE, NOW, request).findings
                assert in_line(containers, recorded_id) == (found == []), (states, recorded_id, found)
                cases += 1
    assert cases > 200


# --- 5,000 games on a host --------------------------------------------------------------------------------------


SCENARIOS: dict[str, Callable[[int], tuple[list[ContainerSeen], list[RecordSeen]]]] = {
    # Every engine running as its record says: nothing listed.
    "all in line": lambda i: ([seen(i)], [record(i)]),
    # A host wiped: every record names an engine that is gone.
    "all gone": lambda i: ([], [record(i)]),
    # Every recorded engine OOM-killed: removed and cleared.
    "all exited": lambda i: ([seen(i, "exited")], [record(i)]),
    # Every record lost: every running engine adopted.
    "all unrecorded": lambda i: ([seen(i)], []),
    # Someone paused them all: reported only.
    "all paused": lambda i: ([seen(i, "paused")], [record(i)]),
}


def host_of(scenario: str) -> tuple[list[ContainerSeen], list[RecordSeen]]:
    containers: list[ContainerSeen] = []
    records: list[RecordSeen] = []
    for i in range(GAMES):
        c, r = SCENARIOS[scenario](i)
        containers += c
        records += r
    return containers, records


def test_listing_everything_exceeds_the_bound() -> None:
    """Listing every container and record would not stay under the bound.

    Why the survey: a listing of every container and every record, at 5,000 running engines, is each
    over 256 KiB.
    """
    containers, records = host_of("all in line")
    assert payload_size(containers) > BOUND
    assert payload_size(records) > BOUND


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_at_5000_games_the_survey_and_the_summary_stay_under_256_kib(scenario: str) -> None:
    containers, records = host_of(scenario)
    result = survey(containers, records, start=0.37)
    off = 0 if scenario == "all in line" else GAMES
    assert (result.containers, result.records) == (len(containers), len(records))
    assert len(result.off) + result.unlisted == off
    assert len(result.off) <= MAX_GAMES_LISTED
    assert (len(result.off) > 0) == (off > 0)
    assert payload_size(result) < BOUND, payload_size(result)
    # The dry run's summary reports every listed game's findings: the largest result a run returns.
    request = ReconcileRequest(host=HERE, grace_s=300, dry_run=True)
    summary = ReconcileSummary(host=HERE, dry_run=True, unlisted=result.unlisted)
    for game in result.off:
        summary.findings += plan(game.game_id, game.containers, listed_turn(game), HERE, NOW, request).findings
    assert len(summary.findings) == len(result.off)
    assert payload_size(summary) < BOUND, payload_size(summary)


def test_games_beyond_the_listing_are_reached_from_another_start() -> None:
    """Listed in game order from the start drawn by the run: runs that start elsewhere list the others, so
    games off for good (reported only) at the head of the order never keep the rest out.
    """
    containers, records = host_of("all gone")
    ids = sorted(r.game_id for r in records)
    first = survey(containers, records, start=0.0)
    assert [g.game_id for g in first.off] == ids[: len(first.off)]
    middle = survey(containers, records, start=0.5)
    assert [g.game_id for g in middle.off] == ids[GAMES // 2 : GAMES // 2 + len(middle.off)]
    # Near the end, the listing goes round to the first games; it is still given in game order.
    last = survey(containers, records, start=0.99)
    listed = [g.game_id for g in last.off]
    assert listed == sorted(listed) and listed[0] == ids[0] and ids[-1] in listed


def test_game_over_budget_is_counted_and_skipped() -> None:
    """A game too big for the budget is counted and the next ones still listed."""
    crowded = [seen(0, "exited").model_copy(update={"container_id": container_id(k)}) for k in range(100)]
    containers = [*crowded, seen(1, "exited"), seen(2, "exited")]
    result = survey(containers, [], budget=4096)
    assert [g.game_id for g in result.off] == [game_id(1), game_id(2)]
    assert result.unlisted == 1
