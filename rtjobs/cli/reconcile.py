"""`rtjobs reconcile`: reconcile the hosts' engines with their games' records now (drift: orphaned engines,
stale records), and print what was found and done.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from typing import TYPE_CHECKING

from temporalio.client import Client, WorkflowFailureError
from temporalio.service import RPCError

from activities.reconcile import reconcile_request
from contract.hosts import HostRef, HostView
from contract.models import one_line
from contract.reconcile import RECONCILE_WORKFLOW, ReconcileSummary, schedule_id
from contract.settings import Settings
from rtjobs.cli.common import CliError, add_connection, command, connect_temporal
from rtjobs.cli.hosts import Hosts, host_name
from rtjobs.cli.output import print_json
from rtjobs.process import EXIT_FAILURE, EXIT_OK

if TYPE_CHECKING:
    from rtjobs.cli.common import Commands


def add_commands(commands: Commands) -> None:
    reconcile = command(
        commands,
        "reconcile",
        "reconcile the hosts' engines with their games' records now, and print what was found and done",
        (
            "rtjobs reconcile --dry-run",
            "rtjobs reconcile --host h1",
            "rtjobs reconcile -o json | jq '.summaries[].findings'",
        ),
        output='{"summaries": [...]}, one ReconcileSummary per host',
    )
    reconcile.add_argument("--host", type=host_name, help="only this host (name or id; default: every live host)")
    reconcile.add_argument("--dry-run", action="store_true", help="only report what would be done; change nothing")
    add_connection(reconcile)
    reconcile.set_defaults(run=run_reconcile)


async def run_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    """One `RuntimeReconcile` run per host (all at once), with this environment's reconcile settings;
    exit 1 when a host could not be reconciled. Hosts without a live worker are skipped unless named:
    their Docker step would only wait out RTJOBS_HOST_WAIT_S.
    """
    client = await connect_temporal(args)
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
    if args.output == "json":
        print_json({"summaries": summaries})
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
