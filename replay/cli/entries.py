"""Reading entries for listings (`log`, `tail`): verified headers, damaged entries reported in place.

A damaged entry does not end a listing: it becomes a row that says what is wrong, and
the scan resumes after it (the next entry's chain link is checked against the damaged
entry's stored checksum, so one altered entry is reported once, not as a cascade).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

from eventlog import CorruptEntryError, EventLog

from replay.audit import human_bytes

from .output import Output
from .summary import iso_time, local_time, one_line


@dataclass(frozen=True)
class Row:
    """One listed entry; `damaged` is the reason when its bytes or chain link are bad."""

    index: int
    term: int | None = None
    time_ns: int | None = None
    op: str | None = None
    payload_bytes: int | None = None
    summary: str = ""
    damaged: str | None = None
    checksum: int | None = None  # the entry's stored chained checksum (None when damaged)

    def as_record(self) -> dict[str, Any]:
        record = {"index": self.index, "term": self.term, "op": self.op, "payload_bytes": self.payload_bytes,
                  "time": iso_time(self.time_ns) if self.time_ns is not None else None,
                  "time_ns": self.time_ns, "summary": self.summary,
                  "checksum": f"{self.checksum:016x}" if self.checksum is not None else None}
        if self.damaged is not None:
            record["damaged"] = self.damaged
        return record


HeaderFilter = Callable[[Any], bool]


def rows(log: EventLog, start: int | None, stop: int | None, keep: HeaderFilter = lambda h: True,
         summaries: bool = True) -> Iterator[Row]:
    """Rows for entries in [start, stop) whose verified header passes `keep`; damaged entries always.

    Headers are scanned in short read transactions; a kept entry's payload is then read
    and decoded in one more (`entry(i)`), so filters never decode what they skip. If the
    writer removed or replaced the entry between the two reads (a rollback), the listing
    ends there: its header and payload would come from two different histories.

    An entry missing from the log is a damaged row naming it (the reader tells a gap from
    the log's end); the entry after it, whose chain link cannot be checked, is one too.
    A scan that ends before the log's last index is read once more from where it
    stopped (a live rollback ends a scan the same way); if it still cannot go on, the
    entries from there to the last index are reported missing, one damaged row, instead of
    a listing that silently looks complete.
    """
    lo = start
    retried_at = None
    while True:
        try:
            for header in log.headers(lo, stop):
                lo = header.index + 1
                if not keep(header):
                    continue
                summary = ""
                if summaries:
                    try:
                        entry = log.entry(header.index)
                    except CorruptEntryError as exc:
                        yield Row(header.index, header.term, header.time_ns, header.op, header.payload_size,
                                  damaged=exc.reason)
                        continue
                    except IndexError:
                        return  # truncated by the writer since the header was read
                    if entry.checksum != header.checksum:
                        return  # replaced by the writer since the header was read
                    summary = one_line(entry.payload)
                yield Row(header.index, header.term, header.time_ns, header.op, header.payload_size, summary,
                          checksum=header.checksum)
        except CorruptEntryError as exc:
            if lo is not None and exc.index < lo:
                # The entry before lo, already listed as damaged, is missing or unreadable:
                # lo's chain link cannot be checked. Say so once, on lo, and go on after it.
                yield Row(lo, damaged=f"its link to entry {exc.index} cannot be checked ({exc.reason})")
                lo += 1
                continue
            yield Row(exc.index, damaged=exc.reason)
            lo = max(exc.index, lo if lo is not None else 0) + 1
            continue
        expected = lo if lo is not None else log.first_index
        end = log.last_index + 1 if stop is None else min(stop, log.last_index + 1)
        if expected >= end:
            return
        if retried_at == expected:
            yield Row(expected, damaged=f"entries {expected}..{end - 1} are missing from the log")
            return
        retried_at, lo = expected, expected


def print_row(out: Output, row: Row) -> None:
    """A row as a JSON record, or one `git log --oneline`-style line."""
    if out.as_json:
        out.record(row.as_record())
    elif row.damaged is not None:
        out.line(f"{row.index:>8}  DAMAGED: {row.damaged}", style="bold red")
    else:
        size = human_bytes(row.payload_bytes)
        out.line(f"{row.index:>8}  t{row.term:<3} {local_time(row.time_ns)}  {row.op:<16} {size:>9}  {row.summary}")
