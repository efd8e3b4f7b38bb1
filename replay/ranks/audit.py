"""The cross-rank audit of a multi-rank journal directory: what `replay log/stats/verify
DIR` say about the group as a whole. A pure reader, safe beside live writers.

`multirank_report(root)` reads, for every ``rank-<r>/`` (replay/ranks/layout.py):

1. its ``rank.json`` (missing, damaged or hostile: a problem naming the file; a rank or
   world size that disagrees with the directory or the other ranks: a problem naming
   both), and whether the rank directories are exactly 0..N-1;
2. its log, as headers only (no payload is decoded or hashed: ``verify`` checks every
   checksum per rank), scanned in lockstep across ranks: each rank's terms and sizes, and
   whether every index that all ranks hold carries the same op (SPMD: each index is the
   same op on every rank; a mismatch names the index and each rank's op);
3. its snapshot manifests (names and manifests only) and rank 0's global records: each
   record must name, on every rank, a manifest that exists, reads back and is at the
   record's index (an older record may outlive a manifest the rank's retention pruned:
   said, not damage).

Then the global picture, as recovery (replay/ranks/recovery.py) would decide it, by the
same rule (replay/ranks/cut.py): the cut is the minimum last index over ranks, a
trailing ``replay.truncate`` record of a previous cut not counted (entries above it on a
rank were never acknowledged and a recovery drops them: reported, not damage); a rank
whose log ends below the index the group acknowledged, or a cut into a rank's sealed
history, is damage (a recovery refuses the group); and the common snapshot
is the newest index at or below the cut at which every rank holds a sound snapshot of
its own history. Only the candidates, newest first, have their chunks read, and the
search stops at the first index sound on every rank (the damaged newer ones are named,
as passed over). Without one, recovery replays from entry 1, which needs every rank's
log to start there; otherwise that is damage.

Beside a live writer every read is a short read transaction or a listing; a rank's log
that shrinks during the scan (a recovery truncating to its cut) ends its scan where it
ends, and is not called damaged for it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import snapshots
from eventlog import CorruptEntryError, EventLog, LogError

from .. import layout as paths
from ..audit import is_damage, locate
from ..recovery import history_mismatch
from . import cut as rank_cut
from . import layout

Soundness = Callable[[int, str], "bool | None"]  # (rank, manifest id) -> verified already? None: not known
MISMATCHES_NAMED = 5  # op mismatches named one by one; the rest are counted


@dataclass(frozen=True)
class Problem:
    """One piece of cross-rank damage: `check` says which check found it, `text` says it to a
    person (naming the rank, the path, the index where there is one)."""

    check: str
    text: str
    rank: int | None = None
    path: str | None = None
    index: int | None = None

    def as_record(self) -> dict:
        record = {"check": self.check, "ok": False, "reason": self.text}
        record.update((k, v) for k, v in (("rank", self.rank), ("path", self.path), ("index", self.index))
                      if v is not None)
        return record


@dataclass(frozen=True)
class SnapshotView:
    """One committed manifest of a rank: its name, (index, term) and whether it reads back."""

    name: str
    index: int
    term: int
    info: snapshots.SnapshotInfo | None
    unreadable: str | None


@dataclass
class RankView:
    """What one rank's directory holds. `first_index`/`last_index` are None when its log
    cannot be read; `terms` is ((term, first index), ...) over the retained entries."""

    rank: int
    path: Path
    world_size: int | None = None  # as its rank.json records it
    first_index: int | None = None
    last_index: int | None = None
    entries: int = 0
    payload_bytes: int = 0
    log_bytes: int = 0
    terms: list[tuple[int, int]] = field(default_factory=list)
    snapshots: list[SnapshotView] = field(default_factory=list)

    def as_record(self, cut: int | None) -> dict:
        return {"rank": self.rank, "path": str(self.path), "world_size": self.world_size,
                "first_index": self.first_index, "last_index": self.last_index, "entries": self.entries,
                "payload_bytes": self.payload_bytes, "log_bytes": self.log_bytes,
                "terms": [{"term": t, "first_index": i} for t, i in self.terms],
                "snapshots": [s.index for s in self.snapshots], "above_cut": self.above(cut)}

    def above(self, cut: int | None) -> int:
        """Entries this rank holds above `cut` (0 when either is unknown)."""
        return max(self.last_index - cut, 0) if cut is not None and self.last_index is not None else 0


@dataclass(frozen=True)
class MultiRankReport:
    """Everything `multirank_report` found; `ok` iff no problem (damage) was found.

    `world_size` is the size every rank.json agrees on (None when they disagree or none
    reads); `cut` None when some rank's log cannot be read; `common` is (index, manifest id
    per rank) or None; `passed_over` lists (index, rank, manifest id, reason) for newer
    candidates that were not sound on some rank; `pruned` the manifests older global
    records name that the rank's retention has removed (not damage: see
    `_check_global_records`)."""

    root: Path
    world_size: int | None
    ranks: tuple[RankView, ...]
    cut: int | None
    common: tuple[int, tuple[str, ...]] | None
    passed_over: tuple[tuple[int, int, str, str], ...]
    records: tuple[layout.GlobalRecord, ...]
    pruned: tuple[tuple[int, int, str], ...]  # (record index, rank, manifest id) retention already removed
    records_checked_on: tuple[int, ...]  # the ranks whose manifests the records were checked against
    problems: tuple[Problem, ...]
    compared: tuple[int, int] | None  # [lo, hi] inclusive: the index range whose ops were compared
    acknowledged: int | None = None  # the highest index any rank records as acknowledged (replay/ranks/cut.py)

    @property
    def ok(self) -> bool:
        return not self.problems

    def rank(self, r: int) -> RankView | None:
        return next((v for v in self.ranks if v.rank == r), None)


def multirank_report(root: str | os.PathLike, *, sound: Soundness | None = None) -> MultiRankReport:
    """Audit the multi-rank journal directory `root` (see the module doc); never raises on damage.

    FileNotFoundError when `root` holds no ``rank-<r>`` directory. `sound(rank, manifest)`
    may say what a caller already verified (True/False) so chunks are not read twice;
    None from it (or no callable) means: verify here. Bugs propagate."""
    root = Path(root)
    on_disk = layout.ranks_on_disk(root)
    if not on_disk:
        raise FileNotFoundError(f"{root} is not a multi-rank journal (no rank-<r> directory)")
    problems: list[Problem] = []
    views = [RankView(r, layout.rank_dir(root, r)) for r in on_disk]
    world = _check_records(views, problems)
    if world is not None:
        _check_rank_set(root, on_disk, world, problems)
    logs = {v.rank: _open_log(v, problems) for v in views}
    try:
        for view in views:
            view.snapshots = _manifests(view, problems)
        decision = _decide(root, views, logs, problems)
        cut = decision.index if decision is not None else None
        compared = _scan(views, logs, problems, cut)
        common, passed = _common_snapshot(views, logs, cut, sound, problems) if cut is not None else (None, [])
    finally:
        for log in logs.values():
            if log is not None:
                log.close()
    pruned: list[tuple[int, int, str]] = []
    records = _check_global_records(root, views, world, problems, pruned)
    checked_on = tuple(v.rank for v in views if _has_store(v))
    acknowledged = decision.acknowledged if decision is not None and decision.acknowledged != rank_cut.NONE else None
    return MultiRankReport(root, world, tuple(views), cut, common, tuple(passed), tuple(records), tuple(pruned),
                           checked_on, tuple(problems), compared, acknowledged)


def _decide(root: Path, views: list[RankView], logs: dict, problems: list[Problem]) -> rank_cut.Cut | None:
    """The cut as recovery decides it (replay/ranks/cut.py), None when some rank's log cannot be
    read. A rank behind the acknowledged index, or a cut into a rank's sealed history, is
    damage: a recovery would refuse the group."""
    if any(logs[v.rank] is None for v in views):
        return None
    positions = []
    for view in views:
        log = logs[view.rank]
        try:
            last = rank_cut.counted_last(log)
        except Exception as exc:  # noqa: BLE001 - a damaged last entry: `verify` names it; count it as an entry
            if not is_damage(exc):
                raise
            last = log.last_index
        try:
            acknowledged, source = rank_cut.known_acknowledged(view.path, view.rank)
        except layout.RankRecordError as exc:
            problems.append(Problem("acknowledged", str(exc), view.rank, str(paths.acknowledged_file(view.path))))
            acknowledged, source = rank_cut.NONE, 0
        positions.append(rank_cut.Position(last, log.last_index, log.live_first_index, acknowledged, source))
    decision = rank_cut.decide(positions)
    refusal = decision.refusal(root)
    if refusal is not None:
        rank, index = (decision.behind or decision.blocked)[0]
        problems.append(Problem("acknowledged" if decision.behind else "sealed",
                                f"a recovery refuses the group: {refusal}", rank,
                                str(layout.rank_dir(root, rank)), index))
    return decision


def _check_records(views: list[RankView], problems: list[Problem]) -> int | None:
    """Read each rank.json; return the world size they all agree on (None if they do not)."""
    sizes: dict[int, list[int]] = {}
    for view in views:
        path = paths.rank_file(view.path)
        try:
            record = layout.read_rank_record(view.path)
        except layout.RankRecordError as exc:
            problems.append(Problem("rank_record", str(exc), view.rank, str(path)))
            continue
        if record is None:
            problems.append(Problem("rank_record", f"rank {view.rank}: {path} is missing", view.rank, str(path)))
            continue
        view.world_size = record["world_size"]
        sizes.setdefault(record["world_size"], []).append(view.rank)
        if record["rank"] != view.rank:
            problems.append(Problem("rank_record", f"{path} records rank {record['rank']}, but it is the "
                                    f"record of directory rank-{view.rank}", view.rank, str(path)))
    if len(sizes) > 1:
        said = "; ".join(f"world size {n} on rank(s) {', '.join(map(str, rs))}" for n, rs in sorted(sizes.items()))
        problems.append(Problem("world_size", f"the ranks disagree on the world size: {said}"))
        return None
    return next(iter(sizes), None)


def _check_rank_set(root: Path, on_disk: list[int], world: int, problems: list[Problem]) -> None:
    """The rank directories must be exactly rank-0 .. rank-(world - 1)."""
    for r in sorted(set(range(world)) - set(on_disk)):
        problems.append(Problem("ranks", f"rank {r}: {layout.rank_dir(root, r)} is missing (the ranks record "
                                f"world size {world})", r, str(layout.rank_dir(root, r))))
    for r in sorted(set(on_disk) - set(range(world))):
        problems.append(Problem("ranks", f"rank {r}: {layout.rank_dir(root, r)} is not a rank of a group of "
                                f"{world}", r, str(layout.rank_dir(root, r))))


def _open_log(view: RankView, problems: list[Problem]) -> EventLog | None:
    """The rank's log, readonly, with its bounds read; None (and a problem) when it cannot be."""
    try:
        log_dir, _ = locate(view.path)
    except FileNotFoundError as exc:
        problems.append(Problem("log", f"rank {view.rank}: {exc}", view.rank, str(view.path)))
        return None
    data = paths.lmdb_file(log_dir)
    try:
        log = EventLog.open(log_dir, readonly=True)
    except Exception as exc:  # noqa: BLE001 - classified: damage is a finding, anything else a bug
        if not is_damage(exc):
            raise
        problems.append(Problem("log", f"rank {view.rank}: {data}: {_text(exc)}", view.rank, str(data)))
        return None
    try:
        view.first_index, view.last_index = log.first_index, log.last_index
        view.log_bytes = os.path.getsize(data)
    except Exception as exc:  # noqa: BLE001 - as above
        log.close()
        if not is_damage(exc):
            raise
        problems.append(Problem("log", f"rank {view.rank}: {data}: {_text(exc)}", view.rank, str(data)))
        view.first_index = view.last_index = None
        return None
    return log


