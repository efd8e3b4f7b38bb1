"""How many user entries a journal has applied, overall and per op (``Journal.count``).

A user's loop counts its own steps, not log indexes: digest entries, truncation records
(every ``replay.``-prefixed op) share the index space but are not steps, so a loop over
``range(journal.index, N)`` would skip steps after a resume. The count survives
recovery because every snapshot records it in its meta (``counts``: op -> user entries
through the snapshot's index) and replay counts the entries it applies on top.

Design choice for snapshots written before the field existed: their counts are rebuilt
from the log's headers through the snapshot's index, across the archive. Entries the
log no longer holds (deleted by a version-1 compaction or a retention policy) cannot be
told apart; they are counted as user entries in the overall count only (``uncounted``
in the recovery report, and a warning), which is what ``journal.index`` said of them
before. The next snapshot records exact counts again from then on.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

from .envelope import RESERVED_PREFIX


def is_user_op(op: str) -> bool:
    """Whether entries of `op` count as user steps (the engine's ``replay.`` ops never do)."""
    return not op.startswith(RESERVED_PREFIX)


def recorded_counts(meta: Any) -> dict[str, int] | None:
    """The per-op counts a snapshot's replay meta recorded; None when absent or malformed
    (then they are rebuilt from the log, as for a snapshot that predates them)."""
    counts = meta.get("counts") if isinstance(meta, dict) else None
    if not isinstance(counts, dict):
        return None
    for op, n in counts.items():
        if not isinstance(op, str) or not is_user_op(op) or type(n) is not int or n < 0:
            return None
    return dict(counts)


def count_ops(ops: Iterable[str]) -> Counter:
    """Per-op counts of the user ops among `ops`."""
    return Counter(op for op in ops if is_user_op(op))


class StepCounter:
    """A journal's running counts: user entries per op, plus those counted overall only."""

    def __init__(self, counts: dict[str, int], uncounted: int = 0):
        self._counts = Counter(counts)
        self._uncounted = uncounted

    def add(self, op: str) -> None:
        """One more applied entry of user op `op`."""
        self._counts[op] += 1

    def count(self, op: str | None = None) -> int:
        """All user entries (op=None, the uncounted ones included) or those of `op`."""
        return sum(self._counts.values()) + self._uncounted if op is None else self._counts.get(op, 0)

    def by_op(self) -> dict[str, int]:
        """op -> count, as a snapshot's meta records it."""
        return dict(self._counts)


def counts_from_log(log, through: int) -> tuple[Counter, int]:
    """(per-op user counts of entries first_index..through, entries below first_index).

    Read from the headers alone (no payload is decoded). The second number is how many
    entries the log no longer holds and so cannot be classified."""
    first = log.first_index
    if through < first:
        return Counter(), max(0, through)
    counts = count_ops(h.op for h in log.headers(first, through + 1, verify=False))
    return counts, first - 1
