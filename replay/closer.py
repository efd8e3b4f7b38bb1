"""Closer: how a journal ends — closed, stopped by a preemption, or abandoned — and what it releases.

One job: bring the journal from open to closed exactly once, whichever way it ends.
`Journal.close` and `Journal.abandon` document the contracts; this is how they are kept.

Call sequence (the journal's thread; a preemption's stop runs on the main thread, from
the journal's guard once the call in progress returns, replay.preemption):

1. `close(snapshot, strict, together)` from ``Journal.close`` and ``__exit__``: the
   phase is published, then `finish`: the in-flight snapshot is finished, the final
   snapshot taken (replay.cadence), every entry made durable, the ranks' global durable
   index agreed (`together`), the replica's last round run; then `release`, whatever
   failed.
2. `stop_for_preemption()`: `finish` with the final snapshot asked for, its failure
   reported, and the replica's last round bounded by the preemption's deadline.
3. `abandon()`: as a killed process ends: no flush, no final snapshot, an in-flight
   snapshot let finish and ignored; then `release`.
4. `release()`: marks the journal closed, then stops, in order, the supervisor link,
   the preemption handler (the previous signal handlers come back), the replica (before
   the log closes under it), the snapshot follow-up thread, then closes the store, the
   log and the determinism guard (`resources`). Also what a failed open calls
   (replay.assembly).
"""

from __future__ import annotations

import contextlib

from .supervisor.link import NoSupervisor


class Closer:
    """The end of one journal (module doc). Every collaborator is the journal's, handed over
    as the journal is built (replay.journal); `applier` is read for the last applied index."""

    def __init__(self, *, guards, applier, cadence, snapshotter, group, replica, log,
                 resources: contextlib.ExitStack, snapshot_on_close: bool):
        self.link = NoSupervisor()  # replay run's heartbeat (set by open when supervised)
        self._guards = guards
        self._applier = applier
        self._cadence = cadence
        self._snapshotter = snapshotter
        self._group = group
        self._replica = replica
        self._log = log
        self._resources = resources
        self._snapshot_on_close = snapshot_on_close

    def close(self, snapshot: bool | None, *, strict: bool, together: bool = True) -> None:
        """``Journal.close`` (together) and an exception leaving its ``with`` block (not
        together), inside the journal's guard: the phase published, then `finish`."""
        self.link.phase("closing", self._applier.index)
        self.finish(snapshot, strict, together)

    def finish(self, snapshot: bool | None, strict: bool, together: bool = True,
               deadline: float | None = None, grace: float | None = None) -> None:
        """Nothing once closed. `snapshot` None follows ``snapshot_on_close``. `strict`: a
        failing snapshot raises (after the release) instead of being reported. `together`: a
        multi-rank journal confirms its final snapshot with the other ranks (False when an
        exception is unwinding: the others may be anywhere). `deadline` (monotonic seconds,
        from a preemption's `grace`): the replica's last round gets what is left of it
        (replay.replica.link.final_round_timeout), never more. A poisoned journal is only
        released."""
        if self._guards.closed:
            return
        index = self._applier.index
        try:
            if self._guards.poison is None:
                self._cadence.final(index, self._snapshot_on_close if snapshot is None else snapshot, strict)
                self._guards.guarded(self._log.flush)
                self._applier.recorder.write(sync=True)
                if together:
                    self._guards.collective(self._group.flush, self._log.durable_index)
                self._replica.close(deadline, grace)  # one last round: the final snapshot too
        finally:
            self.release()

    def stop_for_preemption(self) -> None:
        """A preemption signal's clean stop (replay/preemption.py): snapshot the last index, flush, release."""
        preemption = self._guards.preemption
        self.finish(True, strict=False, deadline=preemption.deadline, grace=preemption.grace)

    def abandon(self) -> None:
        """``Journal.abandon`` (its docstring is the contract), inside the journal's one-thread guard."""
        self._snapshotter.abandon()
        self.release()

    def release(self) -> None:
        """Stop the follow-up thread, then close the store, the log and the determinism guard.
        The first failure is raised unless the journal is already poisoned."""
        self._guards.closed = True
        self.link.close()
        self._guards.preemption.closed()  # the previous signal handlers come back
        self._replica.release()  # before the log closes under it (idempotent after close's round)
        self._applier.recorder.close()  # what close did not write is lost, as in a crash: replay recomputes it
        self._snapshotter.close()
        try:
            self._resources.close()
        except Exception:
            if self._guards.poison is None:
                raise
