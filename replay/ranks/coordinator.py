"""The live side of a multi-rank journal: joining the group's directory, and what the ranks agree on while running.

`join` runs first in every rank's `Journal.open`: it checks, through one collective,
that the directory was created by a group of this size and that no rank lost its
directory, before anything is written. `Coordinator` then serves the open journal:

- `flush` turns each rank's durable index into the global one (the minimum), which is
  what "acknowledged" means for a multi-rank journal, and records it durably in the
  rank's own ``acknowledged.json`` before returning it (recovery never cuts below it:
  replay/ranks/cut.py);
- `snapshot_due` makes the policy's decision identical on every rank: the entries bound
  decides by index alone (no collective); a bound on seconds, log bytes or replay time
  is measured per rank and OR-ed across ranks every DECIDE_EVERY indexes (one small
  collective per that many applies);
- `confirm` learns, piggybacked on flush and on snapshot decisions, which snapshot every
  rank has committed: that one is protected (retention keeps it, compaction stops at it)
  and rank 0 writes its global record (replay.ranks.layout) for audits;
- `check_replicated` compares the digest of the replicated components (DDP modules, or
  those named in ``replicated=``) across ranks at digest entries, live and on replay.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

from eventlog import EventLog, FormatError

from .. import failpoints, layout as paths
from ..opening import refuse_to_reinitialise
from ..determinism import state_digest
from ..errors import RankDivergenceError, RecoveryError, WorldSizeError
from ..policies import Every
from . import layout
from .collectives import Collectives


DECIDE_EVERY = 16  # indexes between two cross-rank decisions of a time- or size-bounded snapshot policy


def join(ranks: Collectives, root: Path) -> Path:
    """This rank's directory under the multi-rank journal `root`, after checking with every rank.

    Raises the same error on every rank, before anything is written: WorldSizeError when
    a rank's rank.json records another world size (or another rank); RecoveryError when
    `root` is a single-process journal, or some ranks hold a journal and others none (a
    rank's directory was lost: starting it over would break the cut); RankFailureError
    for a rank that could not read its record. A new rank directory gets its rank.json
    once every rank has agreed.
    """
    warn_about_shared_store()
    mine = layout.rank_dir(root, ranks.rank)
    error, recorded, entries, snapshotted = None, None, False, False
    try:
        if paths.log_dir(root).exists():
            raise RecoveryError(f"{root} is a single-process journal (it holds log/); open it without group=")
        record = layout.read_rank_record(mine)
        # Journal.open checks this again after join, on this rank alone: checked here, the
        # other ranks hear why (not gloo's "Connection reset by peer" from a rank gone).
        refuse_to_reinitialise(mine)
        if record is not None and record["rank"] != ranks.rank:
            raise WorldSizeError(mine, record["world_size"], ranks.size)
        recorded = record["world_size"] if record else None
        entries = _holds_entries(paths.log_dir(mine))
        manifests = paths.manifests_dir(mine)
        snapshotted = manifests.is_dir() and any(manifests.iterdir())
    except Exception as exc:  # noqa: BLE001 - every rank must hear of it before any collective it would miss
        error = exc
    ranks.agree(error, "opening the journal directory")
    rows = ranks.gather([recorded or 0, int(entries), int(snapshotted)], "opening the journal directory")
    sizes = sorted({row[0] for row in rows if row[0]})
    if any(size != ranks.size for size in sizes):
        raise WorldSizeError(root, next(s for s in sizes if s != ranks.size), ranks.size)
    # A rank with neither entries nor snapshots beside a rank with entries lost its
    # directory: its empty log would make the cut 0 and every other rank drop its whole
    # history. (A rank killed inside the first open has no entries anywhere to lose, and
    # one killed before its first entry still holds its initial snapshot.)
    holding = [rank for rank, row in enumerate(rows) if row[1]]
    lost = [rank for rank, row in enumerate(rows) if not row[1] and not row[2]]
    if holding and lost:
        raise RecoveryError(f"{root}: rank(s) {lost} hold no journal (no entries, no snapshots under rank-<r>/) "
                            f"while rank(s) {holding} hold entries: a rank's directory was lost or is on another "
                            "disk; restore it (starting that rank over would make every rank drop its history)")
    mine.mkdir(parents=True, exist_ok=True)
    if recorded is None:
        layout.write_rank_record(mine, ranks.rank, ranks.size)
    return mine


def warn_about_shared_store() -> None:
    """Warn when running under torchrun without TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1.

    With the default c10d rendezvous on this torch, the workers of a group the elastic
    agent restarts can be given the dead group's gloo addresses and hang after
    "connectFullMesh failed ... Connection refused" (pytorch/pytorch#135712), which
    happens before any code of ours runs in the restarted worker. The first, healthy
    start is where we can still say so."""
    if os.environ.get("TORCHELASTIC_RUN_ID") and os.environ.get("TORCH_DISABLE_SHARE_RDZV_TCP_STORE") != "1":
        warnings.warn("running under torchrun without TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1: after a rank dies, the "
                      "restarted group may hang in init_process_group reading the dead group's addresses "
                      "(pytorch/pytorch#135712); set it in torchrun's environment", RuntimeWarning, stacklevel=5)


def replicated_components(state: Mapping[str, Any], names: Iterable[str] | None) -> list[str]:
    """The components compared across ranks: `names` (ValueError for one not in the state),
    plus every DistributedDataParallel module; sorted."""
    chosen = set(names or ())
    unknown = sorted(chosen - set(state))
    if unknown:
        raise ValueError(f"replicated= names {unknown}, which are not components of the state {sorted(state)}")
    try:
        from torch.nn.parallel import DistributedDataParallel
    except ImportError:  # pragma: no cover - torch without distributed support
        DistributedDataParallel = ()
    chosen.update(name for name, component in state.items() if isinstance(component, DistributedDataParallel))
    return sorted(chosen)


def warn_about_bucket_rebuild(state: Mapping[str, Any], world_size: int) -> None:
    """Warn for each DDP module whose gradient buckets will be rebuilt, when 3+ ranks sum into them.

    DDP regroups its gradient buckets after a process's first backward pass (unless
    ``find_unused_parameters=True``). A group restarted from a snapshot replays its
    first step with the initial buckets, where the run it replays had the rebuilt ones;
    with three or more ranks the all-reduce then adds each gradient's terms in another
    order, and the low bits differ (two terms add alike in either order). The digests
    of ``digest_every`` would report it as a DivergenceError."""
    if world_size < 3:
        return
    try:
        from torch.nn.parallel import DistributedDataParallel
    except ImportError:  # pragma: no cover
        return
    for name, component in state.items():
        if isinstance(component, DistributedDataParallel) and not component.find_unused_parameters:
            warnings.warn(f"state component {name!r} is a DistributedDataParallel that rebuilds its gradient buckets "
                          f"after its first step; with {world_size} ranks a resumed run then sums gradients in another "
                          "order and replay is not bit-exact. Build it with find_unused_parameters=True (its buckets "
                          "then stay as first built)", RuntimeWarning, stacklevel=4)


def compare_replicated(ranks: Collectives, state: Mapping[str, Any], replicated: list[str], index: int) -> None:
    """RankDivergenceError on every rank when the digests of the `replicated` components of
    `state` differ across ranks (at digest entry `index`); nothing to do without any."""
    if not replicated:
        return
    digest = state_digest({name: state[name] for name in replicated})
    digests = [row[0] for row in ranks.gather([digest], f"the digest at index {index}")]
    if len(set(digests)) > 1:
        raise RankDivergenceError(index, replicated, digests)


def _holds_entries(log_dir: Path) -> bool:
    """Whether the log at `log_dir` exists and has ever held an entry (read only)."""
    data = paths.lmdb_file(log_dir)
    if not data.exists() or data.stat().st_size == 0:
        return False
    try:
        with EventLog.open(log_dir, readonly=True) as log:
            return log.last_index >= 1
    except FormatError:  # its creation never completed: nothing was ever written
        return False


class Coordinator:
    """One rank's share of a multi-rank journal's live agreements (module doc): the multi-rank
    `replay.group.Group`, whose contracts (and call sequence) are written there."""

    def __init__(self, ranks: Collectives, root: Path, state: Mapping[str, Any], replicated: list[str],
                 policy: Every, store, confirmed: int | None):
        self.ranks = ranks
        self.root = root  # the group's directory (rank 0 writes its records there)
        self._state = state
        self.replicated = replicated
        self._by_index_only = policy.seconds is None and policy.log_bytes is None and policy.replay_seconds is None
        self._snapshotter = None  # the journal's, once attached
        self._store = store
        self.confirmed = confirmed  # newest snapshot index every rank committed (None: none yet)
        self._rank_root = layout.rank_dir(root, ranks.rank)
        # The highest index this rank has recorded as durable on every rank (replay/ranks/cut.py);
        # recovery has already read and checked the record.
        try:
            self.acknowledged = layout.read_acknowledged(self._rank_root) or 0
        except layout.RankRecordError:
            self.acknowledged = 0

    @property
    def rank(self) -> int:
        return self.ranks.rank

    @property
    def size(self) -> int:
        return self.ranks.size

    def attach(self, snapshotter) -> None:
        """Serve the journal whose snapshots `snapshotter` takes: the confirmed one is protected."""
        self._snapshotter = snapshotter
        snapshotter.protected = self.confirmed

    def after_handler_error(self, index: int, cause: BaseException, rebuild) -> BaseException:
        """The state is not rebuilt: its replay needs the other ranks in lockstep (DDP's
        collectives), and they are elsewhere (or a dead peer is why the handler raised). The
        journal is poisoned by `cause` instead; reopening every rank recovers the group,
        whose cut no longer includes `index` (invariant 11)."""
        return cause

    def flush(self, local_durable: int) -> int:
        """The global durable index (the minimum of every rank's `local_durable`); confirms snapshots on the way."""
        rows = self.ranks.gather([local_durable, *self._committed()], "flush")
        self._confirm(rows, acknowledge=False)  # the durable index is at or above a confirmed snapshot's
        durable = min(row[0] for row in rows)
        self._acknowledge(durable)  # before the caller hears of it: recovery never cuts below it
        return durable

    def confirm(self) -> None:
        """Learn which snapshot every rank has committed (protect it; rank 0 records it)."""
        self._confirm(self.ranks.gather([0, *self._committed()], "confirming snapshots"))

    def snapshot_due(self, clock, index: int) -> bool:
        """The policy's decision after entry `index`, identical on every rank.

        The entries bound is decided here (every rank counts the same entries). The other
        bounds (seconds, log bytes, replay time) are measured per rank, so they are asked
        across ranks, OR-ed, once every `DECIDE_EVERY` indexes: one small collective per
        that many applies instead of one per apply, at the price of firing up to that
        many entries late."""
        policy = clock.policy
        if policy.entries is not None and clock.entries >= policy.entries:
            return True
        if self._by_index_only or index % DECIDE_EVERY:
            return False
        due = clock.due()
        return any(row[0] for row in self.ranks.gather([int(due)], "the snapshot policy"))

    def check_replicated(self, index: int) -> None:
        """RankDivergenceError on every rank when the replicated components differ across ranks."""
        compare_replicated(self.ranks, self._state, self.replicated, index)

    def _committed(self) -> tuple[int, int]:
        committed = self._snapshotter.committed
        return committed if committed is not None else (-1, -1)

    def _acknowledge(self, index: int) -> None:
        """Record durably, in this rank's own directory, that `index` is durable on every rank.

        Every rank keeps the record, so a rank whose directory is put back from an older
        copy is told apart by the others at the next open (replay/ranks/cut.py). Failing to
        write it only warns, as for the global record: the others would otherwise wait for
        this rank in the next collective, and any other rank's record still says it."""
        if index <= self.acknowledged:
            return
        try:
            layout.write_acknowledged(self._rank_root, index)
        except OSError as exc:
            warnings.warn(f"rank {self.ranks.rank}: could not record the acknowledged index {index} in "
                          f"{paths.acknowledged_file(self._rank_root)}: {exc}", RuntimeWarning, stacklevel=4)
            return
        self.acknowledged = index

    def _confirm(self, rows: list[list[int]], acknowledge: bool = True) -> None:
        indexes = {row[1] for row in rows}
        if len(indexes) != 1:
            return  # some rank lacks the newest snapshot (a failed save): the older one stays protected
        index = indexes.pop()
        if index < 0 or (self.confirmed is not None and index <= self.confirmed):
            return
        self.confirmed = index
        self._snapshotter.protected = index
        if acknowledge:
            self._acknowledge(index)  # every rank committed a snapshot at index: its log was durable there
        if self.ranks.rank == 0:
            failpoints.hit("group.before_global_record")
            try:
                layout.write_global_record(self.root, index, [f"{index}-{row[2]}" for row in rows])
                layout.remove_global_records(self.root, keep={info.index for info in self._store.list()} | {index})
            except OSError as exc:
                # An audit record: recovery never reads it, so failing to write it must not
                # stop rank 0 alone (the others would wait for it in the next collective).
                warnings.warn(f"{self.root}: could not write the global record of snapshot {index}: {exc}",
                              RuntimeWarning, stacklevel=3)
