"""When neighbouring sealed segments are merged into one (FORMAT.md, "Merging").

One rule serves the local archive (eventlog.sealing) and a replica's segment objects
(replay.replica): it looks only at sizes, oldest first, so each caller measures what it
has at hand (file bytes locally, entries per object on a replica).
"""

from __future__ import annotations

from collections.abc import Sequence

MERGE_FANOUT = 8  # segments merged at once


def newest_to_merge(sizes: Sequence[int]) -> int:
    """How many of the newest segments (`sizes` oldest first) to merge into one: MERGE_FANOUT
    when there are that many and none is larger than all the others together, else 0.

    The condition makes every merged file at least twice as large as any it replaces, so
    an entry is rewritten at most log2(largest / smallest) times (about log8 when sizes are
    alike: segments then merge as a base-8 counter carries), and a run can only stall
    behind a segment that dominates it, which the next segments soon outweigh. Callers
    also cap the merged body (eventlog.SEGMENT_TARGET_BYTES) and merge only segments that
    check out and chain into each other.
    """
    run = list(sizes[-MERGE_FANOUT:])
    if len(run) < MERGE_FANOUT or any(size < 0 for size in run):
        return 0
    return MERGE_FANOUT if 2 * max(run) <= sum(run) else 0
