"""`rtjobs`: the operator CLI. Start and stop jobs, read the result stream, run the worker.

    rtjobs start GAME [--image IMG] [--job ID] [--wait]
    rtjobs stop GAME [--timeout S] [--job ID] [--wait]
    rtjobs results [--game GAME] [--count N] [--follow] [--json]
    rtjobs results --group G --consumer C [--claim-idle-s S] [--new-only] [--follow] [--json]
    rtjobs hosts [--json]                  (the fleet's Docker hosts on RTJOBS_TASK_QUEUE)
    rtjobs host drain|undrain HOST         (HOST: name or id; drained: no new engines)
    rtjobs host forget HOST [--force]      (a host gone for good; --force: even while live)
    rtjobs reconcile [--host HOST] [--dry-run] [--json]   (drift: orphaned engines, stale records)
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
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn, TextIO, cast

import redis.asyncio as aioredis
from pydantic import TypeAdapter, ValidationError
from redis.exceptions import RedisClusterException
from temporalio.client import (
    Client,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.service import RPCError, RPCStatusCode

import worker
from activities.fleet import QUERY_TIMEOUT, Fleet, UnknownHost
from activities.reconcile import reconcile_request
from activities.redis_topology import RedisClient, RedisUrlError, redis_client, scrub
from contract.hosts import (
    DRAIN_UPDATE,
    FORGET_HOST_SIGNAL,
    FORGET_UPDATE,
    UNDRAIN_UPDATE,
    HostRef,
    HostView,
)
from contract.lock import LOCK_WORKFLOW, coordination_queue
from contract.models import MAX_STOP_TIMEOUT_S, GameId, ImageRef, JobResult, JobStatus, Outcome, one_line
from contract.reconcile import RECONCILE_WORKFLOW, ReconcileSummary, schedule_id
from contract.settings import Settings, redact_url
from starter import connect, connect_config, describe, start_job, stop_job
from workflows.search import RUNTIME_HOST

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
RESULT_FIELDS = ("game_id", "outcome", "container_id", "engine_endpoint", "error_code", "error_message")
FOLLOW_BLOCK_MS = 1000  # below the Redis client's 3 s socket timeout
DEFAULT_COUNT = 20
DEFAULT_CLAIM_IDLE_S = 60
GROUP_READ_COUNT = 100
STATUS_POLL_S = 0.5
HOST_ACTIONS = {DRAIN_UPDATE: "drain", UNDRAIN_UPDATE: "undrain", FORGET_UPDATE: "forget"}

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


def _name(what: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not value.strip() or any(c.isspace() for c in value):
            raise argparse.ArgumentTypeError(f"invalid {what} name {value!r}: must be non-empty, without spaces")
        return value

    return check


def _claim_idle(value: str) -> int:
    try:
        seconds = int(value)
    except ValueError:
        seconds = 0
    if seconds < 1:
        raise argparse.ArgumentTypeError(f"invalid claim idle time {value!r}: must be a positive number of seconds")
    return seconds


def check_results_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Combinations argparse cannot express; each is one line and exit 2 (parser.error)."""
    if args.command != "results":
        return
    if args.group is None:
        for given, flag in ((args.consumer, "--consumer"), (args.claim_idle_s, "--claim-idle-s")):
            if given is not None:
                parser.error(f"{flag} needs --group")
        if args.new_only:
            parser.error("--new-only needs --group")
        return
    if args.consumer is None:
        parser.error("--group needs --consumer: a name stable across restarts, so a restart gets its pending entries")
    if args.game is not None:
        parser.error("--game cannot be used with --group: the group acknowledges every entry it reads")
    if args.count is not None:
        parser.error("--count cannot be used with --group: the group reads every entry it has not acknowledged")


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
    results.add_argument("--count", type=_positive, help=f"how many recent entries (default {DEFAULT_COUNT})")
    results.add_argument("--follow", action="store_true", help="then keep printing new entries")
    results.add_argument("--json", action="store_true", help="one JSON object per entry")
    results.add_argument(
        "--group",
        type=_name("group"),
        help="read as this consumer group (created if missing): print, then XACK, every entry; "
        "without --follow, until nothing is left",
    )
    results.add_argument("--consumer", type=_name("consumer"), help="consumer name in --group, stable across restarts")
    results.add_argument(
        "--claim-idle-s",
        type=_claim_idle,
        help=f"claim entries other consumers left pending this long (default {DEFAULT_CLAIM_IDLE_S})",
    )
    results.add_argument(
        "--new-only",
        action="store_true",
        help="create a missing --group at the stream's end ($) instead of its start (0)",
    )

    hosts = commands.add_parser("hosts", help="list the fleet's Docker hosts (RTJOBS_TASK_QUEUE)")
    hosts.add_argument("--json", action="store_true", help="a JSON array of the hosts, with full ids")
    host = commands.add_parser("host", help="drain, undrain or forget one Docker host of the fleet")
    actions = host.add_subparsers(dest="action", required=True, parser_class=_Parser)
    host_name = _name("host")
    for action, text in (
        (DRAIN_UPDATE, "no new engines on the host; its engines keep running and being served"),
        (UNDRAIN_UPDATE, "the host takes new engines again"),
        (FORGET_UPDATE, "the host is gone for good: drop it and release the games placed on it"),
    ):
        sub = actions.add_parser(action, help=text)
        sub.add_argument("host", type=host_name, help="host name or id (see `rtjobs hosts`)")
        if action == FORGET_UPDATE:
            sub.add_argument("--force", action="store_true", help="even while a worker still reports it")

    reconcile = commands.add_parser(
        "reconcile",
        help="reconcile the hosts' engines with their games' records now, and print what was found and done",
    )
    reconcile.add_argument("--host", type=host_name, help="only this host (name or id; default: every live host)")
    reconcile.add_argument("--dry-run", action="store_true", help="only report what would be done; change nothing")
    reconcile.add_argument("--json", action="store_true", help="a JSON array of the hosts' summaries")

    commands.add_parser("worker", help="run the worker (TEMPORAL_ADDRESS)")
    commands.add_parser("dev", help="run the worker with the embedded Temporal dev server and UI")
    return parser