def _manifests(view: RankView, problems: list[Problem]) -> list[SnapshotView]:
    """The rank's committed manifests (names and manifests only, no chunk is read)."""
    directory = paths.snapshots_dir(view.path)
    if not directory.is_dir():
        return []
    with snapshots.SnapshotStore(directory, workers=1) as store:
        return [SnapshotView(e.name, e.index, e.term, e.info, e.unreadable) for e in store.manifests()]


def _scan(views: list[RankView], logs: dict, problems: list[Problem], cut: int | None) -> tuple[int, int] | None:
    """One lockstep pass over every rank's headers: terms and sizes per rank, and the ops of
    every index all ranks hold compared, up to the `cut` when it is known (a rank's trailing
    cut record faces another rank's entry there until a recovery aligns them). Returns the
    compared range [lo, hi], or None."""
    readable = [v for v in views if logs[v.rank] is not None]
    for view in readable:
        view.terms, view.entries, view.payload_bytes = [], 0, 0
    bounds = [(v.first_index, v.last_index) for v in readable]
    lo = max((f for f, _ in bounds), default=1)
    hi = min((last for _, last in bounds), default=0)
    hi = min(hi, cut) if cut is not None else hi
    streams = {v.rank: _headers(logs[v.rank], v) for v in readable}
    current = {r: next(s, None) for r, s in streams.items()}
    mismatches: list[tuple[int, dict[int, str]]] = []
    count = 0
    for index in range(min((f for f, _ in bounds), default=1), max((last for _, last in bounds), default=0) + 1):
        ops: dict[int, str | None] = {}
        for view in readable:
            head = current[view.rank]
            if head is None or head[0] != index:
                continue
            header = head[1]
            if header is not None:
                _count(view, header)
                ops[view.rank] = header.op
            current[view.rank] = next(streams[view.rank], None)
        if lo <= index <= hi and len(set(o for o in ops.values() if o is not None)) > 1:
            count += 1
            if len(mismatches) < MISMATCHES_NAMED:
                mismatches.append((index, ops))
    for index, ops in mismatches:
        said = ", ".join(f"rank {r} {op!r}" for r, op in sorted(ops.items()))
        problems.append(Problem("ops", f"index {index} holds different ops across ranks: {said}", index=index))
    if count > len(mismatches):
        problems.append(Problem("ops", f"{count - len(mismatches)} more indexes in {lo}..{hi} hold different "
                                "ops across ranks"))
    # Claimed as compared only when every rank's log was read (a mismatch among the readable
    # ones is still a problem above).
    return (lo, hi) if len(readable) == len(views) and lo <= hi else None


