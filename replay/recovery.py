"""Recovery: newest verified snapshot into the live state, then every later entry, once, in order.

Used by `Journal.open` (recover after a restart) and by a live `apply` whose handler
raised (roll the half-mutated state back to the last applied index). Both paths run the
same code, which is what makes a rollback trustworthy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from .components import check_layout, layout_template, restore
from .determinism import state_digest
from .envelope import DIGEST_OP, ENGINE_OPS, TRUNCATE_OP
from . import failpoints
from .errors import DivergenceError, HandlerError, RecoveryError, UnknownOpError
from .ops import Ops
from .progress import ReplayProgress
from .readahead import ReadAhead

SNAPSHOT_META_KEY = "replay"
SNAPSHOT_FORMAT = 1


@dataclass
class RecoveryReport:
    """How a journal reached its state when it opened.

    snapshot: the SnapshotInfo loaded, or None (replayed from the initial state given to
    open). snapshot_index: its index (0 without one). replayed: range of entry indexes
    replayed ([lo, hi), empty if none). damaged_snapshots: (snapshot, reason) for each
    newer snapshot that failed verification and was skipped (its manifest id and the
    verify report's text).
    """

    snapshot: Any = None
    snapshot_index: int = 0
    replayed: range = range(1, 1)
    digests_checked: int = 0
    load_seconds: float = 0.0
    replay_seconds: float = 0.0
    damaged_snapshots: list[tuple[Any, str]] = field(default_factory=list)

    @property
    def entries_replayed(self) -> int:
        return len(self.replayed)

    @property
    def seconds(self) -> float:
        return self.load_seconds + self.replay_seconds

    def __str__(self) -> str:
        source = f"snapshot at index {self.snapshot_index}" if self.snapshot is not None else "the initial state"
        damaged = f", skipped {len(self.damaged_snapshots)} damaged snapshot(s)" if self.damaged_snapshots else ""
        return (f"recovered from {source}, replayed {self.entries_replayed} entries "
                f"in {self.seconds:.3f} s{damaged}")


def snapshot_meta(index: int, log_checksum: int | None) -> dict:
    """The meta stored with every journal snapshot.

    ``index`` is the last applied entry. ``log_checksum`` is the log's chained checksum
    at that index (the entry's own checksum, or the compaction boundary's): two runs that
    share a term (sibling runs, a log truncated and rewritten) differ there, so recovery
    can tell a snapshot of this log's history from one of another. Snapshots written
    before the field existed lack it; for them only the term is compared.
    """
    meta = {"format": SNAPSHOT_FORMAT, "index": index}
    if log_checksum is not None:
        meta["log_checksum"] = log_checksum
    return {SNAPSHOT_META_KEY: meta}


def history_mismatch(log, info) -> str | None:
    """Why snapshot `info` is not a state of `log`'s history, or None if it may be.

    It is one when the log's term at the snapshot's index equals the snapshot's term and
    the log's chained checksum there equals the one the snapshot recorded. Indexes the log
    cannot answer for (compacted past, or beyond its end) return None: recovery reports
    those as a gap or a snapshot ahead of the log, which no older snapshot can fix by
    being skipped silently.
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
    actual = log_checksum_at(log, index)
    if actual is not None and actual != recorded:
        return (f"snapshot at index {index} recorded log checksum {recorded:#018x}, but the log has "
                f"{actual:#018x} there: the snapshot belongs to another history")
    return None


def log_checksum_at(log, index: int) -> int | None:
    """The log's chained checksum of entry `index`; None when the log no longer holds the entry."""
    if index < log.first_index or index > log.last_index:
        return None
    for header in log.headers(index, index + 1):
        return header.checksum
    return None


def load_newest_snapshot(store, log, state: Mapping[str, Any], kinds: dict[str, str], report: RecoveryReport):
    """Load the newest usable snapshot into `state`, in place; record the skipped ones.

    Usable: it verifies and belongs to `log`'s history (`history_mismatch`). A damaged or
    foreign snapshot is skipped and recorded in report.damaged_snapshots; its layout is
    never checked. The chosen snapshot's layout must match the live state
    (components.check_layout: StateMismatchError naming the path, before anything of the
    live state changes). Returns its info, or None when no snapshot loads.
    """
    started = time.perf_counter()
    # The layout of tensors both sides hold is checked from the manifest before anything
    # is allocated (a snapshot declaring a huge tensor where the live state holds a small
    # one is refused, not loaded); check_layout below covers the rest after loading.
    info, tree, skipped = store.load_latest(map_location="cpu", accept=lambda i: history_mismatch(log, i),
                                            like=layout_template(state, kinds), strict=False)
    report.damaged_snapshots = [(r.manifest_id, str(r)) for r in skipped]
    if info is not None:
        meta = info.meta.get(SNAPSHOT_META_KEY) if isinstance(info.meta, dict) else None
        if not meta or meta.get("index") != info.index:
            raise RecoveryError(
                f"snapshot {info.manifest_id} was not written by a replay Journal (meta {info.meta!r})")
        check_layout(state, kinds, tree)
        restore(state, kinds, tree)
        report.snapshot, report.snapshot_index = info, info.index
    report.load_seconds = time.perf_counter() - started
    return info


class Replayer:
    """Applies log entries to the live state through the registered handlers."""

    def __init__(self, ops: Ops, state: Mapping[str, Any], device: torch.device):
        self.ops = ops
        self.state = state
        self.device = device

    def apply(self, prepared) -> bool:
        """Apply one Prepared entry. True if it was a digest that was checked.

        UnknownOpError / VersionMismatchError / HandlerError / DivergenceError name the index.
        """
        if prepared.op == DIGEST_OP:
            expected = prepared.payload["digest"]
            actual = state_digest(self.state)
            if actual != expected:
                raise DivergenceError(prepared.index, expected & ((1 << 64) - 1), actual & ((1 << 64) - 1))
            return True
        if prepared.op == TRUNCATE_OP:
            return False  # an operator's audit record: the truncation itself already happened
        spec, payload = self.ops.upcast(prepared.index, prepared.op, prepared.version, prepared.payload)
        try:
            spec.handler(self.state, **payload)
        except Exception as exc:
            raise HandlerError(prepared.index, prepared.op, exc) from exc
        return False

    def run(self, log, start: int, stop: int, report: RecoveryReport, progress: bool | None = None) -> None:
        """Apply every entry in [start, stop) in order, recording the range and time in `report`.

        On any error, entries before the failing one have been applied, and the error
        names the failing index; nothing is skipped. Failpoint recovery.mid_replay is hit
        once half of at least two entries are applied.
        """
        started = time.perf_counter()
        applied = start
        midway = start + (stop - start) // 2 if stop - start >= 2 else None
        try:
            with ReplayProgress(stop - start, progress) as bar, ReadAhead(log, start, stop, self.device) as entries:
                for prepared in entries:
                    if prepared.index != applied:
                        raise RecoveryError(f"log entry {applied} is missing (the next entry read is {prepared.index})")
                    report.digests_checked += self.apply(prepared)
                    applied += 1
                    bar.advance()
                    if applied == midway:
                        failpoints.hit("recovery.mid_replay")
            if applied != stop:
                raise RecoveryError(f"log entries {applied}..{stop - 1} disappeared during replay")
        finally:
            report.replayed = range(start, applied)
            report.replay_seconds += time.perf_counter() - started


def recover(log, store, state: Mapping[str, Any], kinds: dict[str, str], replayer: Replayer,
            stop: int | None = None, progress: bool | None = None, loaded=None) -> RecoveryReport:
    """Bring `state` to log entry `stop - 1` (default: the last entry): newest usable snapshot, then replay.

    Without a loadable snapshot, replay starts from the state as given, which is only
    possible while the log still starts at entry 1. RecoveryError when the snapshot and
    the log do not meet (the log was compacted past the snapshot, or the snapshot is
    ahead of the log). Failpoint recovery.after_snapshot_load is hit once the snapshot is
    in the live state (also when none loaded), before any entry is replayed.

    `loaded`: a RecoveryReport of a snapshot already loaded into `state` (by
    `preflight` against a readonly view of the same log); it is reused when it still
    belongs to `log`'s history, so the snapshot is not read twice.
    """
    if loaded is not None and (loaded.snapshot is None or history_mismatch(log, loaded.snapshot) is None):
        report = loaded
        info = loaded.snapshot
    else:
        report = RecoveryReport()
        info = load_newest_snapshot(store, log, state, kinds, report)
    stop = log.last_index + 1 if stop is None else stop
    failpoints.hit("recovery.after_snapshot_load")
    base = 0 if info is None else info.index
    first = log.first_index
    if base < first - 1:
        what = f"the newest loadable snapshot is at index {base}" if info is not None else "no snapshot loads"
        damaged = f" ({len(report.damaged_snapshots)} damaged snapshot(s) skipped)" if report.damaged_snapshots else ""
        raise RecoveryError(f"cannot recover: the log starts at entry {first} but {what}{damaged}")
    if base >= stop:
        if base > log.last_index:
            raise RecoveryError(f"snapshot at index {base} is ahead of the log's last entry {log.last_index}")
        raise RecoveryError(f"snapshot at index {base} is newer than the requested index {stop - 1}")
    replayer.run(log, base + 1, stop, report, progress)
    return report


def preflight(log, store, state: Mapping[str, Any], kinds: dict[str, str], ops: Ops) -> RecoveryReport:
    """Everything recovery can check before the caller becomes the log's writer.

    With `log` open readonly: load the newest usable snapshot into `state` (its layout
    checked first: StateMismatchError), and check that every op the log holds after it is
    registered (UnknownOpError naming the index), from the entries' headers alone. Raises
    what `recover` would, so a journal that cannot be opened is refused before its term is
    bumped. Returns the report to hand to `recover(..., loaded=...)`.
    """
    report = RecoveryReport()
    info = load_newest_snapshot(store, log, state, kinds, report)
    base = 0 if info is None else info.index
    start = max(base + 1, log.first_index)
    for header in log.headers(start, verify=False):
        if header.op not in ENGINE_OPS and header.op not in ops:
            raise UnknownOpError(header.op, header.index)
    return report
