"""Recovery: newest verified snapshot into the live state, then every later entry, once, in order.

Used by `Journal.open` (recover after a restart), by a live `apply` whose handler raised
(roll the half-mutated state back to the last applied index) and by the point-in-time
readers (`replay.state_at`, the CLI's `state` and `diff`). Every path runs the same
code, which is what makes a rollback and an audit trustworthy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from .components import check_layout, check_state, default_device, layout_template, restore
from .replaying import BatchFailed, ReplayLoop
from .counting import counts_from_log, recorded_counts
from .determinism import state_digest
from .envelope import AUDIT_OPS, DIGEST_OP
from . import failpoints
from .errors import DivergenceError, HandlerError, PayloadRejectedError, RecoveryError
from .ops import INPUTS, Ops
from .progress import ReplayProgress
from .readahead import ReadAhead
from .supervisor.link import opening_link

SNAPSHOT_META_KEY = "replay"
SNAPSHOT_FORMAT = 2  # 2: "counts" added (1 lacks it; replay.counting rebuilds it from the log)
PUBLISH_EVERY = 256  # entries between two heartbeat updates of a supervised recovery (memory writes) ...
PUBLISH_SECONDS = 1.0  # ... or this long, checked once per batch of entries (slow handlers)


@dataclass
class RecoveryReport:
    """How a journal reached its state when it opened.

    snapshot: the SnapshotInfo loaded, or None (replayed from the initial state given to
    open). snapshot_index: its index (0 without one). replayed: range of entry indexes
    replayed ([lo, hi), empty if none). damaged_snapshots: (snapshot, reason) for each
    newer snapshot that failed verification and was skipped (its manifest id and the
    verify report's text). counts: op -> user entries applied through the recovered
    index (the snapshot's recorded counts plus the replayed entries; replay.counting).
    uncounted: entries the log no longer holds under a snapshot that predates counts,
    counted as user entries overall only. environment: differences between the
    environment the journal was created in and this one (replay.environment; empty when
    none, or not checked). cut: a multi-rank journal's recovery cut (the newest index
    durable on every rank; replay.ranks.recovery), None for a single-rank journal.
    truncated: (index, op) of this rank's entries above the cut, dropped by recovery.
    restored: the replay.replica RestoreReport when open first restored the directory
    from its replica (a new machine), else None. through: (index, chained checksum) of
    the log entry the recovered state ends at (None before recovery), which is how a
    recovery resumes a preflight's (equal checksums: the same history up to there).
    """

    snapshot: Any = None
    snapshot_index: int = 0
    cut: int | None = None
    truncated: list[tuple[int, str]] = field(default_factory=list)
    restored: Any = None
    replayed: range = range(1, 1)
    digests_checked: int = 0
    load_seconds: float = 0.0
    replay_seconds: float = 0.0
    damaged_snapshots: list[tuple[Any, str]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    uncounted: int = 0
    environment: list[str] = field(default_factory=list)
    through: tuple[int, int] | None = field(default=None, repr=False)

    @property
    def entries_replayed(self) -> int:
        return len(self.replayed)

    @property
    def user_entries(self) -> int:
        """User entries applied through the recovered index (what ``Journal.count()`` starts from)."""
        return sum(self.counts.values()) + self.uncounted

    @property
    def seconds(self) -> float:
        return self.load_seconds + self.replay_seconds

    def __str__(self) -> str:
        source = f"snapshot at index {self.snapshot_index}" if self.snapshot is not None else "the initial state"
        damaged = f", skipped {len(self.damaged_snapshots)} damaged snapshot(s)" if self.damaged_snapshots else ""
        changed = f", environment differs in {len(self.environment)} field(s)" if self.environment else ""
        return (f"recovered from {source}, replayed {self.entries_replayed} entries "
                f"in {self.seconds:.3f} s{damaged}{changed}")


def snapshot_meta(index: int, log_checksum: int | None, counts: Mapping[str, int] | None = None) -> dict:
    """The meta stored with every journal snapshot.

    ``index`` is the last applied entry. ``counts`` maps each op to the user entries
    applied through it (format 2; replay.counting). ``log_checksum`` is the log's chained checksum
    at that index (the entry's own checksum, or the compaction boundary's): two runs that
    share a term (sibling runs, a log truncated and rewritten) differ there, so recovery
    can tell a snapshot of this log's history from one of another. Snapshots written
    before the field existed lack it; for them only the term is compared.
    """
    meta = {"format": SNAPSHOT_FORMAT, "index": index}
    if log_checksum is not None:
        meta["log_checksum"] = log_checksum
    if counts is not None:
        meta["counts"] = {op: n for op, n in counts.items() if n}
    return {SNAPSHOT_META_KEY: meta}


def journal_index(meta: Any) -> int | None:
    """The last applied index a Journal recorded in a snapshot's meta; None when the
    snapshot was not written by a Journal (no replay meta, or a malformed one)."""
    recorded = meta.get(SNAPSHOT_META_KEY) if isinstance(meta, dict) else None
    index = recorded.get("index") if isinstance(recorded, dict) else None
    return index if isinstance(index, int) and not isinstance(index, bool) else None


def history_mismatch(log, info) -> str | None:
    """Why snapshot `info` is not a state of `log`'s history, or None if it may be.

    It is one when the log's term at the snapshot's index equals the snapshot's term and
    the log's chained checksum there (the compaction boundary's, at first_index - 1)
    equals the one the snapshot recorded. Indexes the log cannot answer for (compacted
    past, or beyond its end) return None: recovery reports those as a gap or a snapshot
    ahead of the log, which no older snapshot can fix by being skipped silently.
    """
    index = info.index
    if index == 0 or index > log.last_index or index < log.first_index - 1:
        return None
    term = log.term_at(index)
    if term != info.term:
        return (f"snapshot of term {info.term} at index {index}, but the log's entry {index} has term {term}: "
                "the snapshot belongs to another history")
    meta = info.meta.get(SNAPSHOT_META_KEY) if isinstance(info.meta, dict) else None
    recorded = meta.get("log_checksum") if isinstance(meta, dict) else None
    if recorded is None:
        return None
    actual = log.checksum_at(index)
    if actual != recorded:
        return (f"snapshot at index {index} recorded log checksum {recorded:#018x}, but the log has "
                f"{actual:#018x} there: the snapshot belongs to another history")
    return None


class Replayer:
    """Brings one live state to a log index: a snapshot loaded in place, then handlers replayed.

    Holds what every recovery of that state needs (its ops, its component kinds, the
    device payload tensors go to), so callers pass only the log and the store.
    """

    def __init__(self, ops: Ops, state: Mapping[str, Any], device: torch.device | None = None,
                 kinds: dict[str, str] | None = None):
        self.ops = ops
        self.state = state
        self.kinds = check_state(state) if kinds is None else kinds
        self.device = default_device(state) if device is None else device
        # Called with the index after each digest entry that matched (a multi-rank journal
        # compares its replicated components across ranks there: replay.ranks.coordinator).
        self.on_digest = None
        # Called with (term, index, spec, result) after each replayed entry whose op records
        # scalars (replay.recorded: recovery re-records what a crash lost; never fed back).
        self.on_result = None

    def recover(self, log, store, *, at: int | None = None, progress: bool | None = None,
                loaded: RecoveryReport | None = None) -> RecoveryReport:
        """Bring the state to log entry `at` (default: the last): newest usable snapshot at or
        before it, then replay (invariant 3). `store` may be None (a bare log).

        A journal's store always holds its initial state (index 0) before the first entry,
        so with a store and entries to replay, no loadable snapshot at all is RecoveryError
        rather than a replay onto the state as given (which may have been built
        differently); only a bare log (store None) replays from the state as given.
        RecoveryError when `at` is past
        the log's end, or the snapshot and the log do not meet (the log was compacted past
        every loadable snapshot, or the newest is ahead of the log). Snapshots after `at`
        are passed over, not reported as damaged. Failpoint recovery.after_snapshot_load is
        hit once the snapshot is in the live state (also when none loaded), before any
        entry is replayed (not again when resuming a preflight, which hit it).

        `loaded`: the report of `preflight` against a readonly view of the same log: the
        state already holds everything it replayed. When `log` still holds that history
        (the chained checksum of the last entry it replayed is the same here, so every
        entry up to it is), only the entries after it are replayed; otherwise recovery
        starts again from the newest snapshot.
        """
        last = log.last_index
        if at is not None and at > last:
            raise RecoveryError(f"log index {at} is past the end: the last entry is {last}")
        resume = self._resumable(log, loaded) if loaded is not None and at is None else None
        if resume is not None:
            report = loaded
        else:
            report = RecoveryReport()
            self._load_newest_snapshot(store, log, report, at)
            failpoints.hit("recovery.after_snapshot_load")
        base, first = report.snapshot_index, log.first_index
        stop = last + 1 if at is None else at + 1
        if base < first - 1:
            damaged = f" ({len(report.damaged_snapshots)} damaged snapshot(s) skipped)" if report.damaged_snapshots else ""
            if at is not None:
                raise RecoveryError(f"log index {at} is compacted: the log starts at entry {first} and no sound "
                                    f"snapshot at index {first - 1}..{at} exists to start from{damaged}")
            what = (f"the newest loadable snapshot is at index {base}" if report.snapshot is not None
                    else "no snapshot loads")
            raise RecoveryError(f"cannot recover: the log starts at entry {first} but {what}{damaged}")
        if base > last:
            raise RecoveryError(f"snapshot at index {base} is ahead of the log's last entry {last}")
        if report.snapshot is None and store is not None and stop > 1:
            # A journal snapshots its initial state (index 0) before its first entry, so
            # every replay starts from stored bytes. Replaying onto the state the caller
            # passed instead would silently give other bytes whenever it was built
            # differently (another random init): refuse, naming what was passed over.
            damaged = (f"; passed over as damaged or foreign: "
                       f"{', '.join(sid for sid, _ in report.damaged_snapshots)}") if report.damaged_snapshots else ""
            raise RecoveryError(f"cannot recover: the log holds entries 1..{last} but no snapshot loads, and the "
                                f"initial state's snapshot (index 0) is gone or damaged{damaged}; replaying onto the "
                                "state passed in would not reproduce the run")
        # Batched handlers only where the state can be put back: a snapshot was loaded.
        batched = report.snapshot is not None and store is not None
        try:
            self.run(log, base + 1 if resume is None else resume + 1, stop, report, progress, batched=batched)
        except BatchFailed:
            # A replay_batch raised part-way through its run: the state holds an unknown
            # part of it. Put the snapshot back and replay sequentially, so what fails
            # (and the state it leaves) is exactly what sequential replay gives.
            self.load_snapshot(store, log, report.snapshot, report)
            report.replayed, report.digests_checked = range(base + 1, base + 1), 0
            self.run(log, base + 1, stop, report, progress, batched=False)
        if report.through is None or report.through[0] != stop - 1:
            # Nothing replayed: the state is the snapshot's, at the log's entry stop - 1.
            report.through = (stop - 1, log.checksum_at(stop - 1))
        return report

    @staticmethod
    def _resumable(log, loaded: RecoveryReport) -> int | None:
        """The index through which `loaded` (a preflight's report) already holds `log`'s
        history, or None when that history changed since (truncated, rewritten, compacted
        past): equal chained checksums at an index mean equal entries up to it."""
        if loaded.through is None:
            return None
        index, checksum = loaded.through
        if not log.first_index - 1 <= index <= log.last_index:
            return None
        return index if log.checksum_at(index) == checksum else None

    def preflight(self, log, store, progress: bool | None = None) -> RecoveryReport:
        """Everything recovery can check before the caller becomes the log's writer (invariant 7).

        With `log` open readonly: the whole recovery (`recover`) against that view: the
        newest usable snapshot loaded into the state (its layout checked first:
        StateMismatchError), then every entry after it replayed, each op's registration
        checked as it comes (UnknownOpError naming the index) and every entry verified.
        So whatever recovery would raise (an unknown op, a handler's failure, damage)
        is raised before the term is bumped, and the log is read once. The state has
        then changed in memory only: a refused open leaves it partly recovered, as the
        snapshot load always did. Returns the report for `recover(loaded=...)`, which
        replays only what the writer appended since.
        """
        return self.recover(log, store, progress=progress)

    def run(self, log, start: int, stop: int, report: RecoveryReport, progress: bool | None = None, *,
            batched: bool = False) -> None:
        """Apply every entry in [start, stop) in order, extending report.replayed and its time.

        On any error, entries before the failing one have been applied, and the error
        names the failing index; nothing is skipped. Failpoint recovery.mid_replay is hit
        once half of at least two entries are applied. `batched`: runs of consecutive
        entries of an op registered with ``replay_batch=`` go to it in one call; if it
        raises, applying stops at the start of that run with BatchFailed (only `recover`
        asks for batches: it restores the snapshot and replays sequentially). Inside a
        supervised `Journal.open`, the heartbeat shows ``recovering k/n``, updated with
        memory writes every PUBLISH_EVERY entries or PUBLISH_SECONDS, whichever comes first
        (checked after each batch of readahead.BATCH entries).
        """
        started = time.perf_counter()
        midway = start + (stop - start) // 2 if stop - start >= 2 else None
        begun = report.replayed.start if len(report.replayed) else start
        total = stop - start
        link = opening_link()
        link.recovering(0, total)
        loop = ReplayLoop(self, report, start, batched)
        published, through = start, None
        publish_at = time.monotonic() + PUBLISH_SECONDS
        try:
            with ReplayProgress(total, progress) as bar, ReadAhead(log, start, stop, self.device) as source:
                for prepared, error in source.batches():
                    if prepared:
                        first = prepared[0].index
                        if midway is not None and first < midway <= first + len(prepared):
                            cut = midway - first
                            loop.apply(prepared[:cut])
                            failpoints.hit("recovery.mid_replay")
                            loop.apply(prepared[cut:])
                        else:
                            loop.apply(prepared)
                        through = (prepared[-1].index, prepared[-1].checksum)
                        bar.advance(len(prepared))
                        if loop.next - published >= PUBLISH_EVERY or time.monotonic() >= publish_at:
                            published, publish_at = loop.next, time.monotonic() + PUBLISH_SECONDS
                            link.recovering(published - start, total)
                    if error is not None:
                        raise error
            if loop.next != stop:
                raise RecoveryError(f"log entries {loop.next}..{stop - 1} disappeared during replay")
            link.recovering(total, total)
            if through is not None:
                report.through = through
        finally:
            report.replayed = range(begun, loop.next)
            report.replay_seconds += time.perf_counter() - started

    def apply(self, prepared, last_good: int | None = None) -> bool:
        """Apply one Prepared entry. True if it was a digest that was checked.

        UnknownOpError / VersionMismatchError / HandlerError / DivergenceError name the index;
        `last_good` (the newest index whose state is known right) goes into a DivergenceError.
        """
        if prepared.op == DIGEST_OP:
            expected = prepared.payload["digest"]
            actual = state_digest(self.state)
            if actual != expected:
                raise DivergenceError(prepared.index, expected & ((1 << 64) - 1), actual & ((1 << 64) - 1), last_good)
            if self.on_digest is not None:
                self.on_digest(prepared.index)
            return True
        if prepared.op in AUDIT_OPS:
            return False  # an operator's audit record (truncate, fork): what it records already happened
        spec, payload = self.ops.upcast(prepared.index, prepared.op, prepared.version, prepared.payload)
        if INPUTS in payload:
            raise PayloadRejectedError(prepared.op, f"{INPUTS!r} is reserved for unlogged inputs but the entry "
                                       "logs it as a payload key", prepared.index)
        try:
            # Unlogged inputs are rebuilt from the payload (replay.ops): a rebuild that
            # fails is as much this entry's failure as the handler's own.
            result = spec.call(self.state, payload, spec.inputs_for(payload))
        except Exception as exc:
            raise HandlerError(prepared.index, prepared.op, exc) from exc
        if spec.record and self.on_result is not None:
            self.on_result(prepared.term, prepared.index, spec, result)
        return False

    def _load_newest_snapshot(self, store, log, report: RecoveryReport, at: int | None) -> None:
        """Load the newest usable snapshot (at or before `at`) into the state, in place.

        Usable: it verifies and belongs to `log`'s history (`history_mismatch`). A damaged
        or foreign snapshot is skipped and recorded in report.damaged_snapshots; one after
        `at` is passed over silently. The chosen snapshot's layout must match the live
        state (StateMismatchError naming the path, before anything of the state changes).
        """
        started = time.perf_counter()
        later: set[str] = set()

        def accept(info) -> str | None:
            if at is not None and info.index > at:
                later.add(info.manifest_id)
                return f"after index {at}"
            return history_mismatch(log, info)

        if store is None:
            info, tree, skipped = None, None, []
        else:
            # The layout of tensors both sides hold is checked from the manifest before
            # anything is allocated (a snapshot declaring a huge tensor where the live state
            # holds a small one is refused, not loaded); check_layout covers the rest.
            info, tree, skipped = store.load_latest(map_location="cpu", accept=accept,
                                                    like=layout_template(self.state, self.kinds), strict=False)
        report.damaged_snapshots = [(r.manifest_id, str(r)) for r in skipped if r.manifest_id not in later]
        if info is not None:
            self.install(info, tree, log, report)
        report.load_seconds = time.perf_counter() - started

    def load_snapshot(self, store, log, info, report: RecoveryReport) -> None:
        """Load snapshot `info` into the state, in place, verified (every chunk's hash), and
        record it in `report`. The errors of `store.load` (a damaged snapshot:
        snapshots.CorruptSnapshotError...) and StateMismatchError leave the state as it was."""
        started = time.perf_counter()
        tree = store.load(info, map_location="cpu", like=layout_template(self.state, self.kinds), strict=False)
        self.install(info, tree, log, report)
        report.load_seconds += time.perf_counter() - started

    def install(self, info, tree, log, report: RecoveryReport) -> None:
        """Restore a loaded snapshot `tree` into the state and record it (and its counts) in `report`."""
        if journal_index(info.meta) != info.index:
            raise RecoveryError(
                f"snapshot {info.manifest_id} was not written by a replay Journal (meta {info.meta!r})")
        check_layout(self.state, self.kinds, tree)
        restore(self.state, self.kinds, tree)
        report.snapshot, report.snapshot_index = info, info.index
        counts = recorded_counts(info.meta.get(SNAPSHOT_META_KEY))
        if counts is None:
            counted, report.uncounted = counts_from_log(log, info.index)
            counts = dict(counted)
        report.counts = counts