# --- start / stop -----------------------------------------------------------------------------------


async def _connect() -> Client:
    config = connect_config()
    try:
        return await connect(config)
    except Exception as err:
        raise CliError(f"Temporal unreachable at {describe(config)}: {one_line(str(err), 300)}") from None


async def run_job(args: argparse.Namespace) -> int:
    client = await _connect()
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
    try:
        redis = redis_client(settings.redis_url)  # any topology: activities/redis_topology.py
    except RedisUrlError as err:
        raise CliError(f"invalid REDIS_URL {redact_url(settings.redis_url)}: {err}") from None
    try:
        if args.group is not None:
            group = GroupReader(redis, settings.results_stream, args.group, args.consumer, as_json=args.json)
            claim_idle_s = args.claim_idle_s or DEFAULT_CLAIM_IDLE_S
            await group.consume(follow=args.follow, claim_idle_ms=claim_idle_s * 1000, new_only=args.new_only)
            return EXIT_OK
        count = args.count or DEFAULT_COUNT
        recent, last_id = await recent_entries(redis, settings.results_stream, count, args.game)
        _print_header(args.json)
        for entry in recent:
            print_entry(entry, as_json=args.json)
        if args.follow:
            await follow(redis, settings.results_stream, last_id, args.game, args.json)
    except (aioredis.RedisError, RedisClusterException) as err:
        where = redact_url(settings.redis_url)
        raise CliError(f"Redis error at {where}: {scrub(one_line(str(err), 300), settings.redis_url)}") from None
    finally:
        await redis.aclose()
    return EXIT_OK


async def recent_entries(redis: RedisClient, stream: str, count: int, game: str | None) -> Recent:
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


async def follow(redis: RedisClient, stream: str, last_id: str, game: str | None, as_json: bool) -> None:
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


