"""Which snapshot retention keeps beyond the newest ones: the keep-the-oldest rule.

One rule for the journal's own retention (replay/snapshotter.py, before each prune) and
for `replay prune` (replay/cli/retention.py), so an operator's prune and the journal
never disagree about the snapshot a full replay falls back to.
"""

from __future__ import annotations


def keep_oldest_snapshot(log, oldest_index: int | None, *, compaction_deletes: bool | None = None) -> bool:
    """Whether retention keeps the oldest snapshot (at `oldest_index`; None: the store is empty).

    It is the base recovery falls back to when every newer snapshot is damaged, so it is
    kept while the log still holds every entry after it (``log.first_index <=
    oldest_index + 1``), unless the log's compaction deletes entries (no archive, and
    compacting at all): compaction then goes only through the oldest retained snapshot
    (invariant 4), and keeping that one would hold the log's compaction back forever.

    `compaction_deletes` is what the journal was opened with (``archive is None and not
    keep_log``); None (an offline tool, which cannot know) infers it from the files: the
    log compacted entries away without an archive segment holding them. A log neither
    archived nor compacted yet reads as one that keeps its history (the journal, knowing
    better, lets the oldest go at its next prune).
    """
    if oldest_index is None:
        return False
    if compaction_deletes is None:
        compaction_deletes = log.live_first_index > 1 and not log.segments()
    return not compaction_deletes and log.first_index <= oldest_index + 1
