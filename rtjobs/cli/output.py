"""What every command prints: a table of text cells, or JSON (`--json`)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from pydantic import BaseModel


@dataclass(frozen=True)
class Column:
    """A table column: its title (none: the table has no header) and its least width."""

    title: str = ""
    width: int = 0


class Table:
    """Columns two spaces apart, each as wide as its least width or its widest cell of the rows printed
    together (the header included). A table printed row by row (a followed stream) keeps its columns aligned
    as long as the cells fit the least widths."""

    def __init__(self, *columns: Column) -> None:
        self._columns = columns

    def print(self, rows: Iterable[Sequence[str]] = (), *, header: bool = True, out: TextIO | None = None) -> None:
        lines = [[c.title for c in self._columns]] if header else []
        lines += [list(row) for row in rows]
        widths = [max([c.width, *(len(line[i]) for line in lines)]) for i, c in enumerate(self._columns)]
        for line in lines:
            text = "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
            print(text.rstrip(), file=out or sys.stdout)


def print_json(value: Any, *, indent: int | None = 2, out: TextIO | None = None) -> None:
    """`value` as JSON (pydantic models as their JSON form); `indent=None`: on one line (JSON lines)."""
    print(json.dumps(value, indent=indent, default=_jsonable), file=out or sys.stdout)


def _jsonable(value: object) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
