"""Journal: the event-sourced state a user touches — apply ops write-ahead, snapshot, recover.

One directory holds everything::

    DIR/log/         the eventlog (every applied op, in order, checksum-chained)
    DIR/snapshots/   the snapshot store (each snapshot's meta records its last applied index)

A Journal is used from one thread at a time and never across fork().
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
import warnings
from pathlib import Path
from typing import Any, Mapping

import snapshots
import torch
import eventlog
from eventlog import EventLog, FormatError, LockedError, LogPoisonedError, decode_payload, encode_payload

from . import components, failpoints
from .determinism import DeterministicGuard, state_digest
from .envelope import DIGEST_OP, unwrap, wrap
from .errors import ConcurrentUseError, ClosedError, JournalPoisonedError, RecoveryError, ReplayError
from .ops import Ops
from .policies import Every, PolicyClock
from .recovery import RecoveryReport, Replayer, log_checksum_at, preflight, recover, snapshot_meta

DEFAULT_POLICY = Every(entries=1000, seconds=600)


class Journal:
    """Event-sourced state: ``apply`` appends an op to the log, then applies it to the live state.

    Open with `Journal.open`; see its contract. Attributes: ``state`` (the components),
    ``ops``, ``log`` (the EventLog), ``snapshots`` (the SnapshotStore), ``recovery``
    (RecoveryReport of the open), ``index`` (last applied entry).
    """

    @classmethod
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
    ) -> "Journal":
        """Open (creating if needed) the journal at directory `path` and recover `state` in place.

        - A new directory: `state` as given is the initial state; it is snapshotted at
          index 0 before open returns, so replays never depend on how it was built.
        - An existing one: the newest snapshot that verifies is loaded into the live
          components in place (damaged newer ones are skipped and reported), then every
          later entry is replayed through `ops`, once each, in order. Errors name the
          failing index: UnknownOpError, VersionMismatchError, HandlerError,
          DivergenceError, eventlog.CorruptEntryError, RecoveryError. Nothing is skipped.
        - state: str -> component (state_dict object, tensor or plain dict); TypeError otherwise.
        - snapshot: the Every policy; async_snapshots=False makes policy snapshots block.
        - durability: the eventlog mode ("group" by default: apply overlaps the fsync).
        - deterministic=True: torch.use_deterministic_algorithms(True) while open (warns
          about CUBLAS_WORKSPACE_CONFIG on CUDA).
        - digest_every=N: after every user entry whose index is a multiple of N, append a
          digest entry that replay re-checks.
        - keep_last: snapshots retained; keep_log=True never compacts the log (audit).
        - device: where payload tensors go before a handler sees them (default: the
          device of the first tensor in the state).
        - progress: a replay progress bar (None: only for long replays on a TTY).
        - takeover: passed to EventLog.open (fence a hung writer).
        """
        if digest_every is not None and (not isinstance(digest_every, int) or digest_every < 1):
            raise ValueError(f"digest_every must be a positive int or None, got {digest_every!r}")
        if not isinstance(snapshot, Every):
            raise TypeError(f"snapshot must be a replay.Every policy, got {type(snapshot).__name__}")
        kinds = components.check_state(state)
        root = Path(path)
        refuse_to_reinitialise(root)
        root.mkdir(parents=True, exist_ok=True)
        journal = cls.__new__(cls)
        journal._init(root, state, kinds, ops, snapshot, digest_every, keep_log, async_snapshots, device)
        journal._guard = None
        try:
            if deterministic:
                journal._guard = DeterministicGuard(any(
                    isinstance(t, torch.Tensor) and t.is_cuda for _, t in components.leaves(state)))
            journal.snapshots = snapshots.SnapshotStore(root / "snapshots", keep_last=keep_last,
                                                        failpoint=failpoints.hit)
            # Everything that can be refused (a live writer, a snapshot the state cannot
            # take, an unknown op) is checked before the log's term is bumped: a failed
            # open must leave the journal as it found it.
            loaded = journal._preflight(takeover)
            journal.log = EventLog.open(root / "log", durability=durability, takeover=takeover)
            journal._recover(progress, loaded)
        except BaseException:
            journal._release()
            raise
        return journal

    def _init(self, root, state, kinds, ops, policy, digest_every, keep_log, async_snapshots, device):
        self.path = root
        self.state = state
        self.ops = ops
        self._kinds = kinds
        self._device = torch.device(device) if device is not None else components.default_device(state)
        self._replayer = Replayer(ops, state, self._device)
        self._clock = PolicyClock(policy)
        self._digest_every = digest_every
        self._keep_log = keep_log
        self._async = async_snapshots
        self._pending = None  # the in-flight snapshot: (index, future of its commit + prune + compaction)
        self._follow_up: ThreadPoolExecutor | None = None
        self._snapshot_index = -1  # index of the newest snapshot started by this journal
        self._poison: BaseException | None = None
        self._closed = False
        self._index = 0
        self._bytes_counted = 0
        self._busy = threading.Lock()  # held by the thread inside a public call
        self._busy_thread: str | None = None
        self.log = None
        self.snapshots = None
        self.recovery = RecoveryReport()
        self.last_snapshot_error: BaseException | None = None

    def _preflight(self, takeover: bool) -> RecoveryReport | None:
        """Recovery's checks against a readonly view of an existing log; None for a new journal."""
        log_dir = self.path / "log"
        if not takeover and eventlog.writer_pid(log_dir) is not None:
            raise LockedError(f"{log_dir} is held by a live writer (pid {eventlog.writer_pid(log_dir)})")
        try:
            reader = EventLog.open(log_dir, readonly=True)
        except FormatError:
            return None  # no log yet, or its creation never completed: nothing was ever written
        with reader:
            return preflight(reader, self.snapshots, self.state, self._kinds, self.ops)

    def _recover(self, progress, loaded: RecoveryReport | None) -> None:
        self.recovery = recover(self.log, self.snapshots, self.state, self._kinds, self._replayer,
                                progress=progress, loaded=loaded)
        self._index = self.recovery.replayed.stop - 1 if len(self.recovery.replayed) else self.recovery.snapshot_index
        if self.recovery.snapshot is not None:
            self._snapshot_index = self.recovery.snapshot_index
        self._clock.add(len(self.recovery.replayed), 0, self.recovery.replay_seconds)
        if self.recovery.snapshot is None and self.log.last_index == 0:
            # The initial state is the base every replay starts from; persisting it means
            # a user who builds it differently next time (another random init) still
            # recovers the same bytes.
            self._start_snapshot(blocking=True)

    # ------------------------------------------------------------------ properties

    @property
    def index(self) -> int:
        """Index of the last applied entry (0 before the first; digest entries count)."""
        return self._index

    @property
    def durable_index(self) -> int:
        """Newest index that survives a power loss (see eventlog's durability modes)."""
        self._check_usable()
        return self.log.durable_index

    @property
    def device(self):
        """Where payload tensors are moved before a handler sees them."""
        return self._device

    # ------------------------------------------------------------------ applying

    def apply(self, op: str, /, **payload: Any) -> int:
        """Append `op(**payload)` to the log, then apply it to the live state; return its index.

        - Before appending: UnknownOpError for an unregistered op, PayloadRejectedError
          when the payload does not bind to the handler's signature or the op's validator
          rejects it; TypeError when the log cannot encode it. Nothing is appended then.
        - The handler gets the payload with its tensors on the journal's device, as replay
          will give it (sequences come back from the log as lists, so accept either).
        - A handler that raises: the entry is removed from the log, the state is rolled
          back to the previous index (newest snapshot + replay), then the handler's
          exception is re-raised unchanged. If that cleanup fails, JournalPoisonedError.
        - In group mode this returns before the entry is durable; `flush()` waits.
        - JournalPoisonedError once the log has failed a write; ClosedError after close.
        """
        with self._entered("apply"):
            return self._apply(op, payload)

    def _apply(self, op: str, payload: dict) -> int:
        self._check_usable()
        spec = self.ops.check_payload(op, payload)
        # The handler gets what the log will give replay, decoded from the very bytes
        # appended: a numpy float32 arrives as the float replay reads, a payload tensor
        # is a fresh one (never an alias of the caller's reused buffer), a tuple a list.
        encoded = encode_payload(wrap(spec.version, payload))
        replayed = unwrap(self._index + 1, op, decode_payload(encoded))[1]
        self._collect_snapshot(block=False)
        index = self._guarded(self._append_encoded, op, encoded)
        started = time.perf_counter()
        try:
            spec.handler(self.state, **components.to_device(replayed, self._device))
        except BaseException as exc:
            self._roll_back(index, exc)
            raise
        self._index = index
        self._clock.add(1, self._log_bytes_since_last_count(), time.perf_counter() - started)
        if self._digest_every is not None and index % self._digest_every == 0:
            self._append_digest()
        if self._clock.due() and self._pending is None:
            self._policy_snapshot()
        return index

    def _append_encoded(self, op: str, encoded: bytes) -> int:
        return self.log.append(op, encoded=encoded)

    def _policy_snapshot(self) -> None:
        """A snapshot the policy asked for. Its failure never fails the apply that triggered
        it (that entry is applied and logged; a caller retrying it would apply it twice):
        the error goes to `last_snapshot_error` and a RuntimeWarning, and recovery stays
        correct, only longer, because the log still holds every entry."""
        try:
            self._start_snapshot(blocking=not self._async)
        except JournalPoisonedError:
            raise
        except Exception as exc:
            self._report_snapshot_failure(self._index, exc)

    def _append_digest(self) -> None:
        started = time.perf_counter()
        digest = state_digest(self.state)
        self._index = self._guarded(self.log.append, DIGEST_OP, wrap(1, {"digest": digest}))
        self._clock.add(1, self._log_bytes_since_last_count(), time.perf_counter() - started)

    def _log_bytes_since_last_count(self) -> int:
        """Log bytes appended since the last call (the entry just appended included), for the log_bytes policy."""
        total = self.log.bytes_appended
        grown, self._bytes_counted = total - self._bytes_counted, total
        return grown

    def _roll_back(self, index: int, cause: BaseException) -> None:
        """Undo entry `index` whose handler raised: drop it from the log, rebuild the state at index - 1."""
        try:
            self.log.truncate_after(index - 1)
            self._collect_snapshot(block=True)
            recover(self.log, self.snapshots, self.state, self._kinds, self._replayer, stop=index, progress=False)
        except BaseException as exc:
            self._poison = exc
            raise JournalPoisonedError(
                f"{self.path}: the handler of entry {index} raised ({type(cause).__name__}: {cause}) and rolling "
                f"back failed ({type(exc).__name__}: {exc}); the live state is not trustworthy. Reopen the journal."
            ) from exc

    # ------------------------------------------------------------------ durability and snapshots

    def flush(self) -> int:
        """Block until every applied entry is durable; return the durable index (== index)."""
        with self._entered("flush"):
            return self._flush()

    def _flush(self) -> int:
        self._check_usable()
        self._guarded(self.log.flush)
        self._collect_snapshot(block=False)
        return self.log.durable_index

    def snapshot(self, *, wait: bool = False):
        """Snapshot the state at the current index; return its pending handle (``.result()`` -> SnapshotInfo).

        A snapshot still in flight is waited for first. If this journal already
        snapshotted the current index, the newest snapshot's info is returned and nothing
        is written. The entries it covers are made
        durable before it is staged, so it never commits beyond the durable index. With
        wait=True (or async_snapshots=False) this returns the committed SnapshotInfo.
        After a commit, old snapshots are pruned and (unless keep_log) the log is
        compacted through the oldest one retained.
        """
        with self._entered("snapshot"):
            return self._snapshot(wait)

    def _snapshot(self, wait: bool):
        self._check_usable()
        self._collect_snapshot(block=True)
        if self._snapshot_index == self._index:
            newest = self.snapshots.list()
            if newest and newest[-1].index == self._index:
                return newest[-1]
        return self._start_snapshot(blocking=wait or not self._async)

    def _start_snapshot(self, blocking: bool):
        index = self._index
        # Invariant 2: the manifest must not commit beyond the durable index, and the
        # store commits on its own threads, so durability comes first. In group mode this
        # waits for at most one group commit.
        self._guarded(self.log.wait_durable, index)
        tree = components.capture(self.state, self._kinds)
        term = self.log.term_at(index)
        meta = snapshot_meta(index, log_checksum_at(self.log, index))
        self._clock.reset()
        self._snapshot_index = index
        if blocking:
            info = self.snapshots.save(tree, index=index, term=term, meta=meta)
            self._after_commit(info)
            return info
        handle = self.snapshots.save_async(tree, index=index, term=term, meta=meta)
        # Waiting for the commit, then pruning (which re-reads the new snapshot) and
        # compacting, happens on the follow-up thread: none of it may stall apply().
        follow_up = self._follow_up_thread().submit(self._finish_snapshot, handle)
        self._pending = (index, follow_up)
        return handle

    def _follow_up_thread(self) -> ThreadPoolExecutor:
        if self._follow_up is None:
            self._follow_up = ThreadPoolExecutor(max_workers=1, thread_name_prefix="replay-snapshot")
        return self._follow_up

    def _finish_snapshot(self, handle):
        info = handle.result()
        self._after_commit(info)
        return info

    def _collect_snapshot(self, block: bool) -> None:
        """Finish the in-flight snapshot if it is done (or, with block, once it is)."""
        if self._pending is None:
            return
        index, follow_up = self._pending
        if not block and not follow_up.done():
            return
        self._pending = None
        try:
            follow_up.result()
        except JournalPoisonedError:
            raise
        except Exception as exc:
            self._report_snapshot_failure(index, exc)

    def _report_snapshot_failure(self, index: int, exc: BaseException) -> None:
        # The log still holds every entry, so recovery stays correct (only longer);
        # the failure is reported, and the next policy snapshot tries again.
        self.last_snapshot_error = exc
        warnings.warn(f"{self.path}: snapshot at index {index} failed: {exc}", RuntimeWarning, stacklevel=4)

    def _after_commit(self, info) -> None:
        """Prune, then compact the log. Failpoints (replay.failpoints): journal.before_compact,
        journal.after_compact; a crash between them leaves a longer log, never a shorter one."""
        self.snapshots.prune()
        if self._keep_log:
            return
        retained = self.snapshots.list()
        if retained:
            oldest = min(i.index for i in retained)
            if oldest >= self.log.first_index:
                # Invariant 4: compact only through the oldest retained snapshot, so a
                # damaged newer snapshot can still be bypassed by replaying further.
                failpoints.hit("journal.before_compact")
                self._guarded(self.log.compact_through, oldest)
                failpoints.hit("journal.after_compact")

    # ------------------------------------------------------------------ lifecycle

    def close(self, *, snapshot: bool = False) -> None:
        """Wait for an in-flight snapshot, make every entry durable, release log and store. Idempotent.

        snapshot=True first takes a (blocking) snapshot at the current index unless one
        exists, so the next open replays nothing. Closing a poisoned journal releases
        everything and raises nothing new.
        """
        if self._closed:
            return
        with self._entered("close"):
            self._close(snapshot)

    def _close(self, snapshot: bool) -> None:
        if self._closed:
            return
        try:
            if self._poison is None:
                self._collect_snapshot(block=True)
                if snapshot and self._snapshot_index != self._index:
                    self._start_snapshot(blocking=True)
                self._guarded(self.log.flush)
        finally:
            self._release()

    def _release(self) -> None:
        self._closed = True
        if self._follow_up is not None:
            self._follow_up.shutdown(wait=True)
        errors = []
        for resource in (self.snapshots, self.log):
            try:
                if resource is not None and hasattr(resource, "close"):
                    resource.close()
            except Exception as exc:
                errors.append(exc)
        if self._guard is not None:
            self._guard.release()
        if errors and self._poison is None:
            raise errors[0]

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("poisoned" if self._poison else f"index {self._index}")
        return f"<Journal {self.path} {state}>"

    # ------------------------------------------------------------------ guards

    def _check_usable(self) -> None:
        if self._closed:
            raise ClosedError(f"journal {self.path} is closed")
        if self._poison is not None:
            raise JournalPoisonedError(
                f"journal {self.path} refuses further work: {type(self._poison).__name__}: {self._poison}. "
                "Reopen it to recover the durable prefix."
            ) from self._poison

    @contextlib.contextmanager
    def _entered(self, what: str):
        """Refuse a second thread while one is inside a public call (a Journal is used from
        one thread at a time: two overlapping applies would apply in another order than
        the log's, and nothing would ever notice)."""
        if not self._busy.acquire(blocking=False):
            raise ConcurrentUseError(what, self._busy_thread, threading.current_thread().name)
        self._busy_thread = f"{threading.current_thread().name} ({what})"
        try:
            yield
        finally:
            self._busy_thread = None
            self._busy.release()

    def _guarded(self, call, *args):
        """Run a log call; a poisoned log poisons the journal (nothing may be retried)."""
        try:
            return call(*args)
        except LogPoisonedError as exc:
            self._poison = exc
            raise JournalPoisonedError(f"journal {self.path}: the log failed a write or sync: {exc}") from exc


def refuse_to_reinitialise(root: Path) -> None:
    """RecoveryError when `root` holds snapshots but its log is missing or empty.

    Opening would create a fresh log and start over from the initial state, silently
    discarding every entry of the run; a log lost this way is damage to report, not a
    journal to re-create.
    """
    manifests = root / "snapshots" / "manifests"
    if not manifests.is_dir() or not any(manifests.iterdir()):
        return
    data = root / "log" / "data.mdb"
    size = data.stat().st_size if data.exists() else None
    if size is None or size == 0:
        what = "missing" if size is None else "empty (0 bytes)"
        raise RecoveryError(
            f"{root} holds snapshots but its log {data} is {what}: the journal is damaged. Restore the log "
            "from a backup; opening it would start a new log and lose every entry")


__all__ = ["Journal", "ReplayError"]
