"""The CLI rejects the inputs the contract rejects before sending anything (exit 2, one line), and
accepts what it accepts.
"""

from __future__ import annotations

import contextlib
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.models import MAX_STOP_TIMEOUT_S
from rtjobs.cli import build_parser
from tests.unit.contract.inputs import (
    invalid_game_ids,
    invalid_images,
    valid_game_ids,
)

# --- the CLI rejects the same inputs before sending anything -----------------------------------


def _parse(argv: list[str]) -> tuple[int | str | None, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    return exited.value.code, err.getvalue()


def _argv_safe(text: str) -> bool:
    return "\x00" not in text  # an OS argument cannot hold NUL


def _cli_timeout_ok(text: str) -> bool:
    """What Python's int() makes of it (" 7", "1_0" and "٣" included) within the contract's range."""
    try:
        return 0 <= int(text) <= MAX_STOP_TIMEOUT_S
    except ValueError:
        return False


@settings(max_examples=200, deadline=None, database=None)
@given(
    argv=st.one_of(
        invalid_game_ids.filter(_argv_safe).map(lambda g: ["start", "--", g]),
        invalid_game_ids.filter(_argv_safe).map(lambda g: ["stop", "--", g]),
        invalid_game_ids.filter(_argv_safe).map(lambda g: ["results", "--game", g]),
        st.tuples(valid_game_ids, invalid_images.filter(lambda v: isinstance(v, str) and _argv_safe(v))).map(
            lambda t: ["start", t[0], f"--image={t[1]}"]
        ),
        st.tuples(
            valid_game_ids,
            st.one_of(st.integers(max_value=-1), st.integers(min_value=MAX_STOP_TIMEOUT_S + 1)).map(str)
            | st.text(min_size=1).filter(lambda s: _argv_safe(s) and not _cli_timeout_ok(s)),
        ).map(lambda t: ["stop", t[0], f"--timeout={t[1]}"]),
    )
)
def test_cli_rejects_bad_arguments_with_exit_2_and_one_line(argv: list[str]) -> None:
    code, stderr = _parse(argv)
    assert code == 2, (argv, stderr)
    [line] = stderr.splitlines() or [""]
    assert line.startswith("rtjobs") and "error:" in line, stderr


@settings(max_examples=100, deadline=None, database=None)
@given(game=valid_game_ids, timeout=st.integers(0, MAX_STOP_TIMEOUT_S))
def test_cli_accepts_what_the_contract_accepts(game: str, timeout: int) -> None:
    args = build_parser().parse_args(["stop", game, "--timeout", str(timeout)])
    assert (args.game, args.timeout) == (game, timeout)
