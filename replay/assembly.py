"""Building an open Journal: the one place that knows which group and which replica it has.

`Journal.open` validates nothing itself and calls `open_journal`, which, in order:
checks the options (ValueError / TypeError before anything is touched); for a group,
wraps it (replay.ranks.collectives) and refuses what a multi-rank journal cannot take;
opens the replica link (`NoReplica` without one) and restores an empty directory from
it; joins the group's directory (replay.ranks.coordinator.join); opens and recovers the
log and snapshots (replay.opening); builds the `Group` (`Solo` or a `Coordinator`) and
the Journal's other parts (`journal_parts`: its guards, step counter, snapshotter,
cadence, applier and closer, wired to each other) and hands them to the Journal; then
takes the initial snapshot of a new journal, installs the preemption handler, starts
shipping and decides the replica claim. A multi-rank open ends with every rank learning
whether any rank failed (all raise). On any failure, everything opened so far is
released and the error raised.

Every keyword of `Journal.open` is documented here, in `open_journal`'s Args section,
beside the code that checks and assembles it; `keywords_documented` puts that section
into `Journal.open`'s docstring, so help(Journal.open) shows the whole contract.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from pathlib import Path

import torch

from . import components, layout
from .applier import Applier
from .cadence import Cadence
from .closer import Closer
from .counting import StepCounter
from .group import Solo
from .guards import Guards
from .opening import check_options, open_and_recover, refuse_to_reinitialise
from .policies import PolicyClock
from .preemption import PreemptionHandler
from .ranks import layout as ranks_layout
from .ranks.collectives import Collectives
from .ranks.coordinator import Coordinator, compare_replicated, join, replicated_components, warn_about_bucket_rebuild
from .recovery import Replayer
from .replica.link import NoReplica, ReplicaLink
from .recorded import NoRecorder, Recorder
from .rng_check import GlobalRngCheck
from .snapshotter import Snapshotter


def open_journal(cls, path, *, state, ops, snapshot, durability, deterministic, digest_every, keep_last, keep_log,
                 async_snapshots, progress, device, takeover, snapshot_on_close, archive, preemption, environment,
                 group, replicated, replica, replica_options, ship_interval, max_replica_lag, replica_keep_extra,
                 rng_check, snapshot_compression="none", snapshot_packs=True):
    """`Journal.open`'s work: a `cls` instance, open and recovered. `Journal.open`'s docstring
    is the contract, and its Args section is this one (`keywords_documented`), kept here,
    beside the code that checks and assembles the keywords.

    Args:
        path: the journal directory (created with its parents when missing).
        state: str -> component (a state_dict object, a tensor or a plain dict); the
            live objects are restored in place, so references to them stay valid.
            TypeError otherwise. For a new directory, `state` as given is the initial
            state; it is snapshotted at index 0 before open returns, so replays never
            depend on how it was built.
        ops: the registered handlers (`replay.Ops`).
        snapshot: the `Every` policy for automatic snapshots.
        durability: the eventlog mode ("group" by default: apply overlaps the fsync).
        deterministic: torch.use_deterministic_algorithms(True) while open (warns
            about CUBLAS_WORKSPACE_CONFIG on CUDA).
        digest_every: after every user entry whose index is a multiple of N, append a
            digest entry that replay re-checks.
        keep_last: snapshots retained (plus the oldest, the initial state, while the
            log keeps its history: with an archive or keep_log).
        keep_log: never compact the log: every entry stays in LMDB.
        archive: where compaction moves the log's entries (passed to EventLog.open).
            An `eventlog.Archive` (the default keeps everything): the log is compacted
            through the newest snapshot, its history sealed into archive segments that
            recovery and every reader still read, so a damaged newest snapshot is passed
            over by replaying archived entries. None: compaction deletes entries, so it
            goes only through the oldest retained snapshot (invariant 4).
        preemption: a `replay.Preemption` catches SIGTERM/SIGUSR1: the apply in progress
            finishes, then snapshot, flush, close, and exit (status 128 + signum) or
            raise PreemptedError, within its grace period (replay/preemption.py). Only
            from the main thread (ValueError otherwise); the previous handlers come
            back on close. None (default): signals are left alone.
        environment: the journal records its environment when created
            (replay.environment); on recovery, "warn" puts the differences in
            ``journal.recovery.environment`` and warns, "strict" refuses with
            EnvironmentMismatchError before anything is written, "ignore" skips it.
        async_snapshots: False makes policy snapshots block the apply that triggers them.
        rng_check: "warn" (default) warns once per op when a handler draws from the
            global RNG outside seeded_rng (a resume would not be exact), comparing
            the first applies of each op and then a random sample of them; "strict"
            compares every apply and raises UnseededDrawError from it (its entry
            rolled back), "off" skips the check; costs, sampling and what is
            compared: replay/rng_check.py.
        snapshot_compression: how new snapshot chunks are stored: "none" (default:
            raw, a load is a read and a hash into the live tensor, 0.9-1.2x safetensors
            against about 3x) or "zstd" (byte-grouped and compressed, about a quarter
            fewer bytes for trained weights, half for optimizer-heavy states; README
            "Performance"). A store mixes both; ValueError for another value.
        snapshot_packs: True (the default) writes each snapshot's new chunks into one
            pack file with one fsync (snapshots/FORMAT.md); False writes one file, fsync
            and rename per chunk, as journals before packs did. Readers take both forms,
            so it can be switched either way on a journal.
        progress: a replay progress bar (None: only for long replays on a TTY).
        device: where payload tensors go before a handler sees them (default: the
            device of the first tensor in the state).
        takeover: passed to EventLog.open (fence a hung writer).
        snapshot_on_close: `close()` snapshots the last index (incremental; skipped when
            a snapshot exists there), so a run's final state is a snapshot and the next
            open replays nothing. `abandon()` never does.
        group: None (default), a single-process journal. A torch.distributed process
            group (e.g. ``torch.distributed.group.WORLD``): a multi-rank journal
            (replay.ranks). Every rank calls open, apply, flush, snapshot and close in
            the same order with the same ops (SPMD), its payloads its own; each rank
            owns ``path/rank-<r>/`` and never reads another rank's files. Open recovers
            the group to a common cut and replays in lockstep (replay/ranks/recovery.py)
            and returns on every rank once all have opened; ``flush()`` returns the
            global durable index. WorldSizeError when `path` was created by a group of
            another size; RankFailureError when another rank failed to open (its error
            is quoted) or a peer died. Not with `preemption` (ValueError).
        replica: None (default), or a replica URL (``s3://bucket/prefix``,
            ``file:///mnt/shared/run1``; replay.replica): the journal is replicated
            there in the background (replay/replica/FORMAT.md), never blocking
            `apply`: snapshot chunks and manifests, and the settled log as sealed
            segments every `ship_interval` seconds. A missing or empty `path` with a
            replica that holds a journal is first restored from it (a new machine):
            the journal then recovers the state at the replica index and goes on
            writing. Opening decides the claim on the replica before it returns
            (FORMAT.md, "Fencing"): the journal that last wrote it, or a directory
            just restored from its current head, takes it for this writer's term (a
            stale writer elsewhere is fenced); anyone else gets ReplicaFencedError
            naming the replica's owner and index and this copy's. A journal fenced
            while open raises ReplicaFencedError from `apply` (before appending) and
            `flush(replica=True)`. A multi-rank journal replicates rank r under
            ``URL/rank-<r>``. The local journal stays the source of truth: an
            unreachable replica only grows the lag (`replica_status`), and at the
            open of an existing journal it gives a RuntimeWarning after at most
            replication.CLAIM_TIMEOUT seconds, the claim being retried in the
            background.
        replica_options: options for the replica's store (S3: endpoint_url, region,
            access_key_id, secret_access_key, timeouts; replay.replica.objects).
        ship_interval: seconds between shipping rounds (counted from the end of one):
            the loss window when the machine is lost is about this plus one round.
        max_replica_lag: None, or seconds: `apply` raises ReplicaLagError (before
            appending) while the replica lags more than that.
        replica_keep_extra: the replica keeps the snapshots local retention keeps (and
            the log segments a restore from them needs) plus this many older ones; the
            rest is garbage-collected by the shipper (replay/replica/FORMAT.md).
        replicated: names of components identical on every rank; DDP modules are
            included automatically. With ``digest_every``, their digest is compared
            across ranks at each digest entry, live and on replay
            (RankDivergenceError, a DivergenceError, naming the ranks that differ).
    """
    check_options(snapshot=snapshot, digest_every=digest_every, preemption=preemption,
                  environment_policy=environment)
    if snapshot_compression not in ("zstd", "none"):  # before anything is created
        raise ValueError(f"snapshot_compression must be 'zstd' or 'none', got {snapshot_compression!r}")
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
    restored = link.restore_if_empty(root if ranks is None else layout.rank_dir(root, ranks.rank))
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
            keep_log=keep_log, ranks=ranks, store_options={"compression": snapshot_compression,
                                                           "packs": bool(snapshot_packs)})
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
    journal = cls(root, replayer, log, store, recovery, **journal_parts(
        root, replayer, log, store, recovery, resources, group=agreed, replica=link, policy=snapshot,
        digest_every=digest_every, keep_log=keep_log, async_snapshots=async_snapshots,
        snapshot_on_close=snapshot_on_close, archived=archive is not None, rng_check=rng, recorder=recorder))
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
            journal._guards.preemption = PreemptionHandler(preemption, journal._closer.stop_for_preemption,
                                                           journal._guards.one_thread.busy, str(root))
            journal._guards.preemption.install()
        link.start(root, log, store, journal._applier.settled, interval=ship_interval, max_lag=max_replica_lag,
                   keep_extra=replica_keep_extra)
        link.await_claim(root, log.last_index,  # won, or ReplicaFencedError
                         max((i for i, _ in recovery.truncated), default=0))
    except BaseException as exc:
        journal._closer.release()
        if ranks is not None and isinstance(exc, Exception):
            ranks.agree(exc, "opening the journal")  # the others raise too; this re-raises exc
        raise
    if ranks is not None:
        try:
            ranks.agree(None, "opening the journal")  # no rank applies before every rank has opened
        except BaseException:
            journal._closer.release()
            raise
    return journal


def journal_parts(root, replayer, log, store, recovery, resources, *, group, replica, policy, digest_every: int | None,
                  keep_log: bool, async_snapshots: bool, snapshot_on_close: bool, archived: bool, rng_check,
                  recorder=None) -> dict:
    """The Journal's parts (its keyword arguments), wired to each other: the opened `log` and
    `store` (`resources` releases them and the determinism guard) with the state already
    recovered per `recovery`; `group` is what the ranks agree through (replay.group),
    `replica` the replica link (NoReplica or ReplicaLink), started once the journal is built;
    `recorder` keeps the scalars recording ops return (replay.recorded; None: nothing kept)."""
    recorder = NoRecorder() if recorder is None else recorder
    guards = Guards(root)  # closed, poisoned, one thread, preemption
    clock = PolicyClock(policy)
    clock.add(len(recovery.replayed), 0, recovery.replay_seconds)
    steps = StepCounter(recovery.counts, recovery.uncounted)

    def capture():
        # The recorded values of the entries a snapshot covers are made durable first, as
        # replay from it will not recompute them (replay.recorded).
        recorder.write(sync=True)
        return components.capture(replayer.state, replayer.kinds)

    snapshotter = Snapshotter(
        root, log, store, capture, guards.guarded,
        keep_log=keep_log, asynchronous=async_snapshots, counts=steps.by_op, archived=archived)
    if recovery.snapshot is not None:
        snapshotter.covered = recovery.snapshot_index
        snapshotter.committed = (recovery.snapshot.index, recovery.snapshot.term)
    group.attach(snapshotter)
    cadence = Cadence(snapshotter, store, group, clock, guards.collective)
    applier = Applier(root, replayer, log, store, guards=guards, snapshotter=snapshotter, cadence=cadence,
                      group=group, replica=replica, steps=steps, rng_check=rng_check, recorder=recorder, digest_every=digest_every,
                      index=recovery.replayed.stop - 1 if len(recovery.replayed) else recovery.snapshot_index)
    closer = Closer(guards=guards, applier=applier, cadence=cadence, snapshotter=snapshotter, group=group,
                    replica=replica, log=log, resources=resources, snapshot_on_close=snapshot_on_close)
    return {"guards": guards, "steps": steps, "snapshotter": snapshotter, "cadence": cadence, "group": group,
            "replica": replica, "applier": applier, "closer": closer}


def keywords_documented(open_function):
    """`open_function` (`Journal.open`) with its docstring's Args paragraph (a pointer here)
    replaced by `open_journal`'s Args section, so help(Journal.open) tells every keyword.
    ValueError at import when either docstring has lost the section this relies on. Under
    ``python -OO`` (no docstrings) `open_function` is returned as it is."""
    if open_function.__doc__ is None or open_journal.__doc__ is None:
        return open_function
    own = inspect.cleandoc(open_function.__doc__)
    ours = inspect.cleandoc(open_journal.__doc__)
    pointer = own.find("\nArgs: ")
    if pointer < 0 or "\nReturns:" not in own[pointer:] or "\nArgs:\n" not in ours:
        raise ValueError("Journal.open's docstring needs an 'Args: ' paragraph before 'Returns:', and "
                         "open_journal's an 'Args:' section")
    returns = own.index("\nReturns:", pointer)
    args = ours[ours.index("\nArgs:\n") + 1:].rstrip()
    open_function.__doc__ = f"{own[:pointer + 1]}{args}\n{own[returns:]}"
    return open_function