# --- results as a consumer group (the Game Lobby's way) ----------------------------------------------


class GroupReader:
    """Reads the stream as one consumer of a consumer group, so that every entry is processed at least
    once: printed (and flushed) first, acknowledged (XACK) after. A consumer that dies between the two
    leaves the entry pending: under the same consumer name it is read again at the next start; under
    any other, XAUTOCLAIM hands it over once it has been idle for the claim time. Duplicates are
    possible, losses are not."""

    def __init__(self, redis: RedisClient, stream: str, group: str, consumer: str, *, as_json: bool) -> None:
        self._redis = redis
        self._stream = stream
        self._group = group
        self._consumer = consumer
        self._as_json = as_json

    async def consume(self, *, follow: bool, claim_idle_ms: int, new_only: bool = False) -> None:
        """Own pending entries first, then (each round) entries dead consumers left pending, then new
        ones; without `follow`, until a round finds nothing."""
        await self.ensure_group(new_only=new_only)
        _print_header(self._as_json)
        await self._own_pending()
        while True:
            claimed = await self._claim_abandoned(claim_idle_ms)
            new = await self._read(">", block_ms=FOLLOW_BLOCK_MS if follow else None)
            if not follow and not claimed and not new:
                return

    async def ensure_group(self, *, new_only: bool) -> None:
        """XGROUP CREATE ... MKSTREAM at 0 (every entry the stream still holds), or at $ with
        `new_only`; an existing group is left as it is."""
        start = "$" if new_only else "0"
        try:
            await self._redis.xgroup_create(self._stream, self._group, id=start, mkstream=True)
        except aioredis.ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise
            return
        print(f"rtjobs: created consumer group {self._group} on {self._stream} at {start}", file=sys.stderr)

    async def _own_pending(self) -> None:
        """Entries delivered to this consumer name and never acknowledged (it died): again, at once."""
        after = "0"
        while entries := await self._read_batch(after, block_ms=None):
            await self._process(entries)
            after = entries[-1][0]

    async def _claim_abandoned(self, min_idle_ms: int) -> int:
        """XAUTOCLAIM every entry pending longer than `min_idle_ms` to any consumer; returns how many."""
        cursor, count = "0-0", 0
        while True:
            reply = await self._redis.xautoclaim(
                self._stream,
                self._group,
                self._consumer,
                min_idle_time=min_idle_ms,
                start_id=cursor,
                count=GROUP_READ_COUNT,
            )
            cursor, entries = str(reply[0]), cast(list[Entry], reply[1])
            if len(reply) > 2 and reply[2]:  # Redis 7 removed these from the group's pending list
                self._lost(cast(list[str], reply[2]))
            await self._process(entries)
            count += len(entries)
            if cursor == "0-0":
                return count

    async def _read(self, after: str, *, block_ms: int | None) -> int:
        entries = await self._read_batch(after, block_ms=block_ms)
        await self._process(entries)
        return len(entries)

    async def _read_batch(self, after: str, *, block_ms: int | None) -> list[Entry]:
        reply = cast(
            list[tuple[str, list[Entry]]],
            await self._redis.xreadgroup(
                self._group, self._consumer, {self._stream: after}, count=GROUP_READ_COUNT, block=block_ms
            ),
        )
        return [entry for _name, entries in reply or [] for entry in entries]

    async def _process(self, entries: list[Entry]) -> None:
        for entry_id, fields in entries:
            if not fields:  # pending, but trimmed away (RTJOBS_RESULTS_MAXLEN, XDEL): nothing to print
                self._lost([entry_id])
            else:
                print_entry((entry_id, fields), as_json=self._as_json)
                sys.stdout.flush()  # out of the process before the XACK says it was processed
            await self._redis.xack(self._stream, self._group, entry_id)

    def _lost(self, ids: list[str]) -> None:
        print(
            f"rtjobs: warning: {len(ids)} pending entries were deleted from {self._stream} before they were "
            f"processed: {' '.join(ids[:10])}",
            file=sys.stderr,
        )


