"""`rtjobs hosts` with a host whose workflow does not answer: the rest of the fleet is shown, the silent host is
named on stderr, and the exit status says the view is incomplete (the survey itself is tested in
tests/unit/activities/test_fleet_survey.py; the command against real hosts in test_cli.py).
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from activities.fleet import Survey
from contract.hosts import HostView
from contract.settings import Settings
from rtjobs.cli import hosts as cli_hosts
from rtjobs.process import EXIT_FAILURE, EXIT_OK


def view(name: str) -> HostView:
    return HostView(
        host_id=f"{name}-id", name=name, queue=f"q@host-{name}-id", live=True, live_workers=["w"], engines=1,
        reserved=0, capacity=10, draining=False, last_seen=datetime.now(UTC),
    )  # fmt: skip


@pytest.fixture
def surveyed(monkeypatch: pytest.MonkeyPatch) -> dict[str, Survey]:
    answer: dict[str, Survey] = {}

    async def survey(self: Any) -> Survey:
        return answer["survey"]

    async def connect(args: argparse.Namespace) -> Any:
        return None

    monkeypatch.setattr(cli_hosts.Hosts, "survey", survey)
    monkeypatch.setattr(cli_hosts, "connect_temporal", connect)
    return answer


@pytest.mark.parametrize("output", ["text", "json"])
async def test_a_silent_host_is_named_and_fails_the_command(
    surveyed: dict[str, Survey], capsys: pytest.CaptureFixture[str], output: str
) -> None:
    """The hosts that answered are printed; the silent one is named on stderr; exit 1."""
    surveyed["survey"] = Survey(views=[view("h1")], unanswered={"h2": "DEADLINE_EXCEEDED: query timed out"})
    status = await cli_hosts.show_hosts(argparse.Namespace(output=output), Settings())
    out, err = capsys.readouterr()
    assert status == EXIT_FAILURE
    assert err.strip() == "rtjobs: host h2 did not answer: DEADLINE_EXCEEDED: query timed out"
    if output == "json":
        shown = json.loads(out)
        assert [h["name"] for h in shown["hosts"]] == ["h1"] and list(shown["unanswered"]) == ["h2"]
    else:
        assert "h1" in out and "h2" not in out


async def test_every_host_answering_is_exit_0(surveyed: dict[str, Survey], capsys: pytest.CaptureFixture[str]) -> None:
    surveyed["survey"] = Survey(views=[view("h1")], unanswered={})
    assert await cli_hosts.show_hosts(argparse.Namespace(output="text"), Settings()) == EXIT_OK
    assert capsys.readouterr().err == ""
