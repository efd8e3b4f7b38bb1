"""`replay tail DIR [-f]`: the last entries, then (with -f) every new one as a live writer appends it.

Following polls the log readonly every `--interval` seconds, each poll a few short read
transactions, so the writer is never slowed and its old pages are never pinned.

A rewrite is reported, not just a shorter log. A live rollback (a handler raised) or an
operator's truncation followed by new appends can put different entries at the very
indexes already printed, so comparing last_index between polls misses it. Instead the
follower remembers the chained checksum of what it printed and re-reads those headers
on each poll: the first one that is gone or differs means the log was rewritten after
the entry before it (the checksum chain makes every earlier entry equal too). It prints
"log rewritten after index K" (in --json, an ``{"event": "rewritten", "after": K}``
record) and goes on from K + 1 with the entries as they are now. A compaction past
entries not yet shown is reported too.
"""

from __future__ import annotations

import time
from collections import deque

from eventlog import CompactedError, CorruptEntryError, EventLog

from .entries import Row, print_row, rows
from .errors import EXIT_OK
from .output import Output
from .source import open_source

HELP = "show the last entries; -f follows a live log"

# Checksums of this many of the newest shown entries are kept, to find how far back a
# rewrite reaches; the start also remembers (without printing) at least _START_MEMORY.
_MEMORY = 4096
_START_MEMORY = 64


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
        shown = max(log.first_index, last - max(args.lines, 0) + 1)
        follower = Follower(log, out, shown - 1)
        follower.remember_before(shown, _START_MEMORY)
        follower.show(shown, last + 1)
        if not args.follow:
            return EXIT_OK
        try:
            while True:
                follower.poll()
                time.sleep(args.interval)
        except KeyboardInterrupt:
            pass
    return EXIT_OK


class Follower:
    """Prints a live log's entries in order and notices when printed ones stop being the log.

    Call sequence (one thread): `remember_before` and `show` for the first entries, then
    `poll` repeatedly. `shown` is the index of the newest entry printed (or skipped over,
    at the start); `seen` holds (index, checksum) of the newest printed or remembered ones;
    entries at or below `confirmed` matched the log at the last poll.
    """

    def __init__(self, log: EventLog, out: Output, shown: int):
        self.log = log
        self.out = out
        self.shown = shown
        self.seen: deque[tuple[int, int]] = deque(maxlen=_MEMORY)
        self.confirmed = 0

    def remember_before(self, index: int, count: int) -> None:
        """Remember (not print) the checksums of up to `count` entries before `index`."""
        lo = max(self.log.first_index, index - count)
        found = self._checksums(lo, index) or {}
        self.seen.extend(sorted(found.items()))

    def show(self, start: int, stop: int) -> None:
        """Print entries [start, stop) as they are now, remembering each one's checksum."""
        for row in rows(self.log, start, stop):
            self._print(row)

    def poll(self) -> None:
        """One round: report a rewrite of what was shown, a compaction past what was not,
        then print every entry after `shown`."""
        log = self.log
        first, last = log.first_index, log.last_index
        self._check_rewrite(first)
        if first > self.shown + 1:
            self._note("compacted", f"-- entries before {first} were compacted before they could be shown --",
                       index=first)
            self.shown = first - 1
        if last > self.shown:
            try:
                self.show(self.shown + 1, last + 1)
            except CompactedError:
                pass  # compacted between the two reads: the next poll reports it

    def _print(self, row: Row) -> None:
        print_row(self.out, row)
        self.shown = row.index
        if row.checksum is not None:
            self.seen.append((row.index, row.checksum))

    def _check_rewrite(self, first: int) -> None:
        """Compare what was shown since the last confirmed entry with the log as it is now."""
        unconfirmed = [(i, c) for i, c in self.seen if i >= max(self.confirmed, first)]
        if not unconfirmed:
            return
        current = self._checksums(unconfirmed[0][0], unconfirmed[-1][0] + 1)
        if current is None:
            return  # compacted or damaged under us: no verdict this round
        agreed = None
        for index, checksum in unconfirmed:
            if current.get(index) != checksum:
                break
            agreed = index
        else:
            self.confirmed = unconfirmed[-1][0]
            return
        exact = True
        if agreed is None:  # even the newest confirmed entry changed: look further back
            agreed, exact = self._newest_agreeing(unconfirmed[0][0], first)
        self._rewritten(agreed, exact)

    def _newest_agreeing(self, below: int, first: int) -> tuple[int, bool]:
        """(newest remembered index < `below` the log still agrees with, True), found by
        bisection (agreement holds for a prefix, by the chain); (a bound, False) if none."""
        older = [(i, c) for i, c in self.seen if first <= i < below]
        lo, hi = 0, len(older)  # older[:lo] agree, older[hi:] do not
        while lo < hi:
            mid = (lo + hi) // 2
            index, checksum = older[mid]
            current = self._checksums(index, index + 1)
            if current is not None and current.get(index) == checksum:
                lo = mid + 1
            else:
                hi = mid
        if lo:
            return older[lo - 1][0], True
        return (older[0][0] if older else below) - 1, False

    def _rewritten(self, after: int, exact: bool) -> None:
        was = self.shown
        where = f"after index {after}" if exact else f"at or before index {after + 1}"
        self._note("rewritten", f"-- log rewritten {where}: entries {after + 1}..{was} were removed or replaced; "
                                f"what follows is the log as it is now --",
                   after=after, removed_or_replaced=[after + 1, was], exact=exact)
        while self.seen and self.seen[-1][0] > after:
            self.seen.pop()
        self.shown = self.confirmed = after

    def _checksums(self, start: int, stop: int) -> dict[int, int] | None:
        """{index: stored checksum} of the entries in [start, stop) that exist now; None when
        the range was compacted or a header is damaged (no comparison possible)."""
        try:
            return {h.index: h.checksum for h in self.log.headers(start, stop, verify=False)}
        except (CompactedError, CorruptEntryError):
            return None

    def _note(self, event: str, text: str, **fields) -> None:
        if self.out.as_json:
            self.out.record({"event": event, **fields})
        else:
            self.out.line(text, style="yellow")