# --- the fleet's hosts --------------------------------------------------------------------------------


class Hosts:
    """The fleet's hosts (one `RuntimeHost` workflow each, `activities/fleet.py`), as operators use them."""

    def __init__(self, client: Client, task_queue: str) -> None:
        self._client = client
        self._task_queue = task_queue
        self._fleet = Fleet(client, task_queue)

    async def hosts(self) -> list[HostView]:
        try:
            views = await self._fleet.views()
        except RPCError as err:
            raise self._error("list", err) from None
        if not views:
            raise CliError(f"no host has reported on task queue {self._task_queue} (is a worker running?)")
        return views

    async def command(self, action: str, host: str) -> HostView:
        """The host's drain/undrain/forget update; an unknown host is its one-line message."""
        try:
            return await self._fleet.command(action, host)
        except UnknownHost as err:
            raise CliError(str(err)) from None
        except WorkflowUpdateFailedError as err:
            raise CliError(f"could not {HOST_ACTIONS[action]} {host}: {one_line(str(err.cause), 300)}") from None
        except (RPCError, WorkflowUpdateRPCTimeoutOrCancelledError) as err:
            raise self._error(f"{HOST_ACTIONS[action]} {host}", err) from None

    async def release_games(self, view: HostView) -> int:
        """Signal `forget_host` to every running per-game workflow of this fleet placed on the host;
        how many got it (one that ended meanwhile is skipped)."""
        name = view.name.replace("\\", "\\\\").replace('"', '\\"')
        query = (
            f'WorkflowType="{LOCK_WORKFLOW}" AND {RUNTIME_HOST.name}="{name}" '
            f'AND TaskQueue="{coordination_queue(self._task_queue)}" AND ExecutionStatus="Running"'
        )
        released = 0
        async for execution in self._client.list_workflows(query):
            handle = self._client.get_workflow_handle(execution.id, run_id=execution.run_id)
            try:
                await handle.signal(FORGET_HOST_SIGNAL, view.host_id)
            except RPCError as err:
                if err.status != RPCStatusCode.NOT_FOUND:
                    what = f"could not release game workflow {execution.id}"
                    raise CliError(f"{what}: {one_line(err.message, 300)}") from None
                continue
            released += 1
        return released

    def _error(self, what: str, err: RPCError | WorkflowUpdateRPCTimeoutOrCancelledError) -> CliError:
        if isinstance(err, WorkflowUpdateRPCTimeoutOrCancelledError) or err.status == RPCStatusCode.DEADLINE_EXCEEDED:
            return CliError(
                f"the hosts of task queue {self._task_queue} did not answer within "
                f"{QUERY_TIMEOUT.total_seconds():.0f}s (is a worker running?)"
            )
        return CliError(f"hosts ({what}): {err.status.name}: {one_line(err.message, 300)}")


async def show_hosts(args: argparse.Namespace, settings: Settings) -> int:
    views = await Hosts(await _connect(), settings.task_queue).hosts()
    if args.json:
        print(json.dumps([v.model_dump(mode="json") for v in views], indent=2))
        return EXIT_OK
    print_hosts(views, datetime.now(UTC), sys.stdout)
    return EXIT_OK


HOST_HEADER = ("NAME", "ID", "LIVE", "WORKERS", "ENGINES", "DRAINING", "LAST SEEN", "NETWORK")


def print_hosts(views: Sequence[HostView], now: datetime, out: TextIO) -> None:
    rows = [HOST_HEADER] + [
        (
            v.name,
            v.host_id[:12],
            _yes_no(v.live),
            str(len(v.live_workers)),
            engines_text(v),
            _yes_no(v.draining),
            age_text(v.last_seen, now),
            v.network_driver or "-",
        )
        for v in views
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HOST_HEADER))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(), file=out)


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def engines_text(view: HostView) -> str:
    """`3/40`, or `3+1/40` with one engine reserved (chosen for a start not reported yet)."""
    reserved = f"+{view.reserved}" if view.reserved else ""
    return f"{view.engines}{reserved}/{view.capacity}"


