"""What the command groups share: the one-line error, argument types checked against the contract, and the
Temporal connection.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from pydantic import TypeAdapter, ValidationError
from temporalio.client import Client

from contract.models import GameId, one_line
from rtjobs.client import ConnectionFlags, connect, connect_config, describe
from rtjobs.process import EXIT_USAGE


class CliError(Exception):
    """A runtime error the operator sees as one line on stderr (exit 1)."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit 2), not the usage block; the epilog (a command's
    examples) is printed as written.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


if TYPE_CHECKING:  # (not subscriptable at run time)
    # The subcommands of a parser, to which each command group adds its own.
    Commands = argparse._SubParsersAction[Parser]


def command(commands: Commands, name: str, what: str, examples: Sequence[str], *, output: str) -> Parser:
    """A command: `what` its help, `examples` the end of its `--help`, `output` what `-o json` prints."""
    epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples)
    parser = commands.add_parser(name, help=what, description=what, epilog=epilog)
    parser.add_argument(
        "-o",
        "--output",
        choices=("text", "json"),
        default="text",
        help=f"text (the default, for people) or json: {output}",
    )
    return parser


def add_connection(parser: argparse.ArgumentParser) -> None:
    """The Temporal connection flags, as the `temporal` CLI's: flags over TEMPORAL_* over the profile file."""
    group = parser.add_argument_group(
        "Temporal connection", "each overrides its TEMPORAL_* variable, which overrides the config file's profile"
    )
    group.add_argument("--address", metavar="HOST:PORT", help="the Temporal frontend (TEMPORAL_ADDRESS)")
    group.add_argument("--namespace", help="the namespace (TEMPORAL_NAMESPACE)")
    group.add_argument(
        "--api-key", metavar="KEY", help="the API key (prefer TEMPORAL_API_KEY: other users see a process's arguments)"
    )
    group.add_argument(
        "--tls", action=argparse.BooleanOptionalAction, help="TLS on or off (TEMPORAL_TLS; on with an API key)"
    )
    group.add_argument("--profile", help="the config file's profile (TEMPORAL_PROFILE, default: default)")


def connection_flags(args: argparse.Namespace) -> ConnectionFlags:
    return ConnectionFlags(
        address=args.address, namespace=args.namespace, api_key=args.api_key, tls=args.tls, profile=args.profile
    )


def contract_type(adapter: TypeAdapter[str], what: str) -> Callable[[str], str]:
    """An argument type validated as the contract validates the field (its message, exit 2)."""

    def check(value: str) -> str:
        try:
            return adapter.validate_python(value)
        except ValidationError as err:
            reason = err.errors()[0]["msg"].removeprefix("Value error, ")
            raise argparse.ArgumentTypeError(f"invalid {what}: {reason}") from None

    return check


game_id = contract_type(TypeAdapter(GameId), "game id")


def name(what: str) -> Callable[[str], str]:
    """An argument type for a name: non-empty, without spaces."""

    def check(value: str) -> str:
        if not value.strip() or any(c.isspace() for c in value):
            raise argparse.ArgumentTypeError(f"invalid {what} name {value!r}: must be non-empty, without spaces")
        return value

    return check


async def connect_temporal(args: argparse.Namespace) -> Client:
    """The client of the command's connection flags over what the worker would use (TEMPORAL_ADDRESS etc.);
    a bad profile or unreachable is a `CliError`.
    """
    try:
        config = connect_config(connection_flags(args))
    except Exception as err:  # (the SDK's envconfig: an unknown profile, an unreadable file)
        raise CliError(f"invalid Temporal configuration: {one_line(str(err), 300)}") from None
    try:
        return await connect(config)
    except Exception as err:
        raise CliError(f"Temporal unreachable at {describe(config)}: {one_line(str(err), 300)}") from None
