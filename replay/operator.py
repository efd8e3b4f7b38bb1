"""Operator commands on a journal directory that is not open: removing a poison entry.

A handler that raised during a live apply is cleaned up by the journal itself. If the
process died before that cleanup, recovery stops at the entry with HandlerError naming
it; removing it is an explicit operator decision, made with `truncate`, and recorded
both in the log (a ``replay.truncate`` audit entry) and on the ``replay`` logger.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import snapshots
from eventlog import EventLog, LockedError, writer_pid

from .envelope import TRUNCATE_OP, wrap
from . import layout
from .errors import RecoveryError

logger = logging.getLogger("replay")


def truncate(path: str | os.PathLike, *, after: int, reason: str = "") -> list[tuple[int, str]]:
    """Drop every log entry after index `after` from the closed journal at `path`; return the dropped (index, op).

    - No-op (returns []) when `after` is the last index; nothing is logged then.
    - eventlog.LockedError if a journal (or any writer) has the log open.
    - RecoveryError, dropping nothing, if a snapshot covers an entry after `after`
      (its state includes effects of entries being dropped); eventlog.CompactedError if
      `after` is below the compaction boundary, and its subclass eventlog.SealedError
      if entries after `after` are sealed in the log's archive (archived history is
      never rewritten; they are always covered by a snapshot, which is refused first
      unless it was removed); IndexError if beyond the last entry.
    - Damaged entries after `after` are dropped too (their op is reported as "?").
    - RecoveryError, dropping nothing, for one rank's directory of a multi-rank journal
      (its logs must stay aligned; a multi-rank journal's recovery truncates every rank
      to the common cut by itself).
    - Appends a ``replay.truncate`` audit entry recording what was dropped and why in the
      same log transaction as the drop (a crash keeps both or neither), and logs a warning
      on the ``replay`` logger.
    """
    root = Path(path)
    if layout.rank_file(root).exists():
        raise RecoveryError(f"{root} is one rank's directory of a multi-rank journal: truncating it alone would "
                            "misalign the ranks' logs; reopen the group (its recovery truncates every rank to the cut)")
    # Checked on a readonly handle first: a refused truncate must not even bump the log's
    # term (opening for writing does); checked again under the writer lock, which is what
    # makes the answer final.
    with EventLog.open(layout.log_dir(root), readonly=True) as log:
        if not _refuse(root, log, after):
            return []
    with EventLog.open(layout.log_dir(root), durability="sync") as log:
        if not _refuse(root, log, after):
            return []
        dropped = []
        try:
            for header in log.headers(after + 1, verify=False):
                dropped.append((header.index, header.op))
        except Exception:  # a damaged tail is often why the operator is here
            known = dropped[-1][0] if dropped else after
            dropped.extend((i, "?") for i in range(known + 1, log.last_index + 1))
        # One transaction: a crash leaves either nothing changed or the drop and its audit record.
        audit = wrap(1, {"after": after, "dropped": [list(d) for d in dropped], "reason": reason})
        log.truncate_after(after, then_append=(TRUNCATE_OP, audit))
    logger.warning("replay.truncate %s: dropped entries %s after index %d (reason: %s)",
                   root, dropped, after, reason or "not given")
    return dropped


def _refuse(root: Path, log, after: int) -> bool:
    """Raise what `truncate` refuses (IndexError, RecoveryError for a snapshot after `after`);
    False when there is nothing to do (`after` is the last index), else True."""
    if after == log.last_index:
        return False
    if after > log.last_index:
        raise IndexError(f"truncate(after={after}): the log's last entry is {log.last_index}")
    store_path = layout.snapshots_dir(root)
    if store_path.exists():
        store = snapshots.SnapshotStore(store_path)
        try:
            ahead = sorted(i.index for i in store.list() if i.index > after)
        finally:
            store.close()
        if ahead:
            raise RecoveryError(
                f"cannot truncate after {after}: snapshot(s) at {ahead} include later entries; remove them "
                f"first, or roll back into a new journal: replay fork {root} --at {after} NEWDIR (replay.fork)")
    return True


def refuse_live_writer(log_dir: str | os.PathLike, then: str) -> None:
    """eventlog.LockedError, naming the process, while a live process writes the log at `log_dir`.

    The one check before anything that must not run beside a writer (opening a journal
    without takeover, pruning or truncating from outside); `then` says what to do.
    """
    pid = writer_pid(Path(log_dir))
    if pid is not None:
        raise LockedError(f"{Path(log_dir).parent} is open for writing by process {pid}; {then}")
