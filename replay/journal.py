"""Journal: the event-sourced state a user touches — apply ops write-ahead, snapshot, recover.

A Journal is used from one thread at a time and never across fork(). It holds its parts
and delegates, each part with one job: the apply path with its rollback and digest
entries is its `Applier` (replay/applier.py), how it ends (close, a preemption's stop,
abandon, the release) its `Closer` (replay/closer.py), its usability (one thread,
closed, poisoned) its `Guards` (replay/guards.py). Its snapshots are taken by a
`Snapshotter` (replay/snapshotter.py), whose follow-up thread commits, prunes and
compacts while training goes on; when is decided by its `Cadence` (replay/cadence.py).
What the ranks must agree on goes through its `Group` (replay/group.py), the replica
through its link (replay/replica/link.py), and it is built by replay/assembly.py. The
numbered invariants cited here are in replay/INVARIANTS.md.
"""

from __future__ import annotations

import os
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Mapping

import snapshots
from eventlog import Archive, EventLog

from . import assembly
from .applier import Applier
from .cadence import Cadence
from .closer import Closer
from .counting import StepCounter
from .errors import ReplayError
from .group import Group
from .guards import Guards
from .ops import Ops
from .policies import Every
from .preemption import Preemption
from .recovery import RecoveryReport, Replayer
from .snapshotter import Snapshotter
from .supervisor.link import supervised_open

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
    @assembly.keywords_documented  # the Args section (replay/assembly.py) joins this docstring
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
        snapshot_compression: str = "none",
        snapshot_packs: bool = True,
    ) -> "Journal":
        """Open (creating if needed) the journal at directory `path` and recover `state` in place.

        Args: every keyword's contract is written beside the code that checks and
        assembles the keywords (replay/assembly.py, `open_journal`); help(Journal.open)
        shows it here, in full.

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
        keywords = dict(locals())  # exactly this signature's parameters: open_journal takes each by name
        del keywords["cls"], keywords["path"]
        return assembly.open_journal(cls, path, **keywords)

    def __init__(self, root: Path, replayer: Replayer, log: EventLog, store: snapshots.SnapshotStore,
                 recovery: RecoveryReport, *, guards: Guards, steps: StepCounter, snapshotter: Snapshotter,
                 cadence: Cadence, group: Group, replica, applier: Applier, closer: Closer):
        """Use `Journal.open`: replay/assembly.py opens the `log` and the `store`, recovers the
        state per `recovery` and builds the parts (`journal_parts`), each with its one job
        (module doc). The journal holds them, answers from them and delegates to them; it
        never asks which `group` (replay.group) or `replica` (replay.replica.link) it holds."""
        self.path = root
        self.state = replayer.state
        self.ops = replayer.ops
        self.log = log
        self.snapshots = store
        self.recovery = recovery
        self._replayer = replayer
        self._guards = guards
        self._steps = steps
        self._snapshotter = snapshotter
        self._cadence = cadence
        self._group = group
        self._replica = replica
        self._applier = applier
        self._closer = closer

    @property
    def _link(self):
        """replay run's heartbeat and crash records (replay.supervisor.link), which the apply
        path and the closing report to; `supervised_open` sets it once the journal is open."""
        return self._applier.link

    @_link.setter
    def _link(self, link) -> None:
        self._applier.link = link
        self._closer.link = link

    # ------------------------------------------------------------------ properties

    @property
    def index(self) -> int:
        """Index of the last applied log entry (0 before the first). Engine entries (digests,
        truncation records) have indexes too: count steps with `count()`, not this."""
        return self._applier.index

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
        lists, so accept either); a payload of plain scalars (None, bool, int, float,
        str) decodes to itself and is handed over as given. A policy snapshot it
        triggers never fails it.

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
        return self._guards.run("apply", self._applier.apply, op, inputs, payload)

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
            self._guards.check_usable()
            self._guards.guarded(self.log.flush)
            self._applier.recorder.write(sync=True)
            self._snapshotter.collect(block=False)
            durable = self._guards.collective(self._group.flush, self.log.durable_index)
            if replica:
                self._replica.wait(self._applier.index, timeout)
            return durable

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
            return self._cadence.take(self._applier.index, wait)

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
            self._closer.close(snapshot, strict=snapshot is True)

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
            self._closer.abandon()

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
            self._closer.close(None, strict=False, together=False)

    def __repr__(self) -> str:
        state = "closed" if self._guards.closed else ("poisoned" if self._guards.poison else f"index {self.index}")
        return f"<Journal {self.path} {state}>"


__all__ = ["Journal", "ReplayError"]
