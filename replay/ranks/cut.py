"""The cut of a multi-rank journal: the index every rank's log is brought to, and when there is none.

One rule, used by recovery (replay/ranks/recovery.py), the audit (replay/ranks/audit.py)
and the CLI (replay/cli/multirank.py), so they never disagree on it:

1. A rank's *counted* last index is its log's last index, not counting a trailing
   ``replay.truncate`` record of a previous cut (`counted_last`): a rank that wrote that
   record before a crash and a rank that never got to it must agree on the same cut.
2. The cut is the minimum counted last index over the ranks (`decide`): above it some
   rank lacks the entry.
3. The *acknowledged* index is the highest index any rank knows was durable on every
   rank: its own ``acknowledged.json`` (written before each global flush returns, and at
   each snapshot every rank committed) and, on rank 0, the newest of its global snapshot
   records (replay/ranks/layout.py). A cut below it would drop entries a ``flush()``
   returned: the rank whose log ends below it was rolled back (its directory put back
   from an older copy) or lost entries, and every rank refuses (RankBehindError, naming
   it) before anything is changed.
4. A rank that must drop entries above the cut can do so only down to the boundary of
   its sealed (archived) history: a cut below it is refused on every rank before
   anything is changed (`Cut.blocked`), instead of deleting snapshots first and failing
   the truncation after (which left every later open failing).

Every rank computes the same `Cut` from the same exchanged `Position` rows, so every
rank raises the same error without another collective.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..envelope import TRUNCATE_OP, unwrap
from ..errors import RankBehindError, RecoveryError
from .. import layout as paths
from . import layout

NONE = -1  # "no acknowledged index known" in an exchanged row
FROM_OWN_RECORD, FROM_GROUP_RECORD = 1, 2  # where a rank's acknowledged index comes from (bits)


def ends_with_cut_record(log) -> int | None:
    """The `after` of the log's last entry if it is the ``replay.truncate`` record of a cut at
    last_index - 1, else None (also for an empty log)."""
    if log.last_index < log.first_index:
        return None
    entry = log.entry(log.last_index)
    if entry.op != TRUNCATE_OP:
        return None
    after = unwrap(entry.index, entry.op, entry.payload)[1].get("after")
    return after if isinstance(after, int) and after == log.last_index - 1 else None


def counted_last(log) -> int:
    """The log's last index, a trailing cut record (`ends_with_cut_record`) not counted."""
    return log.last_index - (1 if ends_with_cut_record(log) is not None else 0)


def known_acknowledged(rank_root: Path, rank: int) -> tuple[int, int]:
    """(the highest acknowledged index this rank's own files record or NONE, source bits).

    Rank 0 also reads the newest of the global records it wrote under the group's
    directory. RankRecordError naming the file for a damaged acknowledged.json."""
    index, source = NONE, 0
    own = layout.read_acknowledged(rank_root)
    if own is not None:
        index, source = own, FROM_OWN_RECORD
    if rank == 0:
        group = layout.newest_global_record(paths.group_root_of(rank_root))
        if group is not None and group >= index:
            source = (source if group == index else 0) | FROM_GROUP_RECORD
            index = group
    return index, source


@dataclass(frozen=True)
class Position:
    """What one rank says about its log in recovery's exchange (as int64s: `row`, `of_row`)."""

    last: int  # counted last index (a trailing cut record not counted)
    top: int  # the log's last index
    live_first: int  # oldest index still in LMDB: a truncation cannot go below live_first - 1
    acknowledged: int = NONE  # the highest index it knows every rank held durably
    source: int = 0  # FROM_* bits: where `acknowledged` comes from

    @classmethod
    def of_log(cls, log, acknowledged: int = NONE, source: int = 0) -> "Position":
        return cls(counted_last(log), log.last_index, log.live_first_index, acknowledged, source)

    def row(self) -> list[int]:
        return [self.last, self.top, self.live_first, self.acknowledged, self.source]

    @classmethod
    def of_row(cls, row) -> "Position":
        return cls(*(int(v) for v in row[:5]))

    def keeps_its_record(self, cut: int) -> bool:
        """Whether this log already ends with exactly the record of a cut at `cut` (kept as is)."""
        return self.top == cut + 1 and self.last == cut


