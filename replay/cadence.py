"""When a journal snapshots: its policy clock, its group's decisions, and the Snapshotter that takes them.

Call sequence (the journal's thread): `after_entry(index)` after each applied entry
(the policy snapshot, when the group says it is due: replay.group), `take(index, wait)`
for ``Journal.snapshot``, `final(index, wanted, strict)` at close; `existing(index)` is
the snapshot already committed at `index`. The journal adds each entry's cost to
`clock` itself. Every agreement goes through `collective` (replay.guards: a failed one
poisons the journal).
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Callable

from .policies import PolicyClock
from .snapshotter import Snapshotter, done


class Cadence:
    """The snapshot decisions of one journal (module doc)."""

    def __init__(self, snapshotter: Snapshotter, store, group, clock: PolicyClock, collective: Callable):
        self.clock = clock
        self._snapshotter = snapshotter
        self._store = store
        self._group = group
        self._collective = collective

    def after_entry(self, index: int) -> None:
        """Entry `index` was applied: take the policy snapshot if the group decides it is due.
        A policy snapshot's failure is reported (Snapshotter.take_for_policy), never raised."""
        if self._collective(self._group.snapshot_due, self.clock, index):
            # Every rank takes it: the previous one is finished first (whether it is still in
            # flight differs between ranks), and confirmed across ranks on the way.
            self.clock.reset()
            self._snapshotter.collect(block=True)
            self._collective(self._group.confirm)
            self._snapshotter.take_for_policy(index)

    def take(self, index: int, wait: bool) -> Future:
        """``Journal.snapshot``: the in-flight snapshot is finished first; the one already at
        `index` is returned as it is (nothing written); else a new one (done when `wait`)."""
        self._snapshotter.collect(block=True)
        self._collective(self._group.confirm)
        existing = self.existing(index)
        if existing is not None:
            return done(existing)
        self.clock.reset()
        return self._snapshotter.take(index, blocking=wait or not self._snapshotter.asynchronous)

    def final(self, index: int, wanted: bool, strict: bool) -> None:
        """Close's: the in-flight snapshot finished, then (if `wanted` and none is at `index`) a
        blocking one; its failure raises when `strict`, else is reported."""
        self._snapshotter.collect(block=True)
        if wanted and self.existing(index) is None:
            if strict:
                self._snapshotter.take(index, blocking=True)
            else:
                self._snapshotter.take_for_policy(index, blocking=True)

    def existing(self, index: int):
        """The committed snapshot this journal took (or recovered from) at `index`, or None."""
        if self._snapshotter.covered == index:
            newest = self._store.list()
            if newest and newest[-1].index == index:
                return newest[-1]
        return None
