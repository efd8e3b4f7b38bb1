"""`replay tail DIR [-f]`: the last entries, then (with -f) every new one as a live writer appends it.

Following polls the log readonly every `--interval` seconds, each poll a few short read
transactions, so the writer is never slowed and its old pages are never pinned.
A truncation (the operator's `replay truncate`, or a live rollback) and a compaction are
reported as they are seen.
"""

from __future__ import annotations

import time

from eventlog import CompactedError

from .entries import print_row, rows
from .errors import EXIT_OK
from .output import Output
from .source import open_source

HELP = "show the last entries; -f follows a live log"


def add_parser(sub, parents) -> None:
    p = sub.add_parser("tail", parents=parents, help=HELP, description=HELP)
    p.add_argument("dir", help="journal directory (or a bare event log)")
    p.add_argument("-n", "--lines", type=int, default=10, metavar="N", help="how many entries to show first (default 10)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing entries as they are appended (Ctrl-C stops)")
    p.add_argument("--interval", type=float, default=0.2, metavar="SECONDS", help="poll interval with -f (default 0.2)")
    p.set_defaults(run=run)


def run(args, out: Output) -> int:
    with open_source(args.dir) as src:
        log = src.log
        last = log.last_index
        start = max(log.first_index, last - max(args.lines, 0) + 1)
        for row in rows(log, start, last + 1):
            print_row(out, row)
        if not args.follow:
            return EXIT_OK
        try:
            _follow(log, out, last, args.interval)
        except KeyboardInterrupt:
            pass
    return EXIT_OK


def _follow(log, out: Output, shown: int, interval: float) -> None:
    """Print every entry after `shown` as it appears, forever."""
    while True:
        last = log.last_index
        if last < shown:
            _note(out, "truncated", f"-- log truncated: entries after {last} were removed --", last)
            shown = last
        elif last > shown:
            first = log.first_index
            if first > shown + 1:
                _note(out, "compacted", f"-- entries before {first} were compacted before they could be shown --", first)
                shown = first - 1
            try:
                for row in rows(log, shown + 1, last + 1):
                    print_row(out, row)
                    shown = row.index
            except CompactedError:
                continue  # compacted between the two reads: the next poll reports it
        time.sleep(interval)


def _note(out: Output, event: str, text: str, index: int) -> None:
    if out.as_json:
        out.record({"event": event, "index": index})
    else:
        out.line(text, style="yellow")
