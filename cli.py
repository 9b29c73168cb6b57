"""`rtjobs`: the operator CLI. Start and stop jobs, read the result stream, run the worker.

    rtjobs start GAME [--image IMG] [--job ID] [--wait]
    rtjobs stop GAME [--timeout S] [--job ID] [--wait]
    rtjobs results [--game GAME] [--count N] [--follow] [--json]
    rtjobs worker        (python worker.py)
    rtjobs dev           (python worker.py --dev)

Arguments are checked here against the contract before anything is sent (exit 2, one line); the
Temporal connection comes from TEMPORAL_ADDRESS etc., Redis from REDIS_URL, as for the worker.
Exit codes: 0 success (or started), 1 failure outcome / runtime error, 2 bad arguments, 130 ^C.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TextIO, cast

import redis.asyncio as aioredis
from pydantic import TypeAdapter, ValidationError
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.service import RPCError

import worker
from activities.publish import redis_client
from contract.models import MAX_STOP_TIMEOUT_S, GameId, ImageRef, JobResult, JobStatus, Outcome, one_line
from contract.settings import Settings, redact_url
from starter import connect, connect_config, describe, start_job, stop_job

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
RESULT_FIELDS = ("game_id", "outcome", "container_id", "engine_endpoint", "error_code", "error_message")
FOLLOW_BLOCK_MS = 1000  # below the Redis client's 3 s socket timeout
STATUS_POLL_S = 0.5

Entry = tuple[str, dict[str, str]]
Recent = tuple[list[Entry], str]  # entries oldest first, and the stream's last id


class CliError(Exception):
    """A runtime error the operator sees as one line on stderr (exit 1)."""


# --- arguments --------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit 2), not the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _contract_type(adapter: TypeAdapter[str], what: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        try:
            return adapter.validate_python(value)
        except ValidationError as err:
            reason = err.errors()[0]["msg"].removeprefix("Value error, ")
            raise argparse.ArgumentTypeError(f"invalid {what}: {reason}") from None

    return check


def _stop_timeout(value: str) -> int:
    try:
        seconds = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid timeout {value!r}: not an integer") from None
    if not 0 <= seconds <= MAX_STOP_TIMEOUT_S:
        raise argparse.ArgumentTypeError(f"invalid timeout {seconds}: must be 0-{MAX_STOP_TIMEOUT_S} seconds")
    return seconds


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"invalid count {value!r}: must be a positive integer")
    return number


def build_parser() -> argparse.ArgumentParser:
    game_id = _contract_type(TypeAdapter(GameId), "game id")
    parser = _Parser(prog="rtjobs", description="Operate runtime jobs (start/stop game engines).")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    start = commands.add_parser("start", help="start a game's engine")
    start.add_argument("game", type=game_id, help="game id")
    start.add_argument("--image", type=_contract_type(TypeAdapter(ImageRef), "image reference"))
    start.add_argument("--job", help="job id (default: random); the same id never runs twice")
    start.add_argument("--wait", action="store_true", help="wait for the result and print it")

    stop = commands.add_parser("stop", help="stop and remove a game's engine")
    stop.add_argument("game", type=game_id, help="game id")
    grace = f"grace period in seconds (0-{MAX_STOP_TIMEOUT_S})"
    stop.add_argument("--timeout", type=_stop_timeout, help=grace)
    stop.add_argument("--job", help="job id (default: random); the same id never runs twice")
    stop.add_argument("--wait", action="store_true", help="wait for the result and print it")

    results = commands.add_parser("results", help="read the result stream")
    results.add_argument("--game", type=game_id, help="only this game's entries")
    results.add_argument("--count", type=_positive, default=20, help="how many recent entries (default 20)")
    results.add_argument("--follow", action="store_true", help="then keep printing new entries")
    results.add_argument("--json", action="store_true", help="one JSON object per entry")

    commands.add_parser("worker", help="run the worker (TEMPORAL_ADDRESS)")
    commands.add_parser("dev", help="run the worker with the embedded Temporal dev server and UI")
    return parser


# --- start / stop -----------------------------------------------------------------------------------


async def run_job(args: argparse.Namespace) -> int:
    config = connect_config()
    try:
        client = await connect(config)
    except Exception as err:
        raise CliError(f"Temporal unreachable at {describe(config)}: {one_line(str(err), 300)}") from None
    try:
        handle = await _start(client, args)
    except RPCError as err:
        raise CliError(f"could not start the job: {err.status.name}: {one_line(err.message, 300)}") from None
    print(f"workflow {handle.id} run {handle.result_run_id}", file=sys.stderr)
    if not args.wait:
        print(handle.id)
        return EXIT_OK
    result = await wait_with_progress(handle, sys.stderr)
    print_result(result, sys.stdout)
    return EXIT_OK if result.outcome == Outcome.SUCCESS.value else EXIT_FAILURE


async def _start(client: Client, args: argparse.Namespace) -> WorkflowHandle[Any, JobResult]:
    if args.command == "start":
        return await start_job(client, args.game, image=args.image, job=args.job)
    return await stop_job(client, args.game, stop_timeout_s=args.timeout, job=args.job)


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
    fields = result.stream_fields()
    width = max(map(len, RESULT_FIELDS))
    for name in RESULT_FIELDS:
        print(f"{name:<{width}}  {fields[name]}", file=out)


# --- results ----------------------------------------------------------------------------------------


async def show_results(args: argparse.Namespace, settings: Settings) -> int:
    redis = redis_client(settings.redis_url)
    try:
        recent, last_id = await recent_entries(redis, settings.results_stream, args.count, args.game)
        _print_header(args.json)
        for entry in recent:
            print_entry(entry, as_json=args.json)
        if args.follow:
            await follow(redis, settings.results_stream, last_id, args.game, args.json)
    except aioredis.RedisError as err:
        where = redact_url(settings.redis_url)
        raise CliError(f"Redis error at {where}: {one_line(str(err), 300)}") from None
    finally:
        await redis.aclose()
    return EXIT_OK


async def recent_entries(redis: aioredis.Redis, stream: str, count: int, game: str | None) -> Recent:
    """The last `count` entries (of `game` only, if given), oldest first, and the stream's last id."""
    matched: list[Entry] = []
    last_id = "0-0"
    upper = "+"
    while len(matched) < count:
        page = cast(list[Entry], await redis.xrevrange(stream, max=upper, min="-", count=max(count, 100)))
        if not page:
            break
        if last_id == "0-0":
            last_id = page[0][0]
        matched += [e for e in page if game is None or e[1].get("game_id") == game]
        upper = "(" + page[-1][0]
    return list(reversed(matched[:count])), last_id


