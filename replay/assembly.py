"""Building an open Journal: the one place that knows which group and which replica it has.

`Journal.open` validates nothing itself and calls `open_journal`, which, in order:
checks the options (ValueError / TypeError before anything is touched); for a group,
wraps it (replay.ranks.collectives) and refuses what a multi-rank journal cannot take;
opens the replica link (`NoReplica` without one) and restores an empty directory from
it; joins the group's directory (replay.ranks.coordinator.join); opens and recovers the
log and snapshots (replay.opening); builds the `Group` (`Solo` or a `Coordinator`) and
hands every part to the Journal; then takes the initial snapshot of a new journal,
installs the preemption handler, starts shipping and decides the replica claim. A
multi-rank open ends with every rank learning whether any rank failed (all raise).
On any failure, everything opened so far is released and the error raised.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import torch

from . import components
from .group import Solo
from .opening import check_options, open_and_recover, refuse_to_reinitialise
from .preemption import PreemptionHandler
from .ranks import layout as ranks_layout
from .ranks.collectives import Collectives
from .ranks.coordinator import Coordinator, compare_replicated, join, replicated_components, warn_about_bucket_rebuild
from .recorded import NoRecorder, Recorder
from .recovery import Replayer
from .replica.link import NoReplica, ReplicaLink
from .rng_check import GlobalRngCheck


def open_journal(cls, path, *, state, ops, snapshot, durability, deterministic, digest_every, keep_last, keep_log,
                 async_snapshots, progress, device, takeover, snapshot_on_close, archive, preemption, environment,
                 group, replicated, replica, replica_options, ship_interval, max_replica_lag, replica_keep_extra,
                 rng_check):
    """`Journal.open` (its docstring is the contract): a `cls` instance, open and recovered."""
    check_options(snapshot=snapshot, digest_every=digest_every, preemption=preemption,
                  environment_policy=environment)
    kinds = components.check_state(state)
    rng = GlobalRngCheck(rng_check, str(path))  # ValueError before anything is created
    root = Path(path)
    ranks = None
    if group is None:
        ranks_layout.refuse_single_process(root)
    else:
        if preemption is not None:
            raise ValueError("preemption= is not supported with group= (the ranks would stop at different calls)")
        ranks = Collectives(group)
        replicated = replicated_components(state, replicated)
        warn_about_bucket_rebuild(state, ranks.size)
    link = NoReplica() if replica is None else ReplicaLink.open(replica, replica_options,
                                                               None if ranks is None else ranks.rank)
    restored = link.restore_if_empty(root if ranks is None else ranks_layout.rank_dir(root, ranks.rank))
    replayer = Replayer(ops, state, torch.device(device) if device is not None else None, kinds)
    recorder = NoRecorder()
    try:
        if ranks is not None:
            root = join(ranks, root)
            replayer.on_digest = functools.partial(compare_replicated, ranks, state, replicated)  # invariant 13
        refuse_to_reinitialise(root)
        root.mkdir(parents=True, exist_ok=True)
        recorder = Recorder(root)  # replay.recorded: each rank records its own, in its directory
        replayer.on_result = recorder.replayed
        log, store, recovery, resources = open_and_recover(
            root, replayer, keep_last=keep_last, durability=durability, takeover=takeover,
            deterministic=deterministic, progress=progress, archive=archive, environment_policy=environment,
            keep_log=keep_log, ranks=ranks)
    except BaseException:
        link.release()
        recorder.close()
        raise
    recovery.restored = restored
    replayer.on_result = None  # a later rollback replays entries whose values are already recorded
    if ranks is None:
        agreed = Solo()
    else:
        agreed = Coordinator(ranks, Path(path), state, replicated, snapshot, store,
                             recovery.snapshot_index if recovery.snapshot is not None else None)
        replayer.on_digest = agreed.check_replicated  # a rollback's replay: a test can wrap it
    journal = cls(root, replayer, log, store, recovery, resources, group=agreed, replica=link, policy=snapshot,
                  digest_every=digest_every, keep_log=keep_log, async_snapshots=async_snapshots,
                  snapshot_on_close=snapshot_on_close, archived=archive is not None)
    journal._rng_check = rng
    journal._recorder = recorder
    if recovery.uncounted:
        warnings.warn(f"{root}: {recovery.uncounted} entries under a snapshot that predates step counts are no "
                      "longer in the log; journal.count() counts them as user entries (replay.counting)",
                      RuntimeWarning, stacklevel=3)
    try:
        if recovery.snapshot is None and log.last_index == 0:
            # The initial state is the base every replay starts from; persisting it means
            # a user who builds it differently next time (another random init) still
            # recovers the same bytes.
            journal._snapshotter.take(0, blocking=True)
        if preemption is not None:
            journal._guards.preemption = PreemptionHandler(preemption, journal._stop_for_preemption,
                                                           journal._guards.one_thread.busy, str(root))
            journal._guards.preemption.install()
        link.start(root, log, store, journal._settled, interval=ship_interval, max_lag=max_replica_lag,
                   keep_extra=replica_keep_extra)
        link.await_claim(root, log.last_index,  # won, or ReplicaFencedError
                         max((i for i, _ in recovery.truncated), default=0))
    except BaseException as exc:
        journal._release()
        if ranks is not None and isinstance(exc, Exception):
            ranks.agree(exc, "opening the journal")  # the others raise too; this re-raises exc
        raise
    if ranks is not None:
        try:
            ranks.agree(None, "opening the journal")  # no rank applies before every rank has opened
        except BaseException:
            journal._release()
            raise
    return journal
