"""What the CLI prints, without a server: tables fitted to a terminal, the status line and pull progress of
`start --wait`, the connection flags over the environment and the profile file, every command's examples,
and the worker's JSON log lines.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import sys
from pathlib import Path
from typing import Any, cast

import pytest
from temporalio.client import WorkflowHandle

from contract.engine import PullProgress
from contract.models import JobResult, JobStatus
from rtjobs.cli import build_parser
from rtjobs.cli.jobs import wait_with_progress
from rtjobs.cli.output import Column, StatusLine, Table
from rtjobs.client import ConnectionFlags, connect_config
from rtjobs.ops.logs import JobEventFormatter, JsonFormatter


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def columns(monkeypatch: pytest.MonkeyPatch) -> int:
    """The terminal's width as shutil.get_terminal_size() reads it."""
    monkeypatch.setenv("COLUMNS", "40")
    return 40


TABLE = Table(Column("GAME", 6), Column("OUTCOME"), Column("MESSAGE"))
ROW = ("g-1", "failure", "the engine exited (code 3) before it became healthy: see its last log lines")


def test_a_table_on_a_terminal_cuts_its_widest_column_to_fit(columns: int) -> None:
    out = Terminal()
    TABLE.print([ROW], out=out)
    header, row = out.getvalue().splitlines()
    assert header.split() == ["GAME", "OUTCOME", "MESSAGE"]
    assert len(row) == columns and row.endswith("…")
    assert row.startswith("g-1     failure  the engine exited")


def test_a_table_elsewhere_is_never_cut(columns: int) -> None:
    out = io.StringIO()
    TABLE.print([ROW], out=out)
    assert out.getvalue().splitlines()[1].endswith(ROW[2])


def test_the_status_line_overwrites_itself_and_never_wraps(columns: int) -> None:
    out = Terminal()
    line = StatusLine(out)
    line.show("pulling registry.example.com/engine:2.1: 2/5 layers, 12.0/40.5 MB")
    line.show("short")
    line.clear()
    writes = out.getvalue().split("\r")[1:]
    assert [len(w) for w in writes[:3]] == [columns - 1] * 3  # each erases the whole previous text
    assert writes[0].endswith("…") and writes[1].rstrip() == "short"
    assert writes[2].strip() == "" and writes[3] == ""


class FakeJob:
    """A job handle whose status query says `step` and whose result comes after `polls` status queries."""

    id = "runtime-start-g-1-abc"

    def __init__(self, step: str, polls: int) -> None:
        self._step = step
        self._polls = polls
        self.queried = 0

    async def query(self, name: str, *, result_type: type[JobStatus]) -> JobStatus:
        assert name == "status"
        self.queried += 1
        return JobStatus(step=self._step)

    async def result(self) -> JobResult:
        while self.queried < self._polls:
            await _tick()
        return JobResult(game_id="g-1", outcome="success")


async def _tick() -> None:
    await asyncio.sleep(0.01)


def _handle(job: FakeJob) -> WorkflowHandle[Any, JobResult]:
    return cast(WorkflowHandle[Any, JobResult], job)


PULLING = PullProgress(image="registry.example.com/engine:2.1", layers_done=2, layers_total=5)


async def test_start_wait_on_a_terminal_shows_the_pull_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "120")
    monkeypatch.setattr("rtjobs.cli.jobs.STATUS_POLL_S", 0.01)
    asked: list[int] = []

    async def pulls() -> PullProgress | None:
        asked.append(1)
        return PULLING

    out = Terminal()
    result = await wait_with_progress(_handle(FakeJob("start engine for game g-1", polls=3)), out, pulls=pulls)
    assert result.outcome == "success"
    shown = [w for w in out.getvalue().split("\r") if w.strip()]
    assert shown and all(PULLING.line() in w for w in shown)
    assert len(asked) == 1  # about once a second, not at every status query
    assert out.getvalue().endswith("\r")  # the line cleared at the end


