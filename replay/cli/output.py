"""Where every subcommand's output goes: JSON lines, a rich table on a terminal, plain text otherwise.

One Output per invocation. With ``--json`` every record is one JSON object per line (raw
values: ints, not "1.2 MiB"), so scripts never parse tables. Without it, a terminal gets
rich tables and colour; a pipe or file gets plain, aligned text with no escape codes.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TextIO


@dataclass(frozen=True)
class Column:
    """One table column: the record `key`, its `header`, how to format a value, right-aligned or not."""

    key: str
    header: str
    fmt: Callable[[Any], str] = str
    right: bool = False


class Output:
    """Writes records as JSON lines (`as_json`), rich tables (a TTY) or plain text."""

    def __init__(self, as_json: bool = False, stream: TextIO | None = None):
        self.as_json = as_json
        self.stream = stream if stream is not None else sys.stdout
        self.tty = _isatty(self.stream)
        self._console = None
        if self.tty and not as_json:
            from rich.console import Console

            self._console = Console(file=self.stream, highlight=False)

    def record(self, obj: dict) -> None:
        """One JSON object on its own line (flushed: `tail -f | jq` must see it at once)."""
        self.stream.write(json.dumps(obj, default=_json_default, ensure_ascii=False) + "\n")
        self.stream.flush()

    def line(self, text: str = "", style: str | None = None) -> None:
        """A line of text; `style` (rich markup style) colours it on a terminal only."""
        if self._console is not None:
            self._console.print(text, style=style, markup=False, soft_wrap=True)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def table(self, columns: list[Column], rows: list[dict], title: str | None = None) -> None:
        """Rows as a table; in JSON mode each row is one record (title dropped)."""
        if self.as_json:
            for row in rows:
                self.record(row)
            return
        cells = [[c.fmt(row.get(c.key)) for c in columns] for row in rows]
        if self._console is not None:
            from rich.table import Table

            table = Table(title=title, title_justify="left")
            for c in columns:
                table.add_column(c.header, justify="right" if c.right else "left")
            for row in cells:
                table.add_row(*row)
            self._console.print(table)
            return
        if title:
            self.line(title)
        widths = [max([len(c.header)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]

        def render(values):
            parts = [v.rjust(w) if c.right else v.ljust(w) for v, w, c in zip(values, widths, columns)]
            return "  ".join(parts).rstrip()

        self.line(render([c.header for c in columns]))
        for row in cells:
            self.line(render(row))

    @contextmanager
    def progress(self, total: int, description: str) -> Iterator[Callable[[int], None]]:
        """Yield `advance(n)`; draws a rich bar on stderr when it is a terminal, nothing otherwise."""
        if self.as_json or not _isatty(sys.stderr) or total <= 0:
            yield lambda n=1: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        with Progress(description, BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(task, n)


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _json_default(value):
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if isinstance(value, (set, frozenset, tuple, range)):
        return list(value)
    return str(value)


def human_bytes(n: int | None) -> str:
    """1536 -> '1.5 KiB'; None -> '-'."""
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
