"""`rtjobs start GAME` and `rtjobs stop GAME`: a job started (or joined), with `--wait` its result."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, TextIO

from pydantic import TypeAdapter
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.service import RPCError

from contract.engine import PullProgress
from contract.models import MAX_STOP_TIMEOUT_S, ImageRef, JobResult, JobStatus, Outcome, one_line
from contract.settings import Settings
from rtjobs.cli.common import CliError, add_connection, command, connect_temporal, contract_type, game_id
from rtjobs.cli.output import Column, StatusLine, Table, print_json
from rtjobs.client import pull_progress, start_job, stop_job
from rtjobs.process import EXIT_FAILURE, EXIT_OK

if TYPE_CHECKING:
    from rtjobs.cli.common import Commands

RESULT_FIELDS = ("game_id", "outcome", "container_id", "engine_endpoint", "error_code", "error_message")
STATUS_POLL_S = 0.5
PULL_POLL_S = 1.0  # a describe of the workflow each time: less often than the status query

# How far the start's image pull got (rtjobs.client.pull_progress of the job), or None.
Pulls = Callable[[], Awaitable[PullProgress | None]]


def add_commands(commands: Commands) -> None:
    result = "with --wait the JobResult, else the workflow_id and run_id: one JSON object"
    start = command(
        commands,
        "start",
        "start a game's engine",
        (
            "rtjobs start g-1 --wait",
            "rtjobs start g-1 --image registry.example.com/engine:2.1 --job deploy-42",
            "rtjobs start g-1 --wait -o json | jq -r .engine_endpoint",
        ),
        output=result,
    )
    start.add_argument("game", type=game_id, help="game id")
    start.add_argument(
        "--image",
        type=contract_type(TypeAdapter(ImageRef), "image reference"),
        help="the engine image (default: the worker's RTJOBS_ENGINE_IMAGE)",
    )
    start.add_argument("--job", help="job id (default: random); the same id never runs twice")
    start.add_argument("--wait", action="store_true", help="wait for the result and print it")
    add_connection(start)
    start.set_defaults(run=run_job)

    stop = command(
        commands,
        "stop",
        "stop and remove a game's engine",
        ("rtjobs stop g-1 --wait", "rtjobs stop g-1 --timeout 0 --job deploy-42", "rtjobs stop g-1 --wait -o json"),
        output=result,
    )
    stop.add_argument("game", type=game_id, help="game id")
    grace = f"grace period in seconds (0-{MAX_STOP_TIMEOUT_S})"
    stop.add_argument("--timeout", type=_stop_timeout, help=grace)
    stop.add_argument("--job", help="job id (default: random); the same id never runs twice")
    stop.add_argument("--wait", action="store_true", help="wait for the result and print it")
    add_connection(stop)
    stop.set_defaults(run=run_job)


def _stop_timeout(value: str) -> int:
    try:
        seconds = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid timeout {value!r}: not an integer") from None
    if not 0 <= seconds <= MAX_STOP_TIMEOUT_S:
        raise argparse.ArgumentTypeError(f"invalid timeout {seconds}: must be 0-{MAX_STOP_TIMEOUT_S} seconds")
    return seconds


async def run_job(args: argparse.Namespace, settings: Settings) -> int:
    client = await connect_temporal(args)
    try:
        handle = await _start(client, args, settings)
    except RPCError as err:
        raise CliError(f"could not start the job: {err.status.name}: {one_line(err.message, 300)}") from None
    print(f"workflow {handle.id} run {handle.result_run_id}", file=sys.stderr)
    as_json = args.output == "json"
    if not args.wait:
        if as_json:
            print_json({"workflow_id": handle.id, "run_id": handle.result_run_id})
        else:
            print(handle.id)
        return EXIT_OK
    watch_pull = args.command == "start" and not as_json
    result = await wait_with_progress(
        handle, sys.stderr, pulls=partial(pull_progress, client, handle) if watch_pull else None
    )
    if as_json:
        print_json(result)
    else:
        print_result(result, sys.stdout)
    return EXIT_OK if result.outcome == Outcome.SUCCESS.value else EXIT_FAILURE


async def _start(client: Client, args: argparse.Namespace, settings: Settings) -> WorkflowHandle[Any, JobResult]:
    queue = settings.task_queue
    if args.command == "start":
        return await start_job(client, args.game, image=args.image, job=args.job, task_queue=queue)
    return await stop_job(client, args.game, stop_timeout_s=args.timeout, job=args.job, task_queue=queue)


async def wait_with_progress(
    handle: WorkflowHandle[Any, JobResult], out: TextIO, *, pulls: Pulls | None = None
) -> JobResult:
    """Await the result while showing the job's progress. On a terminal, one status line: a spinner, the
    time, and the image pull's progress while `pulls` (asked about once a second) has one, else the current
    step. Elsewhere one line per new step, nothing else (logs stay readable).
    """
    result_task = asyncio.ensure_future(handle.result())
    status = StatusLine(out) if out.isatty() else None
    spinner = itertools.cycle("|/-\\")
    started = time.monotonic()
    last_step = ""
    pull: PullProgress | None = None
    next_pull = started
    try:
        while not result_task.done():
            step = await _current_step(handle) or last_step
            if status is None:
                if step != last_step:
                    print(f"... {step}", file=out)
            else:
                if pulls is not None and time.monotonic() >= next_pull:
                    pull = await _pull_progress(pulls)
                    next_pull = time.monotonic() + PULL_POLL_S
                shown = pull.line() if pull is not None else step
                status.show(f"{next(spinner)} {time.monotonic() - started:5.1f}s {shown}")
            last_step = step
            await asyncio.wait([result_task], timeout=STATUS_POLL_S)
    finally:
        if status is not None:
            status.clear()
        if not result_task.done():
            result_task.cancel()
    try:
        return result_task.result()
    except WorkflowFailureError as err:
        cause = err.cause or err
        raise CliError(f"job workflow {handle.id} failed: {one_line(str(cause), 300)}") from None


async def _pull_progress(pulls: Pulls) -> PullProgress | None:
    """The pull's progress, best effort: a describe that fails only leaves the step shown."""
    try:
        return await pulls()
    except Exception:
        return None


async def _current_step(handle: WorkflowHandle[Any, JobResult]) -> str:
    """The workflow's `status` query, best effort: before its first task it cannot answer."""
    try:
        status: JobStatus = await handle.query("status", result_type=JobStatus)
    except Exception:
        return ""
    return status.step


def print_result(result: JobResult, out: TextIO) -> None:
    """The result's stream fields, one per line: name, value."""
    fields = result.stream_fields()
    Table(Column(), Column()).print(((name, fields[name]) for name in RESULT_FIELDS), header=False, out=out)
