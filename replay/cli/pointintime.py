"""Rebuilding the state as it was right after log entry INDEX, from a journal opened readonly.

The newest retained snapshot at or before INDEX that loads (every chunk hash-checked) is
restored into a fresh state from the user's factory, in place, with the engine's own
`components.restore`; then entries snapshot+1..INDEX are replayed with the engine's own
`Replayer` (read-ahead, upcasters, digest checks, errors naming the index). Nothing is
written: the journal's `recover()` would always start from the newest snapshot, which may
lie after INDEX, so the snapshot is chosen here and only the replay is shared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import snapshots
import torch
from eventlog import LogError

from replay import components
from replay.ops import Ops
from replay.recovery import RecoveryReport, Replayer

from .errors import CliError
from .source import Source


@dataclass
class PointInTime:
    """A state rebuilt at `index`: from snapshot `base` (None: the factory's state), entries replayed."""

    state: Mapping[str, Any]
    kinds: dict[str, str]
    index: int
    base: Any = None
    replayed: range = range(1, 1)
    skipped: list[str] = field(default_factory=list)
    replayer: Replayer | None = None

    @property
    def base_index(self) -> int:
        return 0 if self.base is None else self.base.index

    def describe(self) -> str:
        source = f"snapshot {self.base.manifest_id}" if self.base is not None else "the --state factory's initial state"
        skipped = f"; skipped damaged snapshot(s) {', '.join(self.skipped)}" if self.skipped else ""
        return f"state at index {self.index}: from {source}, replayed {len(self.replayed)} entries{skipped}"

    def advance(self, log, index: int, progress: bool | None = None) -> None:
        """Replay on from the current index to `index` (> current)."""
        report = RecoveryReport()
        self.replayer.run(log, self.index + 1, index + 1, report, progress)
        self.replayed = range(self.replayed.start if len(self.replayed) else self.index + 1, index + 1)
        self.index = index


def rebuild(src: Source, index: int, ops: Ops, state: Mapping[str, Any], kinds: dict[str, str],
            progress: bool | None = None) -> PointInTime:
    """`state` (fresh, from the factory) brought to exactly entry `index`; see the module doc.

    CliError: index past the end, or no snapshot at or before it from which the retained
    log reaches it (compacted). Replay errors (HandlerError, DivergenceError,
    CorruptEntryError, UnknownOpError) propagate naming the index.
    """
    log = src.log
    first, last = log.first_index, log.last_index
    if index > last:
        raise CliError(f"log index {index} is past the end: the last entry is {last}")
    result = PointInTime(state, kinds, index)
    for info in _candidates(src.store, index):
        if info.index < first - 1:
            break  # the log no longer holds the entries after it; older ones are worse
        if not _same_history(log, info):
            continue
        try:
            tree = src.store.load(info, map_location="cpu")
        except snapshots.CorruptSnapshotError as exc:
            result.skipped.append(f"{info.manifest_id} ({exc})")
            continue
        components.restore(state, kinds, tree)
        result.base = info
        break
    if result.base is None and first > 1:
        raise CliError(f"log index {index} is compacted: the log starts at entry {first} and no sound snapshot "
                       f"at index {first - 1}..{index} exists to start from")
    result.replayer = Replayer(ops, state, components.default_device(state))
    result.index = result.base_index
    if index > result.index:
        result.advance(log, index, progress)
    return result


def _candidates(store, index: int) -> Iterator:
    """Snapshots at or before `index`, newest first."""
    if store is None:
        return iter(())
    return reversed([info for info in store.list() if info.index <= index])


def _same_history(log, info) -> bool:
    """A snapshot whose term differs from the log's term at its index belongs to a truncated branch."""
    try:
        return log.term_at(info.index) == info.term
    except LogError:
        return False


def tensors_by_name(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """({dotted name: tensor}, {dotted name: other leaf}) of a state; state_dict objects expanded.

    Names join the key path with dots ("model.0.weight", "optim.state.0.exp_avg").
    ValueError if two paths flatten to the same name (a key that itself contains a dot).
    """
    tensors: dict[str, torch.Tensor] = {}
    values: dict[str, Any] = {}
    for path, leaf in components.leaves(state):
        name = ".".join(str(part) for part in path)
        if name in tensors or name in values:
            raise ValueError(f"two state entries flatten to the same name {name!r}")
        (tensors if isinstance(leaf, torch.Tensor) else values)[name] = leaf
    return tensors, values