async def follow(redis: aioredis.Redis, stream: str, last_id: str, game: str | None, as_json: bool) -> None:
    while True:
        reply = cast(
            list[tuple[str, list[Entry]]],
            await redis.xread({stream: last_id}, block=FOLLOW_BLOCK_MS, count=100),
        )
        for _name, entries in reply:
            for entry in entries:
                last_id = entry[0]
                if game is None or entry[1].get("game_id") == game:
                    print_entry(entry, as_json=as_json)
        sys.stdout.flush()


_COLUMNS = "{:<17} {:<20} {:<8} {:<22} {:<13} {}"


def _print_header(as_json: bool) -> None:
    if not as_json:
        print(_COLUMNS.format("ENTRY", "GAME", "OUTCOME", "ERROR_CODE", "CONTAINER", "MESSAGE"))


def print_entry(entry: Entry, *, as_json: bool) -> None:
    entry_id, fields = entry
    if as_json:
        print(json.dumps({"id": entry_id, **fields}))
        return
    print(
        _COLUMNS.format(
            entry_id,
            fields.get("game_id", ""),
            fields.get("outcome", ""),
            fields.get("error_code", ""),
            fields.get("container_id", "")[:12],
            fields.get("error_message", ""),
        )
    )


# --- main -------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command in ("worker", "dev"):
        worker.main(["--dev"] if args.command == "dev" else [])
        return
    worker.exit_now(_run(args))


def _run(args: argparse.Namespace) -> int:
    try:
        settings = Settings()
        if args.command == "results":
            return asyncio.run(show_results(args, settings))
        return asyncio.run(run_job(args))
    except ValidationError as err:
        print(f"rtjobs: error: invalid configuration: {one_line(str(err), 300)}", file=sys.stderr)
    except CliError as err:
        print(f"rtjobs: error: {err}", file=sys.stderr)
    except KeyboardInterrupt:
        if args.command in ("start", "stop"):
            print("rtjobs: interrupted; the job keeps running (see `rtjobs results`)", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_FAILURE


if __name__ == "__main__":
    main()
