"""`load_state`: bring chosen components of a live state to an index of another run's journal.

The common use of a checkpoint after resume is to start from its weights: fine-tune the
model a run trained, under a journal of its own, without its optimizer or data cursor::

    model = build_model()
    replay.load_state("runs/pretrain", into={"model": model})      # newest entry's weights
    with replay.Journal.open("runs/finetune", state={"model": model, "optim": AdamW(...)}, ops=ops) as j:
        ...

Nothing of the source journal is written or locked: its log is opened readonly (no
writer lock, no term bump, short read transactions) and its snapshot store only read,
so this works while the run that owns it is still writing. (LMDB registers a reader in
the log's ``lock.mdb`` reader table, as every reader of a live log must; no data file,
manifest or chunk is touched.)

How the state at `at` is reached, cheapest first:

1. a sound snapshot of the log's history exactly at `at`: only the requested
   components are read from it (their chunks alone are decompressed, so damage in
   another component does not matter) and restored in place; no user code runs;
2. otherwise the run's state is rebuilt by recovery (`replay.audit.state_at`: the
   newest usable snapshot at or before `at`, then replay), which needs the run's `ops`
   and a `state` factory for its full layout; the requested components are then copied
   into `into`, in place.

Restoring is the engine's own (`replay.components`): modules and optimizers get
`load_state_dict`, tensors `copy_`, dicts are updated in place; a dtype or shape that
differs is StateMismatchError naming the key path, before anything in `into` changes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import snapshots
import torch
from eventlog import EventLog, LogError

from . import components
from .audit import locate, state_at
from .errors import ReplayError
from .ops import Ops
from .recovery import history_mismatch, journal_index


class LoadStateError(ReplayError, ValueError):
    """Raised by `load_state` for a request it cannot serve: a path that is not a journal,
    an index outside the log, or `into` that is not a mapping of components."""


class ReplayNeededError(LoadStateError):
    """Raised by `load_state` when no sound snapshot is exactly at the index asked for and
    no `ops`/`state` were given to replay to it; `index` is it, `nearest` the index of the
    newest snapshot before it (None if there is none)."""

    def __init__(self, message: str, index: int, nearest: int | None):
        self.index = index
        self.nearest = nearest
        super().__init__(message)


@dataclass(frozen=True)
class LoadedState:
    """What `load_state` did: the `index` (and its `term`) the components now hold, the
    `snapshot` read (manifest id; None when replay started from the factory's state), the
    entries `replayed` ([lo, hi), empty when the snapshot was exactly at `index`), the
    `components` restored, and damaged snapshots passed over (`skipped`: id, reason)."""

    index: int
    term: int | None
    snapshot: str | None
    replayed: range
    components: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = ()


def load_state(path: str | os.PathLike, into: Mapping[str, Any], at: int | None = None,
               ops: Ops | None = None, state: Callable[[], Mapping[str, Any]] | Mapping[str, Any] | None = None,
               *, progress: bool | None = None) -> LoadedState:
    """Bring the components of `into` to their state right after entry `at` of the journal
    at `path`, in place, writing nothing there.

    Args:
        path: a journal directory (``log/`` beside ``snapshots/``).
        into: {component name: live component}, names as the run's state had them
            (``{"model": model}``); modules, optimizers, schedulers, tensors, dicts.
        at: the log index; None means the newest entry. 0 is the initial state (its
            snapshot, when the journal kept it).
        ops, state: the run's `Ops` and a zero-argument factory returning a fresh state
            of the run's full layout (or such a state itself); needed only when no sound
            snapshot is exactly at `at`.
        progress: show a replay progress bar (None: on a terminal).

    Returns a LoadedState. Raises, edge cases first: LoadStateError when `path` is not a
    journal, `at` is outside [0, last index] or `into` is not a mapping of components;
    ComponentNotFoundError (snapshots) naming a component the run does not have;
    ReplayNeededError naming `at`, the nearest snapshot before it and what to pass;
    StateMismatchError naming the key path whose dtype or shape differs; recovery's
    errors (RecoveryError, HandlerError, ...) naming the entry when replay fails.
    """
    root = Path(path)
    log_dir, store_dir = _journal(root)
    wanted = _components(into)
    with EventLog.open(log_dir, readonly=True) as log:
        last = log.last_index
        index = last if at is None else at
        if type(index) is not int or not 0 <= index <= last:
            raise LoadStateError(f"index {at!r} is outside the journal {root}: its entries are 1..{last} "
                                 "(0 is the initial state)")
        store = snapshots.SnapshotStore(store_dir, workers=4)
        try:
            exact, skipped, nearest = snapshots_at(log, store, index)
            for info in exact:
                try:
                    tree = store.load(info, only=tuple(wanted), like=_layout(into, wanted), strict=False)
                except snapshots.CorruptSnapshotError as exc:
                    skipped.append((info.manifest_id, str(exc)))
                    continue
                _restore(into, wanted, tree)
                return LoadedState(index, info.term, info.manifest_id, range(index + 1, index + 1),
                                   tuple(wanted), tuple(skipped))
            term = _term_at(log, index)
        finally:
            store.close()
    if ops is None or state is None:
        damaged = f"; damaged snapshot(s) passed over: {', '.join(s for s, _ in skipped)}" if skipped else ""
        before = f"the nearest snapshot before it is at index {nearest}" if nearest is not None else \
            "no snapshot precedes it"
        raise ReplayNeededError(
            f"no sound snapshot of {root} is at index {index} ({before}{damaged}); rebuilding the state there "
            "replays the log: pass ops=<the run's replay.Ops> and state=<a function returning a fresh state of "
            "the run's full layout>, or choose a snapshot's index", index, nearest)
    full = state() if callable(state) else state
    kinds = components.check_state(full)
    missing = [name for name in wanted if name not in full]
    if missing:
        raise snapshots.ComponentNotFoundError(missing[0], list(full))
    report = state_at(root, ops, full, index, progress=progress)
    _restore(into, wanted, _clone(components.capture({n: full[n] for n in wanted}, {n: kinds[n] for n in wanted})))
    base = report.snapshot.manifest_id if report.snapshot is not None else None
    return LoadedState(index, term, base, report.replayed, tuple(wanted),
                       tuple(skipped) + tuple((s, r) for s, r in report.damaged_snapshots))


def _term_at(log, index: int) -> int | None:
    """The log's term at `index` (0 for the initial state); None where it no longer has it
    (recovery then says why it cannot reach `index`)."""
    if index == 0:
        return 0
    try:
        return log.term_at(index)
    except LogError:
        return None


def _journal(root: Path) -> tuple[Path, Path]:
    try:
        log_dir, store_dir = locate(root)
    except FileNotFoundError as exc:
        raise LoadStateError(f"{exc}") from None
    if store_dir is None:
        raise LoadStateError(f"{root} is a bare event log, not a journal (no snapshots/ beside log/)")
    return log_dir, store_dir


def _components(into: Any) -> dict[str, str]:
    try:
        return components.check_state(into)
    except TypeError as exc:
        raise LoadStateError(f"into= must map component names to live components: {exc}") from None


def snapshots_at(log, store, index: int) -> tuple[list, list[tuple[str, str]], int | None]:
    """(infos of the snapshots exactly at `index` that a Journal wrote for the log's
    history, newest term first; (id, reason) of those refused; the index of the newest
    snapshot before `index`, or None). Manifests only: chunks are checked when read."""
    exact, refused, nearest = [], [], None
    for info in store.list():
        if info.index < index:
            nearest = info.index
        elif info.index == index:
            reason = refusal(log, info)
            if reason is None:
                exact.append(info)
            else:
                refused.append((info.manifest_id, reason))
    return exact[::-1], refused, nearest


def refusal(log, info) -> str | None:
    """Why snapshot `info` is not a state of `log`'s run (not a Journal's, another
    history), or None when it is one."""
    if journal_index(info.meta) != info.index:
        return "not written by a replay Journal"
    return history_mismatch(log, info)


def _layout(into: Mapping[str, Any], kinds: dict[str, str]) -> dict[str, Any]:
    """The tensors whose dtype and shape the snapshot must share, checked before loading."""
    return components.layout_template(into, kinds)


def _restore(into: Mapping[str, Any], kinds: dict[str, str], tree: Mapping[str, Any]) -> None:
    sub = {name: into[name] for name in kinds}
    saved = {name: tree[name] for name in kinds}
    components.check_layout(sub, kinds, saved)
    components.restore(sub, kinds, saved)


def _clone(tree: Any) -> Any:
    """A copy of a captured tree with its own tensors (the scratch state is dropped after)."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().clone()
    if isinstance(tree, dict):
        return type(tree)((k, _clone(v)) for k, v in tree.items())  # dict or OrderedDict, order kept
    if isinstance(tree, list):
        return [_clone(v) for v in tree]
    if isinstance(tree, tuple):
        return tuple(_clone(v) for v in tree)
    return tree