async def test_start_wait_on_a_terminal_without_a_pull_shows_the_step(
    columns: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("rtjobs.cli.jobs.STATUS_POLL_S", 0.01)

    async def pulls() -> PullProgress | None:
        return None

    out = Terminal()
    await wait_with_progress(_handle(FakeJob("start engine for game g-1", polls=2)), out, pulls=pulls)
    assert "start engine for game g-1" in out.getvalue()


async def test_start_wait_elsewhere_prints_each_step_once_and_nothing_else(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("rtjobs.cli.jobs.STATUS_POLL_S", 0.01)

    async def pulls() -> PullProgress | None:
        raise AssertionError("no pull progress is asked for off a terminal")

    out = io.StringIO()
    await wait_with_progress(_handle(FakeJob("start engine for game g-1", polls=4)), out, pulls=pulls)
    assert out.getvalue() == "... start engine for game g-1\n"


# --- the Temporal connection: flags > TEMPORAL_* > the config file's profile > defaults ----------------


@pytest.fixture
def profile_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "temporal.toml"
    path.write_text(
        '[profile.default]\naddress = "file:7233"\nnamespace = "file-ns"\n\n'
        '[profile.prod]\naddress = "prod:7233"\nnamespace = "prod-ns"\napi_key = "file-key"\n'
    )
    for name in ("TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE", "TEMPORAL_API_KEY", "TEMPORAL_TLS", "TEMPORAL_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", str(path))
    return path


def test_the_profile_file_then_the_environment_then_the_flags(
    profile_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert connect_config() == {"target_host": "file:7233", "namespace": "file-ns"}
    monkeypatch.setenv("TEMPORAL_ADDRESS", "env:7233")
    assert connect_config()["target_host"] == "env:7233"
    flagged = connect_config(ConnectionFlags(address="flag:7233", namespace="flag-ns", tls=False))
    assert flagged == {"target_host": "flag:7233", "namespace": "flag-ns", "tls": False}


def test_a_named_profile_and_tls_on(profile_file: Path) -> None:
    config = connect_config(ConnectionFlags(profile="prod"))
    assert (config["target_host"], config["api_key"]) == ("prod:7233", "file-key")
    assert config["tls"]  # on with an API key, as the SDK does
    assert connect_config(ConnectionFlags(tls=True))["tls"]


def test_the_connection_flags_parse() -> None:
    args = build_parser().parse_args(
        ["hosts", "--address", "a:1", "--namespace", "ns", "--api-key", "k", "--no-tls", "--profile", "p"]
    )
    assert (args.address, args.namespace, args.api_key, args.tls, args.profile) == ("a:1", "ns", "k", False, "p")
    assert build_parser().parse_args(["start", "g-1", "--tls"]).tls is True


# --- --help ------------------------------------------------------------------------------------------


def _commands(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += [sub, *_commands(sub)]
    return found


def test_every_command_help_ends_with_examples_and_offers_output() -> None:
    commands = [c for c in _commands(build_parser()) if c.prog.split()[1] not in ("worker", "dev")]
    assert len(commands) == 9
    for parser in commands:
        help_text = parser.format_help()
        examples = help_text.rsplit("examples:\n", 1)[1].splitlines()
        assert 1 <= len(examples) <= 3 and all(e.startswith("  rtjobs ") for e in examples), parser.prog
        if parser.prog != "rtjobs host":
            assert "-o {text,json}, --output {text,json}" in help_text, parser.prog


# --- the worker's log lines ----------------------------------------------------------------------------


def _record(**extra: Any) -> logging.LogRecord:
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("temporalio.activity", logging.WARNING, __file__, 1, "step %s", ("one",), exc_info)
    record.__dict__.update(extra)
    return record


SDK_EXTRA = {
    "temporal_activity": {
        "activity_type": "ensure_engine_running",
        "workflow_type": "StartRuntimeJob",
        "workflow_id": "runtime-start-g-1-abc",
        "workflow_run_id": "run-1",
        "attempt": 2,
    },
    "game_id": "g-1",
    "host": "vm",
}


@pytest.mark.parametrize("tracebacks", [False, True])
def test_a_json_line_has_the_context_and_the_exception_as_a_string(tracebacks: bool) -> None:
    line = JsonFormatter(tracebacks=tracebacks).format(_record(**SDK_EXTRA))
    assert "\n" not in line
    entry = json.loads(line)
    assert {k: entry[k] for k in ("level", "logger", "message", "game_id", "job_kind", "workflow_id", "run_id")} == {
        "level": "WARNING",
        "logger": "temporalio.activity",
        "message": "step one",
        "game_id": "g-1",
        "job_kind": "start",
        "workflow_id": "runtime-start-g-1-abc",
        "run_id": "run-1",
    }
    assert entry["host"] == "vm" and entry["attempt"] == 2
    if tracebacks:
        assert entry["exception"].startswith("Traceback") and entry["exception"].endswith("ValueError: bad\nvalue")
    else:
        assert entry["exception"] == "ValueError: bad\nvalue"


def test_the_text_line_has_the_same_context() -> None:
    line = JobEventFormatter().format(_record(**SDK_EXTRA))
    assert "\n" not in line
    for pair in ("game_id=g-1", "job_kind=start", "workflow_id=runtime-start-g-1-abc", "run_id=run-1", "host=vm"):
        assert pair in line