def _headers(log: EventLog, view: RankView):
    """(index, header) over the rank's entries, headers only (framing checked, no checksum:
    `verify` does that per rank); an entry whose framing is damaged yields (index, None) and
    the scan resumes after it. A rank whose log shrinks meanwhile just ends early."""
    start, stop = view.first_index, view.last_index + 1
    while start < stop:
        try:
            for header in log.headers(start, stop, verify=False):
                start = header.index + 1
                yield header.index, header
            return
        except CorruptEntryError as exc:
            yield exc.index, None
            start = max(exc.index, start) + 1
        except LogError:
            return  # compacted or truncated under us: a live writer, not damage


def _count(view: RankView, header) -> None:
    view.entries += 1
    view.payload_bytes += header.payload_size
    if not view.terms or view.terms[-1][0] != header.term:
        view.terms.append((header.term, header.index))


def _common_snapshot(views: list[RankView], logs: dict, cut: int, sound: Soundness | None,
                     problems: list[Problem]) -> tuple[tuple[int, tuple[str, ...]] | None, list]:
    """The newest index <= cut where every rank holds a sound snapshot of its own history."""
    held: list[dict[int, list[SnapshotView]]] = []
    for view in views:
        by_index: dict[int, list[SnapshotView]] = {}
        for snap in view.snapshots:
            if snap.index <= cut:
                by_index.setdefault(snap.index, []).append(snap)
        held.append(by_index)
    candidates = sorted(set.intersection(*(set(h) for h in held)), reverse=True) if held else []
    passed: list[tuple[int, int, str, str]] = []
    common = None
    stores = {}
    try:
        for index in candidates:
            chosen, failed = [], []
            for view, by_index in zip(views, held):
                name, why = _usable(view, logs[view.rank], by_index[index], sound, stores)
                (chosen if why is None else failed).append((view.rank, name, why))
            if not failed:
                common = (index, tuple(name for _, name, _ in chosen))
                break
            passed.extend((index, r, name, why) for r, name, why in failed)
    finally:
        for store in stores.values():
            store.close()
    base = common[0] if common is not None else 0
    if common is None and any(v.first_index != 1 for v in views):
        problems.append(Problem("common_snapshot", f"no snapshot at or below the cut {cut} is sound on every rank, "
                                "and not every rank's log starts at entry 1: the group cannot be recovered"))
    for view in views:
        if view.first_index is not None and base < view.first_index - 1:
            problems.append(Problem("common_snapshot", f"rank {view.rank}: its log was compacted through "
                                    f"{view.first_index - 1}, past the common snapshot at index {base}: the group "
                                    "cannot replay from it", view.rank, str(view.path), base))
    return common, passed


