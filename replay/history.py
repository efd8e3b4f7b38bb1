"""Reading a journal's history: every entry as the handler saw it, archive included.

``replay.entries(path)`` is the audit loop a user writes ("which outputs did batch 12
produce?", "which seeds did run A use?") without knowing the on-disk envelope
(replay/envelope.py): it opens the log readonly (no lock, no term bump, nothing written,
safe beside a live writer) and yields each entry with its op payload unwrapped, reading
sealed archive segments and LMDB as one log.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator

from eventlog import EventLog

from .audit import locate
from .envelope import RESERVED_PREFIX, unwrap


@dataclass(frozen=True)
class JournalEntry:
    """One applied entry: its `index`, `term` (the writer start that appended it), append
    `time` (seconds since the Unix epoch), `op` name, op `version` and the keyword
    `payload` the handler received (tensors as fresh CPU tensors)."""

    index: int
    term: int
    time: float
    op: str
    version: int
    payload: dict[str, Any]

    @property
    def is_engine_entry(self) -> bool:
        """True for the engine's own entries (digests, truncation records): they change no state."""
        return self.op.startswith(RESERVED_PREFIX)


def entries(path: str | os.PathLike, *, op: str | None = None, start: int | None = None,
            stop: int | None = None) -> Iterator[JournalEntry]:
    """The entries of the journal (or bare replay log) at `path`, oldest first.

    Edge cases first: an empty log yields nothing; `start` below the oldest readable entry
    is eventlog.CompactedError only when a retention policy really deleted that history
    (archived entries are read); `stop` is exclusive and may be past the end; a damaged
    entry or archive segment raises eventlog.CorruptEntryError naming its index (or the
    segment file) when the iteration reaches it; an entry that is not a replay envelope
    raises EnvelopeError naming its index. FileNotFoundError when `path` holds no log.

    Args:
        path: a journal directory (``log/`` inside) or a bare event log directory.
        op: only entries of this op (e.g. ``"train_step"``; ``"replay.digest"`` for digests).
        start, stop: the index range [start, stop); default: all readable entries.
    """
    log_dir, _ = locate(path)
    with EventLog.open(log_dir, readonly=True) as log:
        for entry in log.entries(start, stop):
            if op is not None and entry.op != op:
                continue
            version, payload = unwrap(entry.index, entry.op, entry.payload)
            yield JournalEntry(entry.index, entry.term, entry.time, entry.op, version, payload)
