"""What the command groups share: the one-line error, argument types checked against the contract, and the
Temporal connection."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

from pydantic import TypeAdapter, ValidationError
from temporalio.client import Client

from contract.models import GameId, one_line
from rtjobs.client import connect, connect_config, describe
from rtjobs.process import EXIT_USAGE


class CliError(Exception):
    """A runtime error the operator sees as one line on stderr (exit 1)."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit 2), not the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


if TYPE_CHECKING:  # (not subscriptable at run time)
    # The subcommands of a parser, to which each command group adds its own.
    Commands = argparse._SubParsersAction[Parser]


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


async def connect_temporal() -> Client:
    """The client the worker would use (TEMPORAL_ADDRESS etc.); unreachable is a `CliError`."""
    config = connect_config()
    try:
        return await connect(config)
    except Exception as err:
        raise CliError(f"Temporal unreachable at {describe(config)}: {one_line(str(err), 300)}") from None
