"""`rtjobs hosts` and `rtjobs host drain|undrain|forget HOST`: the fleet's Docker hosts (one `RuntimeHost`
workflow each, `activities/fleet.py`) on RTJOBS_TASK_QUEUE.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TextIO

from temporalio.client import Client, WorkflowUpdateFailedError, WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.service import RPCError, RPCStatusCode

from activities.fleet import QUERY_TIMEOUT, Fleet, Survey, UnknownHost
from contract.hosts import DRAIN_UPDATE, FORGET_HOST_SIGNAL, FORGET_UPDATE, UNDRAIN_UPDATE, HostView
from contract.lock import LOCK_WORKFLOW, coordination_queue
from contract.models import one_line
from contract.settings import Settings
from rtjobs.cli.common import CliError, Parser, add_connection, command, connect_temporal, name
from rtjobs.cli.output import Column, Table, print_json
from rtjobs.process import EXIT_FAILURE, EXIT_OK
from workflows.search import RUNTIME_HOST

if TYPE_CHECKING:
    from rtjobs.cli.common import Commands

HOST_ACTIONS = {DRAIN_UPDATE: "drain", UNDRAIN_UPDATE: "undrain", FORGET_UPDATE: "forget"}
HOSTS = Table(*map(Column, ("NAME", "ID", "LIVE", "WORKERS", "ENGINES", "DRAINING", "LAST SEEN", "NETWORK")))
host_name = name("host")


def add_commands(commands: Commands) -> None:
    hosts = command(
        commands,
        "hosts",
        "list the fleet's Docker hosts (RTJOBS_TASK_QUEUE)",
        ("rtjobs hosts", "rtjobs hosts -o json | jq -r '.hosts[] | select(.live) | .name'"),
        output='{"hosts": [...], "unanswered": {name: why}}, every host\'s full view (ids, workers, reserved '
        "slots, Docker version); exit 1 when a host did not answer",
    )
    add_connection(hosts)
    hosts.set_defaults(run=show_hosts)
    host = commands.add_parser(
        "host",
        help="drain, undrain or forget one Docker host of the fleet",
        description="drain, undrain or forget one Docker host of the fleet",
        epilog="examples:\n  rtjobs host drain h1\n  rtjobs host forget h2 --help",
    )
    actions = host.add_subparsers(dest="action", required=True, parser_class=Parser)
    for action, text, examples in (
        (
            DRAIN_UPDATE,
            "no new engines on the host; its engines keep running and being served",
            ("rtjobs host drain h1",),
        ),
        (UNDRAIN_UPDATE, "the host takes new engines again", ("rtjobs host undrain h1",)),
        (
            FORGET_UPDATE,
            "the host is gone for good: drop it and release the games placed on it",
            ("rtjobs host forget h2", "rtjobs host forget h2 --force -o json"),
        ),
    ):
        json_out = '{"host": {...}}, the host\'s view after it' + (
            ', and "released_games": how many' if action == FORGET_UPDATE else ""
        )
        sub = command(actions, action, text, examples, output=json_out)
        sub.add_argument("host", type=host_name, help="host name or id (see `rtjobs hosts`)")
        if action == FORGET_UPDATE:
            sub.add_argument("--force", action="store_true", help="even while a worker still reports it")
        add_connection(sub)
    host.set_defaults(run=command_host)


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

    async def survey(self) -> Survey:
        """Every host that answered, and those that did not (`rtjobs hosts` shows the rest of the fleet)."""
        try:
            survey = await self._fleet.survey()
        except RPCError as err:
            raise self._error("list", err) from None
        if not survey.views and not survey.unanswered:
            raise CliError(f"no host has reported on task queue {self._task_queue} (is a worker running?)")
        return survey

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
        how many got it (one that ended meanwhile is skipped).
        """
        host = view.name.replace("\\", "\\\\").replace('"', '\\"')
        query = (
            f'WorkflowType="{LOCK_WORKFLOW}" AND {RUNTIME_HOST.name}="{host}" '
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
    """The hosts that answered; one whose workflow did not (busy, failing) is named on stderr, exit 1."""
    survey = await Hosts(await connect_temporal(args), settings.task_queue).survey()
    if args.output == "json":
        print_json({"hosts": survey.views, "unanswered": survey.unanswered})
    else:
        print_hosts(survey.views, datetime.now(UTC))
    for host, why in survey.unanswered.items():
        print(f"rtjobs: host {host} did not answer: {one_line(why, 300)}", file=sys.stderr)
    return EXIT_FAILURE if survey.unanswered else EXIT_OK


def print_hosts(views: Sequence[HostView], now: datetime, out: TextIO | None = None) -> None:
    rows = [
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
    HOSTS.print(rows, out=out)


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
    hosts = Hosts(await connect_temporal(args), settings.task_queue)
    if args.action == FORGET_UPDATE and not args.force:
        live = [v for v in await hosts.hosts() if args.host in (v.name, v.host_id) and v.live]
        if live:
            raise CliError(
                f"host {live[0].name} is live (workers: {', '.join(live[0].live_workers)}): its worker would "
                "report it right back; stop its workers first, or use --force"
            )
    view = await hosts.command(args.action, args.host)
    released = await hosts.release_games(view) if args.action == FORGET_UPDATE else None
    if args.output == "json":
        print_json({"host": view} if released is None else {"host": view, "released_games": released})
    elif args.action == DRAIN_UPDATE:
        print(f"host {view.name} draining: no new engines; its {view.engines} engines keep running and being served")
    elif args.action == UNDRAIN_UPDATE:
        print(f"host {view.name} open: takes new engines again ({engines_text(view)} in use)")
    else:
        print(
            f"host {view.name} ({view.host_id}) forgotten; {released} games placed on it released "
            "(their next job places them again)"
        )
    return EXIT_OK
