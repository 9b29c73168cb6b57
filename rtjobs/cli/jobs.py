"""`rtjobs start GAME` and `rtjobs stop GAME`: a job started (or joined), with `--wait` its result."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from pydantic import TypeAdapter
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.service import RPCError

from contract.models import MAX_STOP_TIMEOUT_S, ImageRef, JobResult, JobStatus, Outcome, one_line
from contract.settings import Settings
from rtjobs.cli.common import CliError, connect_temporal, contract_type, game_id
from rtjobs.cli.output import Column, Table
from rtjobs.client import start_job, stop_job
from rtjobs.process import EXIT_FAILURE, EXIT_OK

if TYPE_CHECKING:
    from rtjobs.cli.common import Commands

RESULT_FIELDS = ("game_id", "outcome", "container_id", "engine_endpoint", "error_code", "error_message")
STATUS_POLL_S = 0.5


def add_commands(commands: Commands) -> None:
    start = commands.add_parser("start", help="start a game's engine")
    start.add_argument("game", type=game_id, help="game id")
    start.add_argument("--image", type=contract_type(TypeAdapter(ImageRef), "image reference"))
    start.add_argument("--job", help="job id (default: random); the same id never runs twice")
    start.add_argument("--wait", action="store_true", help="wait for the result and print it")
    start.set_defaults(run=run_job)

    stop = commands.add_parser("stop", help="stop and remove a game's engine")
    stop.add_argument("game", type=game_id, help="game id")
    grace = f"grace period in seconds (0-{MAX_STOP_TIMEOUT_S})"
    stop.add_argument("--timeout", type=_stop_timeout, help=grace)
    stop.add_argument("--job", help="job id (default: random); the same id never runs twice")
    stop.add_argument("--wait", action="store_true", help="wait for the result and print it")
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
    client = await connect_temporal()
    try:
        handle = await _start(client, args, settings)
    except RPCError as err:
        raise CliError(f"could not start the job: {err.status.name}: {one_line(err.message, 300)}") from None
    print(f"workflow {handle.id} run {handle.result_run_id}", file=sys.stderr)
    if not args.wait:
        print(handle.id)
        return EXIT_OK
    result = await wait_with_progress(handle, sys.stderr)
    print_result(result, sys.stdout)
    return EXIT_OK if result.outcome == Outcome.SUCCESS.value else EXIT_FAILURE


async def _start(client: Client, args: argparse.Namespace, settings: Settings) -> WorkflowHandle[Any, JobResult]:
    queue = settings.task_queue
    if args.command == "start":
        return await start_job(client, args.game, image=args.image, job=args.job, task_queue=queue)
    return await stop_job(client, args.game, stop_timeout_s=args.timeout, job=args.job, task_queue=queue)


async def wait_with_progress(handle: WorkflowHandle[Any, JobResult], out: TextIO) -> JobResult:
    """Await the result while showing the job's current step: a spinner on a terminal, else one
    line per new step (logs stay readable)."""
    result_task = asyncio.ensure_future(handle.result())
    spinner = itertools.cycle("|/-\\")
    started = time.monotonic()
    last_step = ""
    try:
        while not result_task.done():
            step = await _current_step(handle) or last_step
            if out.isatty():
                out.write(f"\r{next(spinner)} {time.monotonic() - started:5.1f}s {step[:100]:<100}")
                out.flush()
            elif step != last_step:
                print(f"... {step}", file=out)
            last_step = step
            await asyncio.wait([result_task], timeout=STATUS_POLL_S)
    finally:
        if out.isatty():
            out.write("\r" + " " * 110 + "\r")
        if not result_task.done():
            result_task.cancel()
    try:
        return result_task.result()
    except WorkflowFailureError as err:
        cause = err.cause or err
        raise CliError(f"job workflow {handle.id} failed: {one_line(str(cause), 300)}") from None


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