def _usable(view: RankView, log: EventLog, snaps: list[SnapshotView], sound: Soundness | None,
            stores: dict) -> tuple[str, str | None]:
    """(manifest id, None) for the rank's newest-term snapshot at this index that is sound and
    of its log's history; else (the last one tried, why not)."""
    name, why = snaps[-1].name, "no snapshot"
    for snap in reversed(snaps):
        name = snap.name
        if snap.info is None:
            why = f"manifest unreadable: {snap.unreadable}"
            continue
        try:
            why = history_mismatch(log, snap.info)
        except Exception as exc:  # noqa: BLE001 - a damaged log entry: the snapshot cannot be placed
            if not is_damage(exc):
                raise
            why = f"its index cannot be checked against the log: {_text(exc)}"
        if why is not None:
            continue
        verified = sound(view.rank, snap.name) if sound is not None else None
        if verified is None:
            if view.rank not in stores:
                stores[view.rank] = snapshots.SnapshotStore(paths.snapshots_dir(view.path), workers=4)
            report = stores[view.rank].verify(snap.name)
            verified = report.ok
            why = None if report.ok else "; ".join(f"{d.chunk or 'manifest'}: {d.reason}" for d in report.damage)
        if verified:
            return name, None
        why = why or "does not verify"
    return name, why


