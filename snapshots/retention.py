"""Which snapshots `prune` keeps: a pure function of names, so it is easy to test."""

from __future__ import annotations

SnapshotKey = tuple[int, int]  # (index, term)


def to_delete(
    snapshots: list[SnapshotKey],
    newest_verified: SnapshotKey | None,
    keep_last: int,
    keep_every: int | None,
    keep_oldest: bool = False,
    protect: frozenset[int] = frozenset(),
) -> list[SnapshotKey]:
    """The snapshots retention lets `prune` delete, oldest first.

    Edge cases first: nothing is deleted when no snapshot verified; the newest verified
    snapshot and everything newer than it (even damaged ones, kept for inspection) are
    never deleted, so a deletion always follows a newer snapshot that committed and
    verified. Besides those, the `keep_last` newest snapshots are kept and, with
    `keep_every=M`, the oldest snapshot of each index window [k*M, (k+1)*M) (so a
    snapshot every M entries survives even when snapshots are not taken at multiples
    of M). With `keep_oldest`, the oldest snapshot is kept too: the base a log that still
    holds its whole history (an archive, or a log never compacted) replays from when
    every newer snapshot is damaged. Snapshots whose index is in `protect` are kept
    (a multi-rank journal protects the newest snapshot every rank committed).
    """
    if newest_verified is None:
        return []
    ordered = sorted(snapshots)
    keep = {s for s in ordered if s >= newest_verified}
    if keep_last > 0:
        keep.update(ordered[-keep_last:])
    keep.update(s for s in ordered if s[0] in protect)
    if keep_oldest and ordered:
        keep.add(ordered[0])
    if keep_every:
        first_in_window: dict[int, SnapshotKey] = {}
        for s in ordered:
            first_in_window.setdefault(s[0] // keep_every, s)
        keep.update(first_in_window.values())
    return [s for s in ordered if s not in keep]