def age_text(seen: datetime | None, now: datetime) -> str:
    if seen is None:
        return "never"
    seconds = max(0, int((now - seen).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


async def command_host(args: argparse.Namespace, settings: Settings) -> int:
    hosts = Hosts(await _connect(), settings.task_queue)
    if args.action == FORGET_UPDATE and not args.force:
        live = [v for v in await hosts.hosts() if args.host in (v.name, v.host_id) and v.live]
        if live:
            raise CliError(
                f"host {live[0].name} is live (workers: {', '.join(live[0].live_workers)}): its worker would "
                "report it right back; stop its workers first, or use --force"
            )
    view = await hosts.command(args.action, args.host)
    if args.action == DRAIN_UPDATE:
        print(f"host {view.name} draining: no new engines; its {view.engines} engines keep running and being served")
    elif args.action == UNDRAIN_UPDATE:
        print(f"host {view.name} open: takes new engines again ({engines_text(view)} in use)")
    else:
        released = await hosts.release_games(view)
        print(
            f"host {view.name} ({view.host_id}) forgotten; {released} games placed on it released "
            "(their next job places them again)"
        )
    return EXIT_OK


async def run_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    """One `RuntimeReconcile` run per host (all at once), with this environment's reconcile settings;
    exit 1 when a host could not be reconciled. Hosts without a live worker are skipped unless named:
    their Docker step would only wait out RTJOBS_HOST_WAIT_S."""
    client = await _connect()
    views = await Hosts(client, settings.task_queue).hosts()
    if args.host is not None:
        views = [v for v in views if args.host in (v.name, v.host_id)]
        if not views:
            raise CliError(f"no host {args.host} in the fleet of task queue {settings.task_queue} (see `rtjobs hosts`)")
    else:
        for view in views:
            if not view.live:
                print(
                    f"host {view.name}: no live worker, skipped (name it with --host to wait for one)", file=sys.stderr
                )
        views = [v for v in views if v.live]
    summaries = await asyncio.gather(*(_reconcile_host(client, settings, v, dry_run=args.dry_run) for v in views))
    if args.json:
        print(json.dumps([s.model_dump(mode="json") for s in summaries], indent=2))
    else:
        for summary in summaries:
            print(summary.headline())
            for finding in summary.findings:
                print(f"  {finding.line()}")
    return EXIT_FAILURE if any(s.error for s in summaries) else EXIT_OK


async def _reconcile_host(client: Client, settings: Settings, view: HostView, *, dry_run: bool) -> ReconcileSummary:
    host = HostRef(host_id=view.host_id, name=view.name, queue=view.queue)
    sid = schedule_id(settings.task_queue, view.host_id)
    try:
        summary: ReconcileSummary = await client.execute_workflow(
            RECONCILE_WORKFLOW,
            reconcile_request(settings, host, dry_run=dry_run),
            id=f"{sid}-cli-{uuid.uuid4().hex[:8]}",
            task_queue=settings.task_queue,
            result_type=ReconcileSummary,
            static_summary=f"rtjobs reconcile{' --dry-run' if dry_run else ''} of host {view.name}",
        )
    except (RPCError, WorkflowFailureError) as err:
        raise CliError(f"reconcile of host {view.name} failed: {one_line(str(err.__cause__ or err), 300)}") from None
    return summary


# --- main -------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_results_args(parser, args)
    if args.command in ("worker", "dev"):
        worker.main(["--dev"] if args.command == "dev" else [])
        return
    worker.exit_now(_run(args))


def _run(args: argparse.Namespace) -> int:
    try:
        settings = Settings()
        if args.command == "results":
            return asyncio.run(show_results(args, settings))
        if args.command == "hosts":
            return asyncio.run(show_hosts(args, settings))
        if args.command == "host":
            return asyncio.run(command_host(args, settings))
        if args.command == "reconcile":
            return asyncio.run(run_reconcile(args, settings))
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
