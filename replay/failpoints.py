"""Failpoints: crash or fail the process at named points of the commit, compaction and recovery paths.

Set ``REPLAY_FAILPOINTS`` to a comma-separated list of ``name=action`` before the
process reaches the point::

    REPLAY_FAILPOINTS=snapshot.before_manifest_rename=kill python train.py
    REPLAY_FAILPOINTS=journal.before_compact=raise,recovery.mid_replay=kill ...

Actions: ``kill`` SIGKILLs the process (no cleanup, no flush: a crash), after writing
``failpoint <name>: kill`` to stderr so a test can tell the point was reached;
``raise`` raises FailpointError(name) in the thread that reached it. A name that is not
in the spec costs one dict lookup. The spec is parsed once per distinct value of the
variable (so a forked child or a test that changes it sees its own value).

The named points (each is where a crash is most likely to expose a missing fsync or a
wrong ordering); every one of them must recover to either the old snapshot plus the
full log or the new snapshot plus the log after it:

    snapshot.before_pack_rename      a save's new chunks, index and trailer are written to its temp pack
    snapshot.before_pack_fsync       ... renamed to its name, not yet fsynced (no manifest names it)
    snapshot.before_chunk_fsync      a new loose chunk's bytes are written to its temp file
                                     (a store written with snapshot_packs=False)
    snapshot.before_chunk_rename     ... fsynced, not yet renamed to its name
    snapshot.before_manifest_fsync   the manifest's bytes are written to its temp file
    snapshot.before_manifest_rename  ... fsynced, not yet renamed: the snapshot does not exist
    snapshot.after_manifest_rename   renamed, manifests/ not yet fsynced
    snapshot.prune.before_delete     prune verified the newest snapshot, deleted nothing yet
    snapshot.prune.before_sweep      old manifests deleted, chunks not yet swept
    journal.before_compact           a snapshot committed and was pruned; log not compacted
    journal.after_compact            log compacted through the oldest retained snapshot
    recovery.after_snapshot_load     the newest verified snapshot is in the live state
    recovery.mid_replay              half of the entries to replay are applied (at least 2 to replay)

replay.fork (replay/forking.py) adds four; before the rename the new journal exists only
as a hidden staging directory beside NEWDIR:

    fork.after_log                   the staged log holds the history and its replay.fork record
    fork.after_snapshots             the staged snapshots and environment are durable too
    fork.before_rename               the staging directory is fsynced, not yet renamed to NEWDIR
    fork.after_rename                renamed to NEWDIR, its parent directory not yet fsynced

Multi-rank journals (replay.ranks) add three; the others above fire on each rank:

    group.before_global_record       rank 0: every rank committed a snapshot, its global record not yet written
    group.after_exchange             recovery: the cut and the common snapshots agreed, nothing changed yet
    group.after_cut_truncate         recovery: this rank's log truncated to the cut, no snapshot loaded yet

A test targets one rank by setting ``REPLAY_FAILPOINTS`` in that rank's environment only.

`snapshots` never imports `replay`: the Journal hands `hit` to its SnapshotStore as the
store's `failpoint` hook.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading

ENV = "REPLAY_FAILPOINTS"
_KILLING = threading.Lock()  # held by the thread that SIGKILLs the process (never released)
ACTIONS = ("kill", "raise")
POINTS = (
    "snapshot.before_pack_fsync",
    "snapshot.before_pack_rename",
    "snapshot.before_chunk_fsync",
    "snapshot.before_chunk_rename",
    "snapshot.before_manifest_fsync",
    "snapshot.before_manifest_rename",
    "snapshot.after_manifest_rename",
    "snapshot.prune.before_delete",
    "snapshot.prune.before_sweep",
    "journal.before_compact",
    "journal.after_compact",
    "recovery.after_snapshot_load",
    "recovery.mid_replay",
    "fork.after_log",
    "fork.after_snapshots",
    "fork.before_rename",
    "fork.after_rename",
    "group.before_global_record",
    "group.after_exchange",
    "group.after_cut_truncate",
)


class FailpointError(RuntimeError):
    """Raised at a failpoint whose action is ``raise``; `name` is the point."""

    def __init__(self, name: str):
        self.name = name
        super().__init__(f"failpoint {name} fired ({ENV})")


def parse(spec: str) -> dict[str, str]:
    """{point: action} of a ``REPLAY_FAILPOINTS`` value; ValueError naming a malformed
    item, an unknown point or an unknown action ("" gives {})."""
    points = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, action = item.partition("=")
        if not sep or action not in ACTIONS:
            raise ValueError(f"{ENV}: {item!r} is not 'name=kill' or 'name=raise'")
        if name not in POINTS:
            raise ValueError(f"{ENV}: unknown failpoint {name!r}; known: {', '.join(POINTS)}")
        points[name] = action
    return points


@functools.lru_cache(maxsize=8)
def _parsed(spec: str) -> dict[str, str]:
    return parse(spec)


def hit(name: str) -> None:
    """Reach failpoint `name`: nothing unless ``REPLAY_FAILPOINTS`` names it, else its action."""
    action = _parsed(os.environ.get(ENV, "")).get(name)
    if action == "kill":
        # Threads of one process may reach the point together (a store writes chunks on
        # several): the first one kills, the others wait here for the signal, so the
        # point is reported once and nothing runs past it.
        _KILLING.acquire()
        sys.stderr.write(f"failpoint {name}: kill\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "raise":
        raise FailpointError(name)
