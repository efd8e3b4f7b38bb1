r"""Where every subcommand's output goes: JSON lines, a rich table on a terminal, plain text otherwise.

One Output per invocation. With ``--json`` every record is one JSON object per line (raw
values: ints, not "1.2 MiB"), so scripts never parse tables. Without it, a terminal gets
rich tables and colour; a pipe or file gets plain, aligned text with no escape codes.

User data (op names, payload summaries, meta, reasons, paths) can hold anything,
including terminal control sequences that would erase or forge lines on an auditor's
screen. So nothing reaches the stream unescaped: `printable` is the one function that
decides what is shown as is, and every way out of this module uses it. Text lines and
table cells escape every character Python's ``str.isprintable`` rejects (C0 controls and
newlines, DEL, C1 controls such as the 8-bit CSI ``\x9b``, format characters such as
bidi overrides, line separators, non-ASCII spaces) as ``\xhh``/``\uhhhh`` (``\n``,
``\r``, ``\t`` for those three); an ANSI escape sequence loses its ESC and shows as
text. Rich markup (``[red]``) and emoji codes in data are never interpreted. JSON lines
keep the data exact but write those characters as JSON ``\u`` escapes, so a consumer
decodes the very value stored and a terminal receives only printable characters.
Callers therefore pass user data straight in; the few lines this package composes itself
are passed one `line` call per line.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TextIO

from replay.progress import rich_bar


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
        self.tty = isatty(self.stream)
        self._console = None
        if self.tty and not as_json:
            from rich.console import Console

            # Data is never markup or emoji codes: "[red]" or ":skull:" in an op name stays text.
            self._console = Console(file=self.stream, highlight=False, markup=False, emoji=False)

    def record(self, obj: dict) -> None:
        """One JSON object on its own line (flushed: `tail -f | jq` must see it at once).

        Values are exact (a consumer decodes what the log stored); characters `printable`
        would escape are written as JSON \\u escapes."""
        self.stream.write(json_line(obj) + "\n")
        self.stream.flush()

    def line(self, text: str = "", style: str | None = None) -> None:
        """One line of text, escaped by `printable` (a newline in `text` is shown as \\n);
        `style` (a rich style name) colours it on a terminal only."""
        text = printable(text)
        if self._console is not None:
            from rich.text import Text

            self._console.print(Text(text, style=style or ""), soft_wrap=True)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def table(self, columns: list[Column], rows: list[dict], title: str | None = None) -> None:
        """Rows as a table; in JSON mode each row is one record (title dropped)."""
        if self.as_json:
            for row in rows:
                self.record(row)
            return
        cells = [[printable(c.fmt(row.get(c.key))) for c in columns] for row in rows]
        if self._console is not None:
            from rich.table import Table
            from rich.text import Text

            # Text cells: rich would read a plain str cell as markup.
            table = Table(title=Text(printable(title)) if title else None, title_justify="left")
            for c in columns:
                table.add_column(c.header, justify="right" if c.right else "left")
            for row in cells:
                table.add_row(*(Text(cell) for cell in row))
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
        if self.as_json or not isatty(sys.stderr) or total <= 0:
            yield lambda n=1: None
            return
        with rich_bar(description) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(task, n)


def printable(text: object) -> str:
    """`text` (str() of it) with every character ``str.isprintable`` rejects escaped:
    ``"\\x1b[2K\\r"`` -> ``"\\\\x1b[2K\\\\r"``. The one rule for user data on screen."""
    text = text if isinstance(text, str) else str(text)
    if text.isprintable():
        return text  # the common case: one C-level scan, no copy
    return "".join(ch if ch.isprintable() else _escape_char(ch) for ch in text)


def json_line(obj: Any) -> str:
    """`obj` as one JSON line whose characters are all printable (see `printable`).

    json.dumps already escapes C0 controls; DEL, C1 and the other characters `printable`
    escapes are turned into \\uXXXX (surrogate pairs above U+FFFF). They can only occur
    inside strings, where that escape decodes to the same character."""
    text = json.dumps(obj, default=_json_default, ensure_ascii=False)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _json_escape(ch) for ch in text)


def _escape_char(ch: str) -> str:
    return ch.encode("unicode_escape").decode("ascii")  # \n, \x1b, \x9b, \u202e, \U000e0041


def _json_escape(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def isatty(stream) -> bool:
    """Whether `stream` is a terminal (False for closed or fake streams)."""
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
