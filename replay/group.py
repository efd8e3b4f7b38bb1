"""The seam between a Journal and whatever its ranks must agree on: `Group`, and `Solo` for one process.

A Journal holds exactly one Group and never asks which: `Solo` (one process, every
decision local) or the multi-rank `replay.ranks.coordinator.Coordinator` (the same
decisions made by collectives on a torch.distributed group). As in
torch.distributed.checkpoint's ``_DistWrapper``, one code path serves both; Solo's
methods are what the journal did before there were ranks.

Call sequence (the journal's thread only): `attach(snapshotter)` once, as the journal
is built; then, in any order, `snapshot_due` after each applied entry (and
`confirm` before a snapshot it takes), `check_replicated` after each digest entry,
`flush` after each local flush, `after_handler_error` when a handler raised; `flush`
again at close when the ranks close together. Every method of a multi-rank group is a
collective: each rank calls it in the same order. A failed collective raises
RankFailureError, which the journal turns into poison.
"""

from __future__ import annotations

from typing import Callable, Protocol


class Group(Protocol):
    """What a Journal asks of its group. Each method's contract holds for every implementation."""

    rank: int  # this process's rank (0 for Solo)
    size: int  # the number of ranks writing the journal (1 for Solo)

    def attach(self, snapshotter) -> None:
        """Serve the journal whose snapshots `snapshotter` takes (called once, before any other call)."""

    def snapshot_due(self, clock, index: int) -> bool:
        """Whether the policy snapshot is to be taken after entry `index` (the same answer on
        every rank). False while the answer cannot be acted on (Solo: a snapshot in flight)."""

    def confirm(self) -> None:
        """Before a snapshot is taken: learn which snapshot every rank has committed (protect it)."""

    def flush(self, local_durable: int) -> int:
        """The durable index a flush may report, given this rank's `local_durable`: the minimum
        over ranks (Solo: `local_durable` itself). Never above `local_durable`."""

    def check_replicated(self, index: int) -> None:
        """At digest entry `index` (live and on replay): RankDivergenceError when the replicated
        components differ across ranks; nothing for Solo (one copy agrees with itself)."""

    def after_handler_error(self, index: int, cause: BaseException,
                            rebuild: Callable[[], None]) -> BaseException | None:
        """Entry `index`'s handler raised `cause` and the entry is already dropped from the log:
        roll the state back with `rebuild()` and return None (Solo), or return the error that
        poisons the journal instead (multi-rank: the rebuild's replay needs every rank)."""


class Solo:
    """The one-process Group: every agreement is with itself."""

    rank = 0
    size = 1

    def __init__(self) -> None:
        self._snapshotter = None

    def attach(self, snapshotter) -> None:
        self._snapshotter = snapshotter

    def snapshot_due(self, clock, index: int) -> bool:
        # Never two policy snapshots at once: the next one waits for the entry after this
        # one's follow-up is collected (the policy stays due until then).
        return clock.due() and not self._snapshotter.in_flight

    def confirm(self) -> None:
        pass

    def flush(self, local_durable: int) -> int:
        return local_durable

    def check_replicated(self, index: int) -> None:
        pass

    def after_handler_error(self, index: int, cause: BaseException,
                            rebuild: Callable[[], None]) -> BaseException | None:
        rebuild()
        return None


__all__ = ["Group", "Solo"]
