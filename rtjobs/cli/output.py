"""What every command prints (`-o text|json`): a table of text cells fitted to the terminal, JSON objects one
per line, and the one overwritten status line of a terminal.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from pydantic import BaseModel

GAP = "  "
ELLIPSIS = "…"
MIN_CELL = 4  # a column truncated to fit keeps at least this many characters


@dataclass(frozen=True)
class Column:
    """A table column: its title (none: the table has no header) and its least width."""

    title: str = ""
    width: int = 0


def terminal_width(out: TextIO) -> int | None:
    """The terminal's width when `out` is one (`COLUMNS` or the terminal's size), else None."""
    return shutil.get_terminal_size().columns if out.isatty() else None


class Table:
    """Columns two spaces apart, each as wide as its least width or its widest cell of the rows printed
    together (the header included). A table printed row by row (a followed stream) keeps its columns aligned
    as long as the cells fit the least widths. On a terminal the widest columns give way until a line fits
    its width, their cells cut with "…"; elsewhere (a pipe, a file) nothing is cut.
    """

    def __init__(self, *columns: Column) -> None:
        self._columns = columns

    def print(self, rows: Iterable[Sequence[str]] = (), *, header: bool = True, out: TextIO | None = None) -> None:
        out = out or sys.stdout
        lines = [[c.title for c in self._columns]] if header else []
        lines += [list(row) for row in rows]
        widths = [max([c.width, *(len(line[i]) for line in lines)]) for i, c in enumerate(self._columns)]
        limit = terminal_width(out)
        if limit is not None:
            widths = fit(widths, limit)
        for line in lines:
            text = GAP.join(cut(cell, width).ljust(width) for cell, width in zip(line, widths, strict=True))
            print(text.rstrip(), file=out)


def fit(widths: Sequence[int], limit: int) -> list[int]:
    """Column widths whose line (gaps included) is at most `limit`: the widest column narrowed first,
    none below `MIN_CELL` (the line may then still be wider).
    """
    fitted = list(widths)
    excess = sum(fitted) + len(GAP) * (len(fitted) - 1) - limit
    while excess > 0:
        widest = max(range(len(fitted)), key=fitted.__getitem__)
        if fitted[widest] <= MIN_CELL:
            break
        fitted[widest] -= 1
        excess -= 1
    return fitted


def cut(text: str, width: int) -> str:
    """`text`, or its first `width - 1` characters and "…" when longer than `width`."""
    return text if len(text) <= width else text[: max(width - 1, 0)] + ELLIPSIS


def print_json(value: Any, *, out: TextIO | None = None) -> None:
    """`value` as one line of JSON (pydantic models as their JSON form): a command's result, or one entry of
    a stream (JSON Lines).
    """
    print(json.dumps(value, default=_jsonable), file=out or sys.stdout)


def _jsonable(value: object) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class StatusLine:
    r"""One line of a terminal, rewritten in place (`\r`, the rest of the old text cleared), cut to the
    terminal's width so that it never wraps.
    """

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def show(self, text: str) -> None:
        width = self._width()
        self._out.write("\r" + cut(text, width).ljust(width))
        self._out.flush()

    def clear(self) -> None:
        self._out.write("\r" + " " * self._width() + "\r")
        self._out.flush()

    def _width(self) -> int:
        """The terminal's width less one: a line that fills the last column would wrap on some terminals."""
        return max(shutil.get_terminal_size().columns - 1, 1)