@dataclass(frozen=True)
class Cut:
    """The group's decision, identical on every rank (`decide`)."""

    index: int  # the minimum counted last index
    acknowledged: int  # the highest acknowledged index any rank knows (NONE: none)
    acknowledged_by: tuple[tuple[int, int], ...]  # (rank, FROM_* bits) of the ranks that know it
    behind: tuple[tuple[int, int], ...]  # (rank, counted last) of ranks below `acknowledged`
    truncates: bool  # some rank holds entries above the cut: every rank drops them and records it
    blocked: tuple[tuple[int, int], ...]  # (rank, sealed through) of ranks that cannot truncate to the cut
    lagging: tuple[int, ...] = ()  # the ranks whose counted last index is the cut

    def truncates_rank(self, position: Position) -> bool:
        """Whether this rank's log changes: the group truncates and it does not already end at the cut's record."""
        return self.truncates and not position.keeps_its_record(self.index)

    def refusal(self, root: Path) -> RecoveryError | None:
        """The error every rank raises for this cut (RankBehindError first), None when it can be taken."""
        if self.behind:
            return RankBehindError(_behind_text(self, root))
        if self.blocked:
            return RecoveryError(_blocked_text(self, root))
        return None


def decide(positions: list[Position]) -> Cut:
    """The cut over every rank's `Position` (by rank), and what stands in its way (module doc)."""
    cut = min(p.last for p in positions)
    acknowledged = max(p.acknowledged for p in positions)
    by = tuple((r, p.source) for r, p in enumerate(positions)
               if acknowledged != NONE and p.acknowledged == acknowledged)
    behind = tuple((r, p.last) for r, p in enumerate(positions) if p.last < acknowledged)
    truncates = max(p.top for p in positions) > cut
    decision = Cut(cut, acknowledged, by, behind, truncates, ())
    blocked = tuple((r, p.live_first - 1) for r, p in enumerate(positions)
                    if decision.truncates_rank(p) and cut < p.live_first - 1)
    lagging = tuple(r for r, p in enumerate(positions) if p.last == cut)
    return Cut(cut, acknowledged, by, behind, truncates, blocked, lagging)


def _behind_text(cut: Cut, root: Path) -> str:
    ranks = ", ".join(f"rank {r}'s log ends at index {last} ({paths.log_dir(layout.rank_dir(root, r))})"
                      for r, last in cut.behind)
    lowest = min(last for _, last in cut.behind)
    where = "; ".join(_record_paths(root, r, source, cut.acknowledged) for r, source in cut.acknowledged_by)
    dirs = ", ".join(str(layout.rank_dir(root, r)) for r, _ in cut.behind)
    return (f"{root}: {ranks}, below index {cut.acknowledged}, which the group acknowledged (a flush returned it, "
            f"or every rank committed its snapshot there: {where}). Its directory was put back from an "
            f"older copy or lost entries; recovering would drop the acknowledged entries {lowest + 1}.."
            f"{cut.acknowledged} from the other ranks too. Nothing was changed on any rank. Put back a copy of "
            f"{dirs} that holds index {cut.acknowledged} or later; to take the whole group back in time on purpose, "
            "put back copies of every rank-<r>/ directory and of group/ taken at the same moment")


def _record_paths(root: Path, rank: int, source: int, index: int) -> str:
    files = []
    if source & FROM_OWN_RECORD:
        files.append(str(paths.acknowledged_file(paths.rank_dir(root, rank))))
    if source & FROM_GROUP_RECORD:
        files.append(str(paths.global_record_file(root, index)))
    return f"rank {rank} records it in {' and '.join(files) or 'its files'}"


def _blocked_text(cut: Cut, root: Path) -> str:
    sealed = ", ".join(f"rank {r}'s entries through {through} are sealed in its archive "
                       f"({paths.log_dir(layout.rank_dir(root, r))})" for r, through in cut.blocked)
    need = max(through for _, through in cut.blocked)
    lagging = ", ".join(f"rank {r}'s ({paths.log_dir(layout.rank_dir(root, r))})" for r in cut.lagging)
    dirs = ", ".join(str(layout.rank_dir(root, r)) for r in cut.lagging)
    return (f"{root}: the cut is index {cut.index}, where {lagging} log ends, but {sealed}: sealed history is "
            "never truncated, so a log that ends below it was put back from an older copy or lost entries. "
            f"Nothing was changed on any rank. Put back a copy of {dirs} that holds index {need} or later; to take "
            "the whole group back in time on purpose, put back copies of every rank-<r>/ directory and of group/ "
            "taken at the same moment")
