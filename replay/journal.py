"""Journal: the event-sourced state a user touches — apply ops write-ahead, snapshot, recover.

A Journal is used from one thread at a time and never across fork(). Its snapshots are
taken by a `Snapshotter` (replay/snapshotter.py), whose follow-up thread commits, prunes
and compacts while training goes on; when is decided by its `Cadence` (replay/cadence.py).
What the ranks must agree on goes through its `Group` (replay/group.py), the replica
through its link (replay/replica/link.py), and it is built by replay/assembly.py. The
numbered invariants cited here are in replay/INVARIANTS.md.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Mapping

import snapshots
from eventlog import Archive, EventLog, decode_payload, encode_payload

from . import assembly, components
from .cadence import Cadence
from .counting import StepCounter
from .determinism import state_digest
from .envelope import DIGEST_OP, unwrap, wrap
from .errors import JournalPoisonedError, ReplayError
from .group import Group
from .guards import Guards
from .ops import Ops
from .policies import Every, PolicyClock
from .preemption import Preemption
from .recorded import NoRecorder
from .recovery import RecoveryReport, Replayer
from .rng_check import GlobalRngCheck
from .snapshotter import Snapshotter
from .supervisor.link import NoSupervisor, supervised_open

DEFAULT_POLICY = Every(entries=1000, seconds=600)


class Journal:
    """Event-sourced state: ``apply`` appends an op to the log, then applies it to the live state.

    Open with `Journal.open`; see its contract. Attributes: ``state`` (the components),
    ``ops``, ``log`` (the EventLog), ``snapshots`` (the SnapshotStore), ``recovery``
    (RecoveryReport of the open), ``index`` (last applied entry), ``last_snapshot_error``.

    One directory holds everything (a multi-rank journal: one such directory per rank)::

        DIR/log/               the eventlog (every applied op, in order, checksum-chained)
        DIR/snapshots/         the snapshot store (each snapshot's meta records its last applied index)
        DIR/environment.json   the machine and library fingerprint the journal was created in
                               (replay.environment; compared at each open)
        DIR/replica.json       with replica=: which owner this journal writes the replica as, or
                               which head it was restored from (replay/replica/FORMAT.md, "Fencing")
        DIR/supervisor/        replay run's heartbeat and crash records (replay.supervisor; a
                               multi-rank journal's are in the group's directory)

    A multi-rank journal (group=) holds one directory per rank beside the group's records::

        DIR/rank-<r>/                    rank r's journal, laid out as above, plus:
        DIR/rank-<r>/rank.json           its rank and the world size that created it
        DIR/rank-<r>/acknowledged.json   the newest index this rank knows durable on every rank
        DIR/group/                       rank 0's global records of the snapshots every rank
                                         committed (audits only; replay.ranks.layout)
    """

    @classmethod
    @supervised_open
    def open(
        cls,
        path: str | os.PathLike,
        *,
        state: Mapping[str, Any],
        ops: Ops,
        snapshot: Every = DEFAULT_POLICY,
        durability: str = "group",
        deterministic: bool = False,
        digest_every: int | None = None,
        keep_last: int = 3,
        keep_log: bool = False,
        async_snapshots: bool = True,
        progress: bool | None = None,
        device=None,
        takeover: bool = False,
        snapshot_on_close: bool = True,
        archive: Archive | None = Archive(),
        preemption: Preemption | None = None,
        environment: str = "warn",
        group=None,
        replicated: list[str] | None = None,
        replica: str | None = None,
        replica_options: dict | None = None,
        ship_interval: float = 1.0,
        max_replica_lag: float | None = None,
        replica_keep_extra: int = 0,
        rng_check: str = "warn",
    ) -> "Journal":
        """Open (creating if needed) the journal at directory `path` and recover `state` in place.

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
                global RNG outside seeded_rng (a resume would not be exact), "strict"
                raises UnseededDrawError from that apply (its entry rolled back), "off"
                skips the check; costs and what is compared: replay/rng_check.py.
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

        Returns:
            The open Journal. ``journal.recovery`` says which snapshot was loaded (damaged
            newer ones are skipped and listed) and which entries were replayed, once each,
            in order. Errors name the failing index: UnknownOpError, VersionMismatchError,
            HandlerError, DivergenceError, eventlog.CorruptEntryError, RecoveryError;
            nothing is skipped. A refused open leaves the directory as it found it
            (invariant 7): eventlog.LockedError while another process writes it,
            snapshots.StateMismatchError when the state's layout differs from the snapshot's,
            EnvironmentMismatchError / environment.EnvironmentFileError (strict only).

        Example::

            >>> import tempfile, torch, replay
            >>> ops = replay.Ops()
            >>> @ops.op
            ... def add(state, *, value):
            ...     state["w"] += value
            >>> path = tempfile.mkdtemp()
            >>> with replay.Journal.open(path, state={"w": torch.zeros(2)}, ops=ops) as journal:
            ...     journal.apply("add", value=1.5)
            >>> with replay.Journal.open(path, state={"w": torch.zeros(2)}, ops=ops) as journal:
            ...     print(journal.recovery.snapshot_index, journal.count(), journal.state["w"].tolist())
            1 1 [1.5, 1.5]
        """
        return assembly.open_journal(
            cls, path, state=state, ops=ops, snapshot=snapshot, durability=durability, deterministic=deterministic,
            digest_every=digest_every, keep_last=keep_last, keep_log=keep_log, async_snapshots=async_snapshots,
            progress=progress, device=device, takeover=takeover, snapshot_on_close=snapshot_on_close,
            archive=archive, preemption=preemption, environment=environment, group=group, replicated=replicated,
            replica=replica, replica_options=replica_options, ship_interval=ship_interval,
            max_replica_lag=max_replica_lag, replica_keep_extra=replica_keep_extra, rng_check=rng_check)

    def __init__(self, root: Path, replayer: Replayer, log: EventLog, store: snapshots.SnapshotStore,
                 recovery: RecoveryReport, resources: contextlib.ExitStack, *, group: Group, replica,
                 policy: Every, digest_every: int | None, keep_log: bool, async_snapshots: bool,
                 snapshot_on_close: bool = True, archived: bool = True):
        """Use `Journal.open` (replay/assembly.py builds the parts). Takes over the opened `log`
        and `store` (`resources` releases them and the determinism guard) with `state` already
        recovered per `recovery`; `group` (replay.group) is what the ranks agree through,
        `replica` the replica link (replay.replica.link: a ReplicaLink or NoReplica), started
        once the journal is built."""
        self.path = root
        self.state = replayer.state
        self.ops = replayer.ops
        self.log = log
        self.snapshots = store
        self.recovery = recovery
        self._replayer = replayer
        self._guards = Guards(root)  # closed, poisoned, one thread, preemption (replay/guards.py)
        self._resources = resources
        self._digest_every = digest_every
        self._snapshot_on_close = snapshot_on_close
        self._index = recovery.replayed.stop - 1 if len(recovery.replayed) else recovery.snapshot_index
        clock = PolicyClock(policy)
        clock.add(len(recovery.replayed), 0, recovery.replay_seconds)
        self._steps = StepCounter(recovery.counts, recovery.uncounted)
        self._snapshotter = Snapshotter(
            root, log, store, self._capture, self._guards.guarded,
            keep_log=keep_log, asynchronous=async_snapshots, counts=self._steps.by_op, archived=archived)
        if recovery.snapshot is not None:
            self._snapshotter.covered = recovery.snapshot_index
            self._snapshotter.committed = (recovery.snapshot.index, recovery.snapshot.term)
        self._group = group
        group.attach(self._snapshotter)
        self._cadence = Cadence(self._snapshotter, store, group, clock, self._guards.collective)
        self._replica = replica
        self._link = NoSupervisor()  # replay run's heartbeat and crash records (set by open when supervised)
        self._handler_failed = False  # whether the exception leaving apply is the handler's (or its payload's)
        self._rng_check = GlobalRngCheck("off")  # open sets the one asked for
        self._recorder = NoRecorder()  # recorded scalars (replay.recorded); open sets a Recorder

    def _capture(self):
        """Stage the state for a snapshot; the recorded values of the entries it covers are made
        durable first, as replay from it will not recompute them (replay.recorded)."""
        self._recorder.write(sync=True)
        return components.capture(self.state, self._replayer.kinds)

    # ------------------------------------------------------------------ properties

    @property
    def index(self) -> int:
        """Index of the last applied log entry (0 before the first). Engine entries (digests,
        truncation records) have indexes too: count steps with `count()`, not this."""
        return self._index

    def count(self, op: str | None = None) -> int:
        """User entries applied so far: overall (op=None) or of op `op` (0 for an op never applied).

        Engine entries (digests, truncation records: every ``replay.``-prefixed op) never
        count, so ``for step in range(journal.count(), N)`` runs exactly the N - count
        missing steps after any number of resumes, with ``digest_every`` on or off. A
        handler that raised (its entry dropped, invariant 6) does not count. Survives
        recovery: snapshots record the counts, replay adds the entries it applies
        (replay.counting, including how a journal whose old snapshots predate them is
        counted).
        """
        return self._steps.count(op)

    @property
    def replica_index(self) -> int | None:
        """The newest index a restore from the replica alone reproduces the state at (None without a replica).

        It trails `index` by up to ``ship_interval`` seconds of entries (and by what is not
        yet durable); ``flush(replica=True)`` waits until it reaches the current index. It
        may go down after the log is truncated (a rolled-back entry)."""
        return self._replica.index

    @property
    def replica_status(self):
        """The replica's state (replay.replica.status.ReplicaStatus: index, lag in entries and
        seconds, fenced, last error, uploads); None without a replica."""
        return self._replica.status()

    def _settled(self) -> int:
        """What may ship: applied and durable (read by the shipper's thread)."""
        return min(self.log.durable_index, self._index)

    @property
    def rank(self) -> int:
        """This process's rank in the journal's group (0 for a single-process journal)."""
        return self._group.rank

    @property
    def world_size(self) -> int:
        """The number of ranks writing the journal (1 for a single-process journal)."""
        return self._group.size

    @property
    def durable_index(self) -> int:
        """Newest index of this rank's log that survives a power loss (see eventlog's durability
        modes); a multi-rank journal's global one is what `flush()` returns."""
        self._guards.check_usable()
        return self.log.durable_index

    @property
    def device(self):
        """Where payload tensors are moved before a handler sees them."""
        return self._replayer.device

    @property
    def last_snapshot_error(self) -> BaseException | None:
        """The newest snapshot failure (a policy snapshot's, or a follow-up's), None if none."""
        return self._snapshotter.last_error

    # ------------------------------------------------------------------ applying

    def apply(self, op: str, /, *, inputs: Any = None, **payload: Any) -> Any:
        """Append `op(**payload)` to the log, then apply it to the live state; return the handler's result.

        Args:
            op: a registered op name.
            inputs: unlogged data for a handler with an ``inputs`` parameter (a prefetched
                batch). None: the op's registered ``rebuild(**payload)`` makes them, as
                replay will, or the handler is called without ``inputs``. Never logged, so
                they must be a pure function of the payload (replay.ops' module doc);
                ``digest_every`` catches a live batch that differs from the rebuilt one.
            **payload: the handler's keyword arguments (tensors, msgpack values, nested
                dicts and lists of them); ``inputs`` is not a payload key.

        Returns:
            Whatever the handler returns (a loss, metrics; None for most handlers). The
            entry's index is ``journal.index`` afterwards, unless a digest entry followed
            it (``digest_every``), then it is ``journal.index - 1``. In group mode the
            entry is not yet durable; `flush()` waits.

        Raises:
            Before appending (nothing is appended): UnknownOpError for an unregistered op,
            TypeError (naming the op) for ``inputs=`` to a handler without an ``inputs``
            parameter, PayloadRejectedError when the payload does not bind to the
            handler's signature or the op's validator rejects it, TypeError when the log
            cannot encode it; whatever the op's inputs rebuild raises; with a replica,
            ReplicaLagError past ``max_replica_lag`` and ReplicaFencedError once another
            writer holds the replica (every later apply too: reopen without ``replica=``,
            or restore the replica elsewhere).
            A handler that raises: the entry is removed from the log, the state rolled back
            to the previous index (newest snapshot + replay), then the handler's exception
            is re-raised unchanged (invariant 6); if that cleanup fails,
            JournalPoisonedError. Multi-rank, the entry is removed but the state is not
            rolled back (that replay needs every rank): the journal refuses further work
            and every rank reopens. JournalPoisonedError once the log has failed a write;
            ClosedError after close; ConcurrentUseError while another thread is inside.

        The handler gets the payload with its tensors on the journal's device, decoded
        from the very bytes appended, as replay will give it (sequences come back as
        lists, so accept either). A policy snapshot it triggers never fails it.

        Example::

            >>> import tempfile, torch, replay
            >>> ops = replay.Ops()
            >>> @ops.op
            ... def scale(state, *, by):
            ...     state["w"].mul_(by)
            ...     return state["w"].sum().item()
            >>> journal = replay.Journal.open(tempfile.mkdtemp(), state={"w": torch.ones(3)}, ops=ops)
            >>> journal.apply("scale", by=2.0), journal.index, journal.state["w"].tolist()
            (6.0, 1, [2.0, 2.0, 2.0])
            >>> journal.close()
        """
        with self._guards.entered("apply"):
            try:
                return self._apply(op, inputs, payload)
            except BaseException as exc:
                # replay run's crash record: a handler that raised (or a payload it refused) is
                # the job's own failure; a fenced replica or a failed disk is not
                self._link.failed("applying", op, self._index + 1, exc, handler=self._handler_failed)
                raise
            finally:
                self._handler_failed = False

    def _apply(self, op: str, inputs: Any, payload: dict) -> Any:
        self._guards.check_usable()
        self._replica.gate(self.path, op, self._index)  # lag, fenced: refused before appending
        self._handler_failed = True  # until the entry is appended: a payload its op refuses
        spec = self.ops.check_payload(op, payload)
        if inputs is not None and not spec.takes_inputs:
            raise TypeError(f"op {op!r}: inputs= was given but its handler has no 'inputs' parameter "
                            "(inputs are handed to the handler, never logged)")
        # The handler gets what the log will give replay, decoded from the very bytes
        # appended: a numpy float32 arrives as the float replay reads, a payload tensor
        # is a fresh one (never an alias of the caller's reused buffer), a tuple a list.
        encoded = encode_payload(wrap(spec.version, payload))
        replayed = components.to_device(unwrap(self._index + 1, op, decode_payload(encoded))[1], self.device)
        inputs = spec.inputs_for(replayed, inputs)  # before appending: a failing rebuild leaves no entry
        self._handler_failed = False
        self._snapshotter.collect(block=False)
        index = self._guards.guarded(self._append_encoded, op, encoded)
        self._link.applying(op, index)
        started = time.perf_counter()
        try:
            drawn = self._rng_check.before()
            result = spec.call(self.state, replayed, inputs)
            self._rng_check.after(op, drawn)  # strict: raises, and the entry is rolled back
            if spec.record:  # replay.recorded; a bad value is rolled back like the handler's exception
                self._recorder.add(self.log.term, index, spec, result)
        except BaseException as exc:
            self._handler_failed = True
            self._roll_back(index, exc)
            raise
        self._index = index
        self._link.applied(index)
        self._steps.add(op)
        self._cadence.clock.add_entry(self.log.bytes_appended, time.perf_counter() - started)
        if self._digest_every is not None and index % self._digest_every == 0:
            self._append_digest()
        self._cadence.after_entry(self._index)
        return result

    def _append_encoded(self, op: str, encoded: bytes) -> int:
        return self.log.append(op, encoded=encoded)

    def _append_digest(self) -> None:
        started = time.perf_counter()
        digest = state_digest(self.state)
        self._index = self._guards.guarded(self.log.append, DIGEST_OP, wrap(1, {"digest": digest}))
        self._cadence.clock.add_entry(self.log.bytes_appended, time.perf_counter() - started)
        self._guards.collective(self._group.check_replicated, self._index)

    def _roll_back(self, index: int, cause: BaseException) -> None:
        """Undo entry `index` whose handler raised: drop it from the log, rebuild the state at index - 1.

        The log is truncated first, then the in-flight snapshot is waited for (invariant 8):
        its follow-up compacts only through snapshots, which never cover `index`. The
        rebuild restores a snapshot, which drops the failed handler's gradients first
        (components.forget_transient), so it replays on what a cold reopen would have
        (invariant 15).

        Whether the state is rebuilt is the group's call (Group.after_handler_error):
        multi-rank, the entry is dropped but the journal poisoned instead, as the rebuild's
        replay needs every rank (invariant 11); the handler's exception is re-raised."""
        try:
            self.log.truncate_after(index - 1)
            self._snapshotter.collect(block=True)
            self._guards.poison = self._group.after_handler_error(index, cause, functools.partial(
                self._replayer.recover, self.log, self.snapshots, at=index - 1, progress=False))
        except BaseException as exc:
            self._guards.poison = exc
            raise JournalPoisonedError(
                f"{self.path}: the handler of entry {index} raised ({type(cause).__name__}: {cause}) and rolling "
                f"back failed ({type(exc).__name__}: {exc}); the live state is not trustworthy. Reopen the journal."
            ) from exc

    # ------------------------------------------------------------------ durability and snapshots

    def flush(self, *, replica: bool = False, timeout: float | None = None) -> int:
        """Block until every applied entry is durable; return the durable index (== index).

        replica=True also waits (at most `timeout` seconds: TimeoutError) until the
        replica index reaches the current index, so a restore from the replica alone
        reproduces this state; ReplicaFencedError when another writer holds the replica,
        ReplicaLagError past ``max_replica_lag``, ValueError without a replica.

        Multi-rank: every rank's entries through its index are durable, and the value
        returned is the global durable index, the newest index durable on every rank (the
        same on every rank once each has flushed: what acknowledged means there). It also
        confirms, across ranks, the newest snapshot every rank has committed."""
        if replica:
            self._replica.check_waitable(self.path)
        with self._guards.entered("flush"):
            durable = self._flush()
            if replica:
                self._replica.wait(self._index, timeout)
            return durable

    def _flush(self) -> int:
        self._guards.check_usable()
        self._guards.guarded(self.log.flush)
        self._recorder.write(sync=True)
        self._snapshotter.collect(block=False)
        return self._guards.collective(self._group.flush, self.log.durable_index)

    def snapshot(self, *, wait: bool = False) -> Future:
        """Snapshot the state at the current index; return a future of its SnapshotInfo.

        Always a `concurrent.futures.Future` whose ``result()`` is the SnapshotInfo, once
        the snapshot is committed, the old ones pruned and (unless keep_log) the log
        compacted (invariant 4: into the archive through the newest snapshot, or without
        an archive through the oldest one retained). A snapshot still in flight is waited
        for first. If this journal already snapshotted the current index, the future
        holds that snapshot's info and nothing is written. The entries it covers are made
        durable before it is staged (invariant 2); the state may change as soon as this
        returns. With wait=True (or async_snapshots=False) the future is done on return,
        and a failure raises here instead of from ``result()``.
        """
        with self._guards.entered("snapshot"):
            self._guards.check_usable()
            return self._cadence.take(self._index, wait)

    # ------------------------------------------------------------------ lifecycle

    def close(self, *, snapshot: bool | None = None) -> None:
        """Wait for an in-flight snapshot, snapshot the last index, make every entry durable,
        release log and store. Idempotent.

        snapshot=None follows ``Journal.open(snapshot_on_close=...)`` (True by default):
        a blocking snapshot at the current index, skipped when one already exists there,
        so the run's final state is a snapshot and the next open replays nothing. It is
        incremental (unchanged chunks are not written again). Its failure is reported
        (``last_snapshot_error``, a RuntimeWarning) and close goes on: the log holds every
        entry. snapshot=True takes it whatever the option says and raises its failure
        (after releasing everything); snapshot=False skips it. Closing a poisoned
        journal releases everything, snapshots nothing and raises nothing new.

        Multi-rank: a collective call like the others (every rank closes), which confirms
        the final snapshot across ranks; RankFailureError (after releasing everything)
        when a peer is gone. Leaving a ``with`` block on an exception closes this rank
        alone, with no collective: the other ranks may be anywhere.
        """
        if self._guards.closed:
            return
        with self._guards.entered("close"):
            self._link.phase("closing", self._index)
            self._close(snapshot, strict=snapshot is True)

    def _close(self, snapshot: bool | None, strict: bool, together: bool = True,
               deadline: float | None = None, grace: float | None = None) -> None:
        """`strict`: a failing snapshot raises (after the release) instead of being reported.
        `together`: a multi-rank journal confirms its final snapshot with the other ranks
        (False when an exception is unwinding: the others may be anywhere). `deadline`
        (monotonic seconds, from a preemption's `grace`): the replica's last round gets what
        is left of it (replay.replica.link.final_round_timeout), never more."""
        if self._guards.closed:
            return
        try:
            if self._guards.poison is None:
                self._cadence.final(self._index, self._snapshot_on_close if snapshot is None else snapshot, strict)
                self._guards.guarded(self.log.flush)
                self._recorder.write(sync=True)
                if together:
                    self._guards.collective(self._group.flush, self.log.durable_index)
                self._replica.close(deadline, grace)  # one last round: the final snapshot too
        finally:
            self._release()

    def _stop_for_preemption(self) -> None:
        """A preemption signal's clean stop (replay/preemption.py): snapshot the last index, flush, release."""
        preemption = self._guards.preemption
        self._close(True, strict=False, deadline=preemption.deadline, grace=preemption.grace)

    def abandon(self) -> None:
        """Drop the journal as a killed process would: no flush, no final snapshot. Idempotent.

        Entries not yet durable may be lost, exactly as in a crash; the next open recovers
        the durable prefix. An in-flight snapshot is let finish first (its outcome is
        ignored): in one process its thread would otherwise race the next open's store,
        where a real kill would have ended it. For crash tests and `replay.testing`.
        """
        if self._guards.closed:
            return
        with self._guards.one_thread.entered("abandon"):
            self._snapshotter.abandon()
            self._release()

    def _release(self) -> None:
        """Stop the follow-up thread, then close the store, the log and the determinism guard.
        The first failure is raised unless the journal is already poisoned."""
        self._guards.closed = True
        self._link.close()
        self._guards.preemption.closed()  # the previous signal handlers come back
        self._replica.release()  # before the log closes under it (idempotent after close's round)
        self._recorder.close()  # what close did not write is lost, as in a crash: replay recomputes it
        self._snapshotter.close()
        try:
            self._resources.close()
        except Exception:
            if self._guards.poison is None:
                raise

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if self._guards.closed:
            return
        if kind is None:
            self.close()
            return
        # The other ranks may be anywhere (in a collective of their own, or dead): close
        # locally, with no collective that could pair with the wrong one.
        with self._guards.entered("close"):
            self._link.phase("closing", self._index)
            self._close(None, strict=False, together=False)

    def __repr__(self) -> str:
        state = "closed" if self._guards.closed else ("poisoned" if self._guards.poison else f"index {self._index}")
        return f"<Journal {self.path} {state}>"


__all__ = ["Journal", "ReplayError"]
