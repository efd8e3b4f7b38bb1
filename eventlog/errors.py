"""Named errors of the event log. Each is raised in exactly the situation its docstring says.

Damage (a file is not what a writer wrote) is every error with the shared base
`DamageError`; `ClosedError` and `LockedError` have the shared kinds of the same names as
extra bases (torch_eventlog.errors; the table is in replay/INVARIANTS.md).
"""

from torch_eventlog import errors as kinds

DamageError = kinds.DamageError


class LogError(Exception):
    """Base class of every error the event log raises on purpose."""


class CorruptEntryError(LogError, kinds.DamageError):
    """A stored entry failed its checksum, its chain link or its framing; `index` names it."""

    def __init__(self, index: int, reason: str):
        self.index = index
        self.reason = reason
        super().__init__(f"log entry {index} is corrupt: {reason}")


class CompactedError(LogError, IndexError):
    """The requested index was removed by compaction (it is below the first retained index)."""

    def __init__(self, index: int, first_index: int):
        self.index = index
        self.first_index = first_index
        super().__init__(f"log index {index} is compacted; the first retained index is {first_index}")


class DamagedSegmentError(CorruptEntryError):
    """Entry `index` lives in the archive and its sealed segment is damaged or missing; names the file and its range."""

    def __init__(self, index: int, path: str, first: int, last: int, reason: str):
        self.path = path
        self.first = first
        self.last = last
        super().__init__(index, f"archive segment {path} (entries {first}..{last}): {reason}")


class SealedError(CompactedError):
    """truncate_after would remove entries already sealed in the archive; sealed history is never rewritten."""

    def __init__(self, index: int, live_first_index: int):
        LogError.__init__(self, f"cannot truncate after {index}: entries {index + 1}..{live_first_index - 1} are "
                                "sealed in the log's archive (only entries from live_first_index "
                                f"{live_first_index} on can be truncated)")
        self.index = index
        self.first_index = live_first_index


class FencedError(LogError):
    """This writer's term is no longer the log's current term: another writer took over."""

    def __init__(self, own_term: int, current_term: int):
        self.own_term = own_term
        self.current_term = current_term
        super().__init__(
            f"writer of term {own_term} is fenced: the log's current term is {current_term} because "
            "another writer took over; nothing was written. Stop this process's writes; do not reopen the "
            "log for writing while that writer lives (that would fence it in turn)"
        )


class TruncatedError(LogError):
    """The entry a caller waited on was removed by truncate_after before it became durable."""

    def __init__(self, index: int, truncated_to: int):
        self.index = index
        self.truncated_to = truncated_to
        super().__init__(
            f"log entry {index} was removed by truncate_after({truncated_to}) before it became durable; "
            "it never will"
        )


class ClosedError(LogError, kinds.ClosedError):
    """The object was used after close()."""


class LockedError(LogError, kinds.LockedError):
    """Another live process holds the log's writer lock."""


class LogPoisonedError(LogError):
    """An earlier write or sync failed, so the log refuses all further work until reopened."""


class DamagedLogError(LogError, kinds.DamageError):
    """The log's files are damaged as a whole (e.g. data.mdb cut short, or its page structure corrupt); names the file."""


class FormatError(LogError, kinds.DamageError):
    """The path is not an event log, or was written by a newer, unknown format version.

    Damage, by design: once a path holds a ``data.mdb``, a damaged ``format`` or ``term``
    record reads exactly like a file that is not a log (replay.audit.is_damage)."""


class SegmentDamage(LogError, kinds.DamageError):
    """A sealed segment (a file, or bytes handed in) is not what a writer sealed; the message says how."""


class SegmentRejectedError(SegmentDamage):
    """create_from_segments refused segment number `position` (entries first..last, 0..0 if unreadable):
    it is damaged, or it does not continue the segment before it (a gap, an overlap, a chain break)."""

    def __init__(self, position: int, first: int, last: int, reason: str):
        self.position = position
        self.first = first
        self.last = last
        self.reason = reason
        where = f"entries {first}..{last}" if first else "range unreadable"
        super().__init__(f"segment {position} ({where}) refused: {reason}")
