"""`rtjobs results`: the result stream's recent entries, `--follow` new ones, or `--group` read as one
consumer of a consumer group (`rtjobs.consumer`, the Game Lobby's way).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisClusterException

from activities.redis_topology import RedisClient, RedisUrlError, redis_client, scrub
from contract.models import one_line
from contract.settings import Settings, redact_url
from rtjobs.cli.common import CliError, command, game_id, name
from rtjobs.cli.output import Column, Table, print_json
from rtjobs.consumer import FOLLOW_BLOCK_MS, Entry, GroupReader
from rtjobs.process import EXIT_OK

if TYPE_CHECKING:
    from rtjobs.cli.common import Commands

DEFAULT_COUNT = 20
DEFAULT_CLAIM_IDLE_S = 60
ENTRIES = Table(
    Column("ENTRY", 16), Column("GAME", 19), Column("OUTCOME", 7), Column("ERROR_CODE", 21), Column("CONTAINER", 12),
    Column("MESSAGE"),
)  # fmt: skip

Recent = tuple[list[Entry], str]  # entries oldest first, and the stream's last id


def add_commands(commands: Commands) -> None:
    results = command(
        commands,
        "results",
        "read the result stream",
        (
            "rtjobs results --game g-1 --count 5",
            "rtjobs results --follow -o json | jq -r 'select(.outcome == \"failure\") | .game_id'",
            "rtjobs results --group lobby --consumer lobby-1 --follow",
        ),
        output="JSON Lines, one object per entry (id and the entry's fields), also with --follow and --group",
    )
    results.add_argument("--game", type=game_id, help="only this game's entries")
    count = _positive("count", "a positive integer")
    results.add_argument("--count", type=count, help=f"how many recent entries (default {DEFAULT_COUNT})")
    results.add_argument("--follow", action="store_true", help="then keep printing new entries")
    results.add_argument(
        "--group",
        type=name("group"),
        help="read as this consumer group (created if missing): print, then XACK, every entry; "
        "without --follow, until nothing is left",
    )
    results.add_argument("--consumer", type=name("consumer"), help="consumer name in --group, stable across restarts")
    results.add_argument(
        "--claim-idle-s",
        type=_positive("claim idle time", "a positive number of seconds"),
        help=f"claim entries other consumers left pending this long (default {DEFAULT_CLAIM_IDLE_S})",
    )
    results.add_argument(
        "--new-only",
        action="store_true",
        help="create a missing --group at the stream's end ($) instead of its start (0)",
    )
    results.set_defaults(run=show_results)


def _positive(what: str, must: str) -> Callable[[str], int]:
    """An argument type for a positive integer; otherwise `invalid {what} ...: must be {must}`."""

    def check(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = 0
        if number < 1:
            raise argparse.ArgumentTypeError(f"invalid {what} {value!r}: must be {must}")
        return number

    return check


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


async def show_results(args: argparse.Namespace, settings: Settings) -> int:
    try:
        redis = redis_client(settings.redis_url)  # any topology: activities/redis_topology.py
    except RedisUrlError as err:
        raise CliError(f"invalid REDIS_URL {redact_url(settings.redis_url)}: {err}") from None
    try:
        if args.group is not None:
            await consume(redis, settings.results_stream, args)
            return EXIT_OK
        as_json = args.output == "json"
        count = args.count or DEFAULT_COUNT
        recent, last_id = await recent_entries(redis, settings.results_stream, count, args.game)
        _print_header(as_json)
        for entry in recent:
            print_entry(entry, as_json=as_json)
        if args.follow:
            await follow(redis, settings.results_stream, last_id, args.game, as_json)
    except (aioredis.RedisError, RedisClusterException) as err:
        where = redact_url(settings.redis_url)
        raise CliError(f"Redis error at {where}: {scrub(one_line(str(err), 300), settings.redis_url)}") from None
    finally:
        await redis.aclose()
    return EXIT_OK


async def consume(redis: RedisClient, stream: str, args: argparse.Namespace) -> None:
    """The group's entries, each printed (and flushed out of the process) before it is acknowledged."""
    as_json = args.output == "json"

    def handle(entry: Entry) -> None:
        print_entry(entry, as_json=as_json)
        sys.stdout.flush()  # out of the process before the XACK says it was processed

    def lost(ids: list[str]) -> None:
        print(
            f"rtjobs: warning: {len(ids)} pending entries were deleted from {stream} before they were "
            f"processed: {' '.join(ids[:10])}",
            file=sys.stderr,
        )

    reader = GroupReader(redis, stream, args.group, args.consumer, handle=handle, lost=lost)
    start = await reader.ensure_group(new_only=args.new_only)
    if start is not None:
        print(f"rtjobs: created consumer group {args.group} on {stream} at {start}", file=sys.stderr)
    _print_header(as_json)
    claim_idle_s = args.claim_idle_s or DEFAULT_CLAIM_IDLE_S
    await reader.consume(follow=args.follow, claim_idle_ms=claim_idle_s * 1000)


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


def _print_header(as_json: bool) -> None:
    if not as_json:
        ENTRIES.print()


def print_entry(entry: Entry, *, as_json: bool) -> None:
    entry_id, fields = entry
    if as_json:
        print_json({"id": entry_id, **fields})
        return
    row = (
        entry_id,
        fields.get("game_id", ""),
        fields.get("outcome", ""),
        fields.get("error_code", ""),
        fields.get("container_id", "")[:12],
        fields.get("error_message", ""),
    )
    ENTRIES.print([row], header=False)
