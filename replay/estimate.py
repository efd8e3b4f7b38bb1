"""How long recovery would replay: the snapshot it would start from, and the writer's pace.

`replay stats` prints this; the rule lives here so it is recovery's rule, not a copy:

1. The start (`recovery_snapshot`) is the newest snapshot recovery would load: it
   verifies (manifest and every chunk) and belongs to the log's history
   (`recovery.history_mismatch`: a snapshot of a sibling run or of a log truncated and
   rewritten is passed over, as recovery passes it over). Newer snapshots passed over
   are named, damaged and foreign apart; without one, replay starts at the log's start.
2. The pace (`WriterPace`) is the writer's median time between consecutive entries of
   one term (a restart's gap is not a step; a damaged entry breaks the run). It is the
   pace the run wrote at (forward, backward and data loading included), so replay,
   which skips waiting for data, is usually no slower.
3. The estimate is the entries after the start, times that pace.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from .recovery import history_mismatch


@dataclass(frozen=True)
class PassedOver:
    """A snapshot newer than the start that recovery would not load: `damaged` (it does not
    verify) or foreign (another history); `reason` says which check failed."""

    manifest_id: str
    reason: str
    damaged: bool


def recovery_snapshot(log, store) -> tuple[object | None, list[PassedOver]]:
    """(the SnapshotInfo recovery would start from or None, the newer ones passed over,
    newest first). `store` None or empty: (None, []). Reads every chunk of the snapshots it
    checks (as recovery would), none of their tensors into memory. Never raises on damage.
    Beside a live writer, a snapshot pruned while this runs is left out, not called damaged."""
    if store is None:
        return None, []
    passed: list[PassedOver] = []
    for entry in reversed(store.manifests()):
        if entry.info is not None:
            why = history_mismatch(log, entry.info)
            if why is not None:
                passed.append(PassedOver(entry.name, why, damaged=False))
                continue
        report = store.verify(entry.name)
        if report.ok and report.info is not None and history_mismatch(log, report.info) is None:
            return report.info, passed
        if not report.ok and entry.name not in {e.name for e in store.manifests()}:
            continue  # pruned meanwhile: not damage
        passed.append(PassedOver(entry.name, str(report), damaged=True))
    return None, passed


class WriterPace:
    """The writer's median time between consecutive entries of one term, fed entry by entry
    in log order (`add`; `broken` for an entry that cannot be read)."""

    def __init__(self) -> None:
        self._gaps: list[int] = []
        self._previous: tuple[int, int] | None = None

    def add(self, term: int, time_ns: int) -> None:
        if self._previous is not None and self._previous[0] == term and time_ns >= self._previous[1]:
            self._gaps.append(time_ns - self._previous[1])
        self._previous = (term, time_ns)

    def broken(self) -> None:
        self._previous = None

    @property
    def seconds_per_entry(self) -> float | None:
        """None when no two consecutive entries of one term were seen."""
        return statistics.median(self._gaps) / 1e9 if self._gaps else None


@dataclass(frozen=True)
class ReplayEstimate:
    """Recovery's replay from `from_snapshot` (None: the log's start) at `from_index`:
    `entries` to replay, and `seconds` at `seconds_per_entry` (None without timing)."""

    from_index: int
    from_snapshot: str | None
    entries: int
    seconds_per_entry: float | None
    passed_over: list[PassedOver] = field(default_factory=list)
    any_snapshot: bool = False

    @property
    def seconds(self) -> float | None:
        return None if self.seconds_per_entry is None else self.entries * self.seconds_per_entry

    @property
    def damaged_snapshots(self) -> list[str]:
        return [p.manifest_id for p in self.passed_over if p.damaged]

    @property
    def foreign_snapshots(self) -> list[str]:
        return [p.manifest_id for p in self.passed_over if not p.damaged]

    @property
    def text(self) -> str:
        if self.from_snapshot is not None:
            source = f"snapshot {self.from_snapshot} (index {self.from_index})"
        else:
            source = "the start of the log" + (" (no snapshot verifies)" if self.any_snapshot else "")
        if self.damaged_snapshots:
            source += f", passing over damaged snapshot(s) {', '.join(self.damaged_snapshots)}"
        if self.foreign_snapshots:
            source += f", passing over snapshot(s) of another history {', '.join(self.foreign_snapshots)}"
        if self.seconds is None:
            return f"replay from {source}: {self.entries} entries (no timing to estimate from)"
        return (f"estimated replay from {source}: {self.entries} entries, ~{_duration(self.seconds)} "
                f"(at the writer's median {self.seconds_per_entry * 1e3:.2f} ms per entry)")

    def as_record(self) -> dict:
        return {"from_index": self.from_index, "from_snapshot": self.from_snapshot,
                "damaged_snapshots": self.damaged_snapshots, "foreign_snapshots": self.foreign_snapshots,
                "entries": self.entries, "seconds_per_entry": self.seconds_per_entry, "seconds": self.seconds,
                "text": self.text}


def estimate_replay(log, store, pace: WriterPace, last: int | None = None) -> ReplayEstimate:
    """The replay a recovery of (`log`, `store`) would do now, at the writer's `pace`, up
    to `last` (default: the log's last index now)."""
    start, passed = recovery_snapshot(log, store)
    base = start.index if start is not None else 0
    last = log.last_index if last is None else last
    return ReplayEstimate(base, start.manifest_id if start is not None else None, max(last - base, 0),
                          pace.seconds_per_entry, passed, any_snapshot=bool(passed) or start is not None)


def _duration(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.1f} s"
