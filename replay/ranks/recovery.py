"""Multi-rank recovery: agree on a cut and a common snapshot through collectives, then replay in lockstep.

Every open of a multi-rank journal runs this on every rank, after the rank's own log
is open as writer and its store is open (replay.opening). The steps, each ended by a
collective so every rank takes the same branch:

1. Exchange. Each rank's position (replay/ranks/cut.py): its last index, not counting
   a trailing ``replay.truncate`` record (that record is this protocol's own, see 4),
   the boundary of its sealed history, and the highest index its own files say the
   group acknowledged. The cut is the minimum last index: every entry at or below it is
   on every rank; above it, some rank lacks it. Each rank also lists the snapshot
   indexes it holds of this history at or below the cut; their intersection is the
   common set. Failpoint group.after_exchange.
2. Refusals, on every rank alike and before anything is changed: a rank whose log ends
   below the acknowledged index was rolled back or lost entries (RankBehindError naming
   it: the cut would drop what a flush returned); a rank that would have to truncate
   into its sealed history cannot (RecoveryError naming it).
3. Load: the newest common index is loaded on every rank (verified chunk by chunk); if
   it fails on any rank, every rank moves to the next older common index. No common
   index loads: RecoveryError on every rank, still with nothing changed (a journal with
   empty logs needs none: it is new, or its first open crashed before every rank took
   its initial snapshot, and it starts again from the state given to open). Failpoint
   recovery.after_snapshot_load.
4. Snapshots above the cut are deleted on every rank (their state includes entries
   about to be dropped). Truncation, only if some rank has anything above the cut:
   every rank drops its entries above the cut and appends one ``replay.truncate`` audit
   record at cut + 1 in the same log transaction (eventlog's
   ``truncate_after(then_append=)``), so the ranks' indexes stay aligned. A rank whose
   log already ends with exactly that record (a previous recovery crashed on another
   rank) keeps it. This is why a trailing audit record does not count in step 1: a rank
   that wrote it before a crash and a rank that never got to it still agree on the same
   cut the next time, and converge. Failpoint group.after_cut_truncate.
5. Replay from there to the end of the log on every rank, in lockstep: the logs hold
   the same ops at the same indexes (SPMD), so handlers that run collectives (DDP's
   gradient all-reduce) meet the same peers in the same order.

A crash anywhere in this, on any rank, followed by another restart, converges to the
same state: only step 4 writes, and it only ever brings the logs closer to the cut.
"""

from __future__ import annotations

from ..envelope import TRUNCATE_OP, wrap
from ..errors import RecoveryError
from .. import failpoints, layout as paths
from ..recovery import RecoveryReport, Replayer, history_mismatch
from .collectives import Collectives
from .cut import Position, decide, known_acknowledged

REASON = ("multi-rank recovery: entries above the cut (the newest index on every rank) were never acknowledged "
          "by every rank")


def recover(ranks: Collectives, replayer: Replayer, log, store, progress: bool | None) -> RecoveryReport:
    """Bring this rank's state to the group's cut (module doc); the report says how.

    Raises on every rank alike, and before anything is changed: RankBehindError when a
    rank's log ends below the acknowledged index; RecoveryError when truncating to the cut
    would reach into a rank's sealed history, or no common snapshot loads (and entries
    need one); RankFailureError when another rank failed a step. After the truncation
    only the replay errors remain (naming the index: a handler fails, a digest differs,
    an op is unknown).
    """
    report = RecoveryReport()
    rank_root = paths.journal_of_log(log.path)
    error = None
    try:
        acknowledged, source = known_acknowledged(rank_root, ranks.rank)
        me = Position.of_log(log, acknowledged, source)
        mine = sorted({info.index for info in store.list() if history_mismatch(log, info) is None
                       and info.index <= me.last})
    except Exception as exc:  # noqa: BLE001 - every rank must learn of it (agree), then it is raised here
        error = exc
    ranks.agree(error, "recovery's exchange")
    positions = [Position.of_row(row) for row in ranks.gather(me.row(), "recovery's exchange")]
    cut = decide(positions)
    report.cut = cut.index
    held = ranks.gather_lists([i for i in mine if i <= cut.index], "recovery's exchange")
    common = sorted(set.intersection(*(set(h) for h in held)), reverse=True)
    failpoints.hit("group.after_exchange")
    refusal = cut.refusal(paths.group_root_of(rank_root))
    if refusal is not None:
        raise refusal  # the same on every rank (decided from the same rows), nothing changed yet

    # The snapshot is loaded before anything is deleted or truncated: when none loads on
    # every rank, the open is refused with every file as it was.
    base = _load_common(ranks, replayer, log, store, common, report)
    if base is None and (cut.index > 0 or cut.truncates):
        # (With nothing in any log, no snapshot is needed: the journal is new, or its
        # first open crashed before every rank had snapshotted its initial state.)
        raise RecoveryError(f"rank {ranks.rank}: no snapshot index at or below the cut {cut.index} loads on every "
                            f"rank (held: {_show_held(held)}; damaged here: "
                            f"{[d for d, _ in report.damaged_snapshots]}); nothing was changed on any rank")
    failpoints.hit("recovery.after_snapshot_load")

    error = None
    try:
        store.discard_after(cut.index)
        if cut.truncates_rank(me):
            report.truncated = _dropped(log, cut.index)
            audit = wrap(1, {"after": cut.index, "dropped": [list(d) for d in report.truncated], "reason": REASON})
            log.truncate_after(cut.index, then_append=(TRUNCATE_OP, audit))
    except Exception as exc:  # noqa: BLE001
        error = exc
    ranks.agree(error, "recovery's truncation to the cut")
    failpoints.hit("group.after_cut_truncate")

    replayer.run(log, (base or 0) + 1, log.last_index + 1, report, progress)
    return report


def _dropped(log, cut: int) -> list[tuple[int, str]]:
    return [(header.index, header.op) for header in log.headers(cut + 1, verify=False)]


def _load_common(ranks: Collectives, replayer: Replayer, log, store, common: list[int],
                 report: RecoveryReport) -> int | None:
    """Load the newest common index that loads on every rank; None when there is none."""
    by_index = {}
    for info in store.list():
        if history_mismatch(log, info) is None:
            by_index[info.index] = info  # the newest term at an index wins (list is oldest first)
    for index in common:
        failure = None
        try:
            replayer.load_snapshot(store, log, by_index[index], report)
        except Exception as exc:  # noqa: BLE001 - a damaged snapshot: every rank moves on together
            failure = exc
            report.damaged_snapshots.append((by_index[index].manifest_id, f"{type(exc).__name__}: {exc}"))
        loaded = ranks.gather([0 if failure else 1], f"loading the common snapshot at index {index}")
        if all(row[0] for row in loaded):
            return index
    return None


def _show_held(held: list[list[int]]) -> str:
    return "; ".join(f"rank {rank}: {indexes[-3:] if indexes else 'none'}" for rank, indexes in enumerate(held))
