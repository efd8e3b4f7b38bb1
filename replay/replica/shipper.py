"""Shipper: one journal's continuous replication to an object store (FORMAT.md beside this file).

One background thread per journal. Every `interval` seconds (and at once when `wait` asks)
it ships, in this order: the snapshot manifests the local store committed (chunks first,
then the manifest), the settled log range as sealed segments, then head.json naming the
new end with a conditional write. It never blocks the training thread: it holds no
journal lock, reads the log only through its public read API and the snapshot store as
files, and the training thread only ever reads its counters.

Failures: the store unreachable (ReplicaUnavailableError, or any other error of a
round) is retried with exponential backoff (0.05 s doubling to 2 s) while the lag grows;
`max_lag` turns a lag beyond that many seconds into a ReplicaLagError that `wait` raises
and `error` returns. A refused head.json write, or a claim lost at start, means another
writer holds the replica: ReplicaFencedError, and the shipper stops for good (the Journal
then refuses `apply`; the shipper itself never touches training).

The Shipper only coordinates; each job is its own part:

    claim.HeadOwner              claim and fencing: the claim, every conditional head.json write
    rounds.Shipping              shipping rounds: manifests, chunks, segments, merging
    collecting.CollectionSchedule  retention scheduling: when retention.Collector sweeps
    status.Progress              waiting and status: what the thread did, waited on by the others
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

from eventlog import ClosedError

from .claim import HeadOwner
from .collecting import COLLECT_EVERY, CollectionSchedule, check_every
from .errors import ReplicaFencedError
from .retention import Collected, Collector
from .rounds import Shipping
from .status import Progress, ReplicaStatus

BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0


class Shipper:
    """Replicates the journal at `root` (its log `log`, its snapshot store under root/snapshots)
    to `store`; see the module docstring.

    Call sequence (T: the calling thread, the training thread; S: the shipper's thread):

    1. T: ``Shipper(...)`` checks its arguments and builds its parts; nothing is read yet.
    2. T: ``start()`` starts S.
    3. S, first round: the claim (HeadOwner.claim; FORMAT.md "Fencing"), then the chain the
       claimed head names, environment.json and the chunk listing (Shipping).
    4. T: ``wait_claimed(timeout)`` (Journal.open) waits for step 3's outcome.
    5. S, every round (every `interval` s, or at once when woken): manifests and their
       chunks, then segments through the settled index with merges, each batch of
       rounds.HEAD_EVERY followed by a head write (HeadOwner.write); then, when due, a garbage
       collection (CollectionSchedule, after a head write of this round). A failed round
       is retried with backoff; a fence stops S for good.
    6. T, at will: ``error`` / ``status()`` / ``index`` (plain reads), ``wait(index)`` and
       ``collect()`` (wake S, then wait on Progress), ``collected`` / ``collect_error``.
    7. T: ``close(timeout)`` once: S runs one last round and ends; the store is closed once
       S has ended (a second call waits for nothing).

    Args:
        store: the replica's ObjectStore (closed by `close`).
        root: the journal directory (DIR/replica.json records who writes head.json).
        log: the journal's open EventLog; read from this thread through its public API.
        snapshots: the journal's SnapshotStore (its files under root/snapshots are read).
        settled: returns the newest index that may ship: min(log.durable_index, the last
            applied index). Called from this thread and from `status`.
        interval: seconds between rounds (ValueError unless > 0).
        term: the journal's log term, written into head.json.
        max_lag: None, or seconds: a replica lagging more is an error (`wait`, `error`).
        keep_extra: manifests the replica keeps beyond what the local store retains (the
            newest others on the head's history); 0, the default, follows the local policy.
        collect_every: seconds between two garbage collections of the replica (the first
            comes with the first head write); None: only when `collect` asks.

    Attributes: ``index`` (the replica index: a restore reproduces the state at it; may go
    down after a local truncation, FORMAT.md), ``url``, ``collected`` (garbage-collection
    counters, retention.Collected), ``claimed_head`` (the head.json a won claim found, None
    before the claim or when the replica had none).
    """

    def __init__(self, store, root, log, snapshots, settled: Callable[[], int], *, interval: float = 1.0,
                 term: int, max_lag: float | None = None, keep_extra: int = 0,
                 collect_every: float | None = COLLECT_EVERY):
        if not (isinstance(interval, (int, float)) and interval > 0):
            raise ValueError(f"interval must be a number of seconds > 0, got {interval!r}")
        if max_lag is not None and not (isinstance(max_lag, (int, float)) and max_lag > 0):
            raise ValueError(f"max_lag must be None or seconds > 0, got {max_lag!r}")
        check_every(collect_every)
        collector = Collector(store, keep_extra=keep_extra)  # ValueError for a bad keep_extra
        self.url = store.url
        self._store = store
        self._settled = settled
        self._interval = float(interval)
        self._progress = _progress = Progress(store.url, settled, max_lag)
        self._owner = HeadOwner(store, Path(root), term, lambda: log.last_index)
        self._shipping = Shipping(store, Path(root), log, _progress, collector.note)
        self._collection = CollectionSchedule(collector, collect_every)
        self._claimed = False  # the claim is done (and what follows it in the round: environment, chunk listing)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ public

    @property
    def index(self) -> int:
        """The replica index (a restore reproduces the state at it)."""
        return self._progress.index

    @property
    def claimed_head(self):
        """The head.json the won claim continued from (None: no claim yet, or the replica had none)."""
        return self._owner.claimed_head

    def start(self) -> None:
        """Start the background thread (once; RuntimeError after `close`)."""
        if self._closing:
            raise RuntimeError("Shipper.start after close")
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="replay-replica", daemon=True)
            self._thread.start()

    def wait_claimed(self, timeout: float) -> bool:
        """Block until the claim on the replica is decided (the thread's first round makes it;
        FORMAT.md, "Fencing"), at most `timeout` seconds; whether this shipper holds head.json.

        True: it does (head.json is missing and will be created with the first segment, or it
        was rewritten, or taken over, conditionally on the etag read). ReplicaFencedError
        (naming the head's owner, term and index and this copy's) when another writer holds
        it. False when the store failed or did not answer in time: the thread retries the
        claim every round (`status().last_error` says why), and `error` becomes
        ReplicaFencedError if it turns out lost. RuntimeError when the thread is not running."""
        return self._progress.wait_for(lambda: self._owner.won, timeout, running=self._running,
                                       stop=lambda: self._fenced() or self._owner.claim_failures > 0)

    def close(self, timeout: float | None = None) -> None:
        """One last round (what is settled now is shipped if the store answers), then stop the
        thread, waiting at most `timeout` seconds (None: until it ends); then close the store.
        A thread still busy past the timeout is left to end on its own (it is a daemon and
        ships nothing after its current upload). Idempotent: a second call waits for nothing,
        so a caller's deadline (a preemption's grace) bounds the whole close."""
        if self._closing:
            self._stop.set()
            if not self._running():
                self._store.close()
            return
        self._closing = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._stop.set()
        if not self._running():
            self._store.close()

    @property
    def error(self) -> BaseException | None:
        """The error `wait` would raise now: ReplicaFencedError once fenced, ReplicaLagError
        while the lag exceeds `max_lag`; None otherwise. Cheap (for every apply)."""
        return self._progress.error

    def status(self) -> ReplicaStatus:
        """The shipper's state now (ReplicaStatus)."""
        return self._progress.status(self.collected, self.collect_error)

    @property
    def collected(self) -> Collected:
        """Garbage-collection counters: sweeps attempted and completed, objects deleted per prefix."""
        return self._collection.collected

    @property
    def collect_error(self) -> str | None:
        """Why the last garbage collection failed (text), None when it completed. A failed sweep
        does not fail the round that shipped before it (shipping is what bounds the loss
        window): it is retried by the next collection, `collect_every` seconds later."""
        error = self._collection.error
        return None if error is None else f"{type(error).__name__}: {error}"

    def collect(self, timeout: float | None = None) -> Collected:
        """Run one garbage collection on the shipper's thread at the end of its next round (after
        a head write of its own) and wait for it; the counters after it.

        ReplicaFencedError once fenced (nothing is deleted then); the sweep's own error when it
        failed (it is retried by later collections); TimeoutError after `timeout` seconds;
        RuntimeError when the thread is not running."""
        before = self._collection.collections
        self._collection.ask()
        self._wake.set()
        if not self._progress.wait_for(lambda: self._collection.collections != before, timeout,
                                       running=self._running, stop=self._fenced):
            raise TimeoutError(f"replica {self.url}: no garbage collection in {timeout} s (last error: "
                               f"{self._progress.last_error})")
        if self._collection.error is not None:
            raise self._collection.error
        return self._collection.collected

    def wait(self, index: int, timeout: float | None = None) -> int:
        """Block until the replica index is >= `index` (a round is started at once); the replica index.

        ReplicaFencedError once fenced; ReplicaLagError when the lag exceeds `max_lag`;
        TimeoutError (naming the last error) after `timeout` seconds; RuntimeError when the
        thread is not running. `index` must be settled to ever be reached."""
        self._wake.set()
        progress = self._progress

        def failed() -> bool:
            error = progress.error
            if error is not None:
                raise error
            return False

        if not progress.wait_for(lambda: progress.index >= index, timeout, running=self._running, stop=failed,
                                 what=lambda: f" (index {progress.index})"):
            raise TimeoutError(f"replica {self.url}: index {index} not reached in {timeout} s (replica "
                               f"index {progress.index}; last error: {progress.last_error})")
        return progress.index

    # ------------------------------------------------------------------ the thread

    def _running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _fenced(self) -> bool:
        if self._progress.fenced is not None:
            raise self._progress.fenced
        return False

    def _run(self) -> None:
        backoff = 0.0
        progress = self._progress
        while not self._stop.is_set():
            final = self._closing
            try:
                self._round()
                progress.last_error, backoff = None, 0.0
            except ReplicaFencedError as exc:
                progress.fenced = exc
                progress.notify()
                return
            except ClosedError:
                return  # the journal closed its log: nothing more to ship
            except Exception as exc:  # noqa: BLE001 - retried; reported in status, never raised into training
                progress.last_error = f"{type(exc).__name__}: {exc}"
                self._owner.failed()  # `wait_claimed` stops waiting: the claim is retried
                backoff = min(max(2 * backoff, BACKOFF_MIN), BACKOFF_MAX)
                progress.notify()
                if final:
                    return
                self._stop.wait(backoff)
                continue
            progress.notify()
            if final:
                return
            self._wake.wait(self._interval)
            self._wake.clear()

    def _round(self) -> None:
        started = time.monotonic()
        writes = self._owner.writes
        settled = self._settled()
        shipping = self._shipping
        if not self._claimed:
            self._claim()
        shipping.check_chain()
        shipping.ship_manifests(settled)
        if shipping.end is None:
            shipping.start_chain(settled)
        while shipping.end is not None and shipping.end[0] < settled and not self._stop.is_set():
            if not shipping.ship_segments(settled):
                break  # the log changed under this round (a truncation): the next round re-checks
            shipping.merge()  # bounds the object count (merging.py)
            self._write_head()
        if shipping.end is not None and self._owner.head_at != shipping.end:
            self._write_head()
        if self._progress.index >= settled:
            self._progress.synced_as_of = started
        self._collection.after_round(
            wrote=self._owner.writes != writes,
            at_head=shipping.end is not None and self._owner.head_at == shipping.end,
            rewrite_head=self._write_head, sweep=self._sweep, notify=self._progress.notify)

    def _claim(self) -> None:
        """Decide whether this journal may write the replica (claim.claim; FORMAT.md, "Fencing")."""
        head = self._owner.claim()
        self._progress.notify()  # decided: `wait_claimed` (Journal.open) need not wait for the listings below
        if head is not None and self._shipping.adopt(head):
            self._progress.index = head.index
        self._shipping.load_environment()
        self._shipping.list_chunks()
        self._claimed = True

    def _write_head(self) -> None:
        end = self._shipping.end
        self._owner.write(end)
        self._progress.uploaded()
        self._progress.index = end[0]
        self._progress.notify()

    def _sweep(self, collector: Collector) -> None:
        shipping = self._shipping
        collector.sweep(self._owner.head_at, self._owner.etag, shipping.local_manifests(), shipping.local_checksum,
                        shipping.forget)