def _check_global_records(root: Path, views: list[RankView], world: int | None,
                          problems: list[Problem], pruned: list) -> list[layout.GlobalRecord]:
    """Rank 0's records: each sound, of the group's world size, and naming on every rank a
    manifest that exists, reads back and is at the record's index.

    A manifest missing under an older record is retention's doing when the rank holds a
    newer snapshot: each rank prunes on its own, and rank 0 drops the records of indexes it
    no longer keeps only at its next snapshot confirmation (so a crash can leave one
    behind). Those go to `pruned` as (index, rank, manifest id), not damage. The newest
    record's snapshot is protected from retention on every rank, so its missing manifest is
    damage, as is any damaged one."""
    records, damaged = layout.read_global_records(root)
    for path, reason in damaged:
        problems.append(Problem("global_record", f"{path}: {reason}", path=str(path)))
    # A rank directory that is not a journal at all is its own problem: not one per record.
    by_rank = {v.rank: {s.name: s for s in v.snapshots} for v in views if _has_store(v)}
    newest_held = {v.rank: max((s.index for s in v.snapshots), default=-1) for v in views}
    newest_record = max((r.index for r in records), default=None)
    for record in records:
        where = str(record.path)
        if world is not None and record.world_size != world:
            problems.append(Problem("global_record", f"{record.path}: world size {record.world_size}, but the ranks "
                                    f"record {world}", path=where, index=record.index))
        for r, name in enumerate(record.manifests):
            held = by_rank.get(r)
            if held is None:
                continue  # a missing rank directory, or one without a snapshot store: its own problem
            snap = held.get(name)
            if snap is None and record.index < newest_record and newest_held[r] > record.index:
                pruned.append((record.index, r, name))
                continue
            if snap is None:
                why = "which is missing"
            elif snap.info is None:
                why = f"whose manifest is damaged: {snap.unreadable}"
            elif snap.index != record.index:
                why = f"which is at index {snap.index}"
            else:
                continue
            problems.append(Problem("global_record", f"{record.path}: the snapshot at index {record.index} names "
                                    f"manifest {name} on rank {r}, {why}", r, where, record.index))
    return records


def _has_store(view: RankView) -> bool:
    return paths.snapshots_dir(view.path).is_dir()


def _text(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
