"""`rtjobs`: the operator CLI. Start and stop jobs, read the result stream, run the worker.

    rtjobs start GAME [--image IMG] [--job ID] [--wait]
    rtjobs stop GAME [--timeout S] [--job ID] [--wait]
    rtjobs results [--game GAME] [--count N] [--follow]
    rtjobs results --group G --consumer C [--claim-idle-s S] [--new-only] [--follow]
    rtjobs hosts                           (the fleet's Docker hosts on RTJOBS_TASK_QUEUE)
    rtjobs host drain|undrain HOST         (HOST: name or id; drained: no new engines)
    rtjobs host forget HOST [--force]      (a host gone for good; --force: even while live)
    rtjobs reconcile [--host HOST] [--dry-run]   (drift: orphaned engines, stale records)
    rtjobs worker        (python worker.py)
    rtjobs dev           (python worker.py --dev)
    rtjobs --version

Every command but worker and dev takes `-o text|json` (json: one JSON object per result, on one line; JSON
Lines for `results`, one object per entry); those that talk to Temporal take `--address`, `--namespace`,
`--api-key`, `--tls`, `--profile`, over the TEMPORAL_* variables and the config file's profile.

One module per command group: `jobs` (start, stop), `results`, `hosts` (hosts, host), `reconcile`; what
they print goes through `output`.

Arguments are checked here against the contract before anything is sent (exit 2, one line); Redis comes from
REDIS_URL, as for the worker. Exit codes: 0 success (or started), 1 failure outcome / runtime error, 2 bad
arguments, 130 ^C.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from contract.models import one_line
from contract.settings import Settings
from rtjobs import __version__
from rtjobs.cli import hosts, jobs, reconcile, results
from rtjobs.cli.common import CliError, Parser
from rtjobs.process import EXIT_FAILURE, EXIT_INTERRUPTED, exit_now


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="rtjobs", description="Operate runtime jobs (start/stop game engines).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for group in (jobs, results, hosts, reconcile):
        group.add_commands(commands)
    commands.add_parser("worker", help="run the worker (TEMPORAL_ADDRESS)")
    commands.add_parser("dev", help="run the worker with the embedded Temporal dev server and UI")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    results.check_results_args(parser, args)
    if args.command in ("worker", "dev"):
        import worker  # (here only: no other command needs the worker's modules)

        worker.main(["--dev"] if args.command == "dev" else [])
        return
    exit_now(_run(args))


def _run(args: argparse.Namespace) -> int:
    try:
        return int(asyncio.run(args.run(args, Settings())))
    except ValidationError as err:
        print(f"rtjobs: error: invalid configuration: {one_line(str(err), 300)}", file=sys.stderr)
    except CliError as err:
        print(f"rtjobs: error: {err}", file=sys.stderr)
    except KeyboardInterrupt:
        if args.command in ("start", "stop"):
            print("rtjobs: interrupted; the job keeps running (see `rtjobs results`)", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_FAILURE
