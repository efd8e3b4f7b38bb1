"""Shipper: one journal's continuous replication to an object store (FORMAT.md beside this file).

One background thread per journal. Every `interval` seconds (and at once when `wait` asks)
it ships, in this order: the snapshot manifests the local store committed (chunks first,
then the manifest), the settled log range as sealed segments, then head.json naming the
new end with a conditional write. It never blocks the training thread: it holds no
journal lock, reads the log only through its public read API (`checksum_at`,
`segment_ranges`, `sealed_range`) and the snapshot store as files (replica.snapfiles),
and the training thread only ever reads its counters.

Failures: the store unreachable (ReplicaUnavailableError, or any other error of a
round) is retried with exponential backoff (0.05 s doubling to 2 s) while the lag grows;
`max_lag` turns a lag beyond that many seconds into a ReplicaLagError that `wait` raises
and `error` returns. A refused head.json write, or a claim lost at start, means another
writer holds the replica: ReplicaFencedError, and the shipper stops for good (the Journal
then refuses `apply`; the shipper itself never touches training).

Call sequence: `Shipper(...)`, `start()` (the thread's first round makes the claim,
FORMAT.md "Fencing"), `wait_claimed(timeout)` (Journal.open: the claim's outcome before
it returns), then from the training thread `error` / `status` / `wait` / `collect` at
will, and `close(timeout)` once (a second call waits for nothing).

Garbage collection (retention.py; FORMAT.md, "Retention and garbage collection") runs on
this same thread at the end of a round that wrote head.json, at most every
`collect_every` seconds: never concurrently with an upload, never while fenced.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Callable

from eventlog import ClosedError, CompactedError, CorruptEntryError
from eventlog.transfer import segment_bounds
from snapshots.safefile import UnsafeFileError, read_regular

from .chain import ENVIRONMENT_KEY, SegmentKey, chunk_key, manifest_key, parse_segment_key, walk_back, SEGMENTS
from .errors import ObjectNotFoundError, PreconditionFailedError, ReplicaError, ReplicaFencedError
from .claim import claim, refusal
from .head import HEAD_KEY, Head, read_record
from .merging import merge_tail
from .retention import CHUNKS, Collected, Collector, Plan
from .snapfiles import LocalFileError, LocalStore
from .status import ReplicaLagError, ReplicaStatus

BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0
HEAD_EVERY = 16  # segments uploaded between two head writes while catching up a backlog
MAX_ENVIRONMENT_BYTES = 1 << 20
COLLECT_EVERY = 60.0  # seconds between two garbage collections (three listings and a head read each)


class Shipper:
    """Replicates the journal at `root` (its log `log`, its snapshot store under root/snapshots)
    to `store`; see the module docstring.

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
        if collect_every is not None and (isinstance(collect_every, bool) or not isinstance(collect_every, (int, float))
                                          or not collect_every >= 0):
            raise ValueError(f"collect_every must be None or seconds >= 0, got {collect_every!r}")
        self._collector = Collector(store, keep_extra=keep_extra)  # ValueError for a bad keep_extra
        self._collect_every = collect_every
        self._collect_due = 0.0  # monotonic time of the next collection
        self._collect_asked = False
        self._collect_error: BaseException | None = None
        self._collections = 0  # collections finished (completed or failed): what `collect` waits for
        self._head_writes = 0
        self.url = store.url
        self.index = 0
        self._store = store
        self._root = Path(root)
        self._log = log
        self._local = LocalStore(self._root / "snapshots")
        self._settled = settled
        self._interval = float(interval)
        self._term = term
        self._max_lag = max_lag
        self._owner: str | None = None
        self._etag: str | None = None
        self._claimed = False  # the claim is done (and what follows it in the round: environment, chunk listing)
        self._won = False  # this shipper holds head.json (created it, or rewrote it conditionally)
        self._claim_failures = 0  # claim attempts that failed without an answer (store errors)
        self.claimed_head: Head | None = None  # the head.json the won claim continued from (None: none yet)
        self._chain: list[SegmentKey] = []  # the current chain's segments, oldest first
        self._end: tuple[int, int] | None = None  # (index, checksum) where the chain ends
        self._head_at: tuple[int, int] | None = None  # what head.json names (as this shipper wrote or read it)
        self._chunks: set[str] = set()  # chunk ids known to be on the replica
        self._manifests: dict[str, tuple[int, int]] = {}  # manifest name on the replica -> (index, log_checksum)
        self._refused: set[str] = set()  # local manifests never to ship (damaged, or off the log's history)
        self._fenced: ReplicaFencedError | None = None
        self._last_error: str | None = None
        self._uploads = 0
        self._bytes = 0
        self._synced_as_of = time.monotonic()  # every entry settled before this is on the replica
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._closing = False
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ public

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
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self._won:
                if self._fenced is not None:
                    raise self._fenced
                if self._claim_failures:
                    return False
                if self._thread is None or not self._thread.is_alive():
                    raise RuntimeError(f"replica {self.url}: the shipper is not running")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 0.05))
        return True

    def close(self, timeout: float | None = None) -> None:
        """One last round (what is settled now is shipped if the store answers), then stop the
        thread, waiting at most `timeout` seconds (None: until it ends); then close the store.
        A thread still busy past the timeout is left to end on its own (it is a daemon and
        ships nothing after its current upload). Idempotent: a second call waits for nothing,
        so a caller's deadline (a preemption's grace) bounds the whole close."""
        if self._closing:
            self._stop.set()
            if self._thread is None or not self._thread.is_alive():
                self._store.close()
            return
        self._closing = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._stop.set()
        if self._thread is None or not self._thread.is_alive():
            self._store.close()

    @property
    def error(self) -> BaseException | None:
        """The error `wait` would raise now: ReplicaFencedError once fenced, ReplicaLagError
        while the lag exceeds `max_lag`; None otherwise. Cheap (for every apply)."""
        if self._fenced is not None:
            return self._fenced
        if self._max_lag is None or self.index >= self._settled():
            return None
        lag = time.monotonic() - self._synced_as_of
        if lag <= self._max_lag:
            return None
        return ReplicaLagError(self.url, lag, self._max_lag, self.index, self._settled(), self._last_error)

    def status(self) -> ReplicaStatus:
        """The shipper's state now (ReplicaStatus)."""
        index, settled = self.index, self._settled()
        behind = settled > index
        return ReplicaStatus(self.url, index, settled, max(0, settled - index),
                             time.monotonic() - self._synced_as_of if behind else 0.0, self._fenced is not None,
                             self._last_error, self.error, self._uploads, self._bytes, self.collected,
                             self.collect_error)

    @property
    def collected(self) -> Collected:
        """Garbage-collection counters: sweeps attempted and completed, objects deleted per prefix."""
        return self._collector.collected

    @property
    def collect_error(self) -> str | None:
        """Why the last garbage collection failed (text), None when it completed. A failed sweep
        does not fail the round that shipped before it (shipping is what bounds the loss
        window): it is retried by the next collection, `collect_every` seconds later."""
        error = self._collect_error
        return None if error is None else f"{type(error).__name__}: {error}"

    def collect(self, timeout: float | None = None) -> Collected:
        """Run one garbage collection on the shipper's thread at the end of its next round (after
        a head write of its own) and wait for it; the counters after it.

        ReplicaFencedError once fenced (nothing is deleted then); the sweep's own error when it
        failed (it is retried by later collections); TimeoutError after `timeout` seconds;
        RuntimeError when the thread is not running."""
        deadline = None if timeout is None else time.monotonic() + timeout
        before = self._collections
        self._collect_asked = True
        self._wake.set()
        with self._changed:
            while self._collections == before:
                if self._fenced is not None:
                    raise self._fenced
                if self._thread is None or not self._thread.is_alive():
                    raise RuntimeError(f"replica {self.url}: the shipper is not running")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"replica {self.url}: no garbage collection in {timeout} s (last error: "
                                       f"{self._last_error})")
                self._changed.wait(0.05 if remaining is None else min(remaining, 0.05))
        if self._collect_error is not None:
            raise self._collect_error
        return self._collector.collected

    def wait(self, index: int, timeout: float | None = None) -> int:
        """Block until the replica index is >= `index` (a round is started at once); the replica index.

        ReplicaFencedError once fenced; ReplicaLagError when the lag exceeds `max_lag`;
        TimeoutError (naming the last error) after `timeout` seconds; RuntimeError when the
        thread is not running. `index` must be settled to ever be reached."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._wake.set()
        with self._changed:
            while self.index < index:
                error = self.error
                if error is not None:
                    raise error
                if self._thread is None or not self._thread.is_alive():
                    raise RuntimeError(f"replica {self.url}: the shipper is not running (index {self.index})")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"replica {self.url}: index {index} not reached in {timeout} s (replica "
                                       f"index {self.index}; last error: {self._last_error})")
                self._changed.wait(0.05 if remaining is None else min(remaining, 0.05))
        return self.index

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            final = self._closing
            try:
                self._round()
                self._last_error, backoff = None, 0.0
            except ReplicaFencedError as exc:
                self._fenced = exc
                self._notify()
                return
            except ClosedError:
                return  # the journal closed its log: nothing more to ship
            except Exception as exc:  # noqa: BLE001 - retried; reported in status, never raised into training
                self._last_error = f"{type(exc).__name__}: {exc}"
                if not self._won:
                    self._claim_failures += 1  # `wait_claimed` stops waiting: the claim is retried
                backoff = min(max(2 * backoff, BACKOFF_MIN), BACKOFF_MAX)
                self._notify()
                if final:
                    return
                self._stop.wait(backoff)
                continue
            self._notify()
            if final:
                return
            self._wake.wait(self._interval)
            self._wake.clear()

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _round(self) -> None:
        started = time.monotonic()
        writes = self._head_writes
        settled = self._settled()
        if not self._claimed:
            self._claim()
        self._check_chain()
        self._ship_manifests(settled)
        if self._end is None:
            self._start_chain(settled)
        while self._end is not None and self._end[0] < settled and not self._stop.is_set():
            if not self._ship_segments(settled):
                break  # the log changed under this round (a truncation): the next round re-checks
            merge_tail(self._log, self._chain, self._put)  # bounds the object count (merging.py)
            self._write_head()
        if self._end is not None and self._head_at != self._end:
            self._write_head()
        if self.index >= settled:
            self._synced_as_of = started
        self._maybe_collect(wrote=self._head_writes != writes)

    # ------------------------------------------------------------------ head and fencing

    def _claim(self) -> None:
        """Decide whether this journal may write the replica (claim.claim; FORMAT.md, "Fencing")."""
        claimed = claim(self._store, self._root, self._term, lambda: self._log.last_index)
        self._owner, self._etag = claimed.owner, claimed.etag
        self.claimed_head = claimed.head
        self._won = True
        self._notify()  # decided: `wait_claimed` (Journal.open) need not wait for the listings below
        if claimed.head is not None:
            self._adopt_chain(claimed.head)
        self._load_environment()
        self._chunks = {k[len("chunks/"):] for k in self._store.list("chunks/")}
        self._claimed = True

    def _adopt_chain(self, head: Head) -> None:
        """The chain head.json names, from the segment keys on the replica."""
        segments = [s for s in map(parse_segment_key, self._store.list(SEGMENTS)) if s is not None]
        self._chain = walk_back(segments, head.index, head.checksum)
        self._end = (head.index, head.checksum) if self._chain else None
        self._head_at = (head.index, head.checksum)
        if self._chain and self._agrees(*self._end):
            self.index = head.index

    def _load_environment(self) -> None:
        try:
            data = read_regular(str(self._root / "environment.json"), MAX_ENVIRONMENT_BYTES)
        except (FileNotFoundError, UnsafeFileError):
            return
        self._put(ENVIRONMENT_KEY, data)

    def _write_head(self) -> None:
        index, checksum = self._end
        head = Head(self._term, self._owner, index, checksum, time.time())
        try:
            self._etag = self._store.put_if_match(HEAD_KEY, head.encode(), self._etag)
        except PreconditionFailedError:
            raise refusal(self._store, self._root, read_record(self._root, self.url), lambda: self._log.last_index,
                          "lost the replica: another writer wrote head.json since this copy's last write (a restore "
                          "elsewhere took it over)") from None
        self._uploads += 1
        self._head_writes += 1
        self._head_at = self._end
        self.index = index
        self._notify()

    # ------------------------------------------------------------------ the log

    def _agrees(self, index: int, checksum: int) -> bool:
        """Whether the local log has `checksum` at `index` (False when it cannot say)."""
        try:
            return index <= self._log.last_index and self._log.checksum_at(index) == checksum
        except (CompactedError, IndexError, CorruptEntryError):
            return False

    def _check_chain(self) -> None:
        """Re-ship from the last agreeing segment boundary when the local log was truncated."""
        if self._end is None or self._agrees(*self._end):
            return
        while self._chain:
            seg = self._chain.pop()
            if self._agrees(seg.first - 1, seg.prev):
                self._end = (seg.first - 1, seg.prev)
                if not self._chain and not self._on_path_manifest(*self._end):
                    break
                return
        self._chain, self._end = [], None  # no agreeing boundary: a new chain

    def _on_path_manifest(self, index: int, checksum: int) -> bool:
        return any(v == (index, checksum) for v in self._manifests.values())

    def _start_chain(self, settled: int) -> None:
        """Begin a chain at the oldest uploaded manifest on the local log's history."""
        first = self._log.first_index
        for index, checksum in sorted(set(self._manifests.values())):
            if first - 1 <= index <= settled and self._agrees(index, checksum):
                self._chain, self._end = [], (index, checksum)
                return

    def _ship_segments(self, settled: int) -> int:
        """Up to HEAD_EVERY segments of entries after the chain's end, through `settled`; how many."""
        start, shipped = self._end[0] + 1, 0
        for first, last in self._log.segment_ranges(start, settled)[:HEAD_EVERY]:
            data = self._log.sealed_range(first, last)
            got_first, got_last, prev, last_checksum = segment_bounds(data)
            if (got_first, got_last) != (first, last):
                raise ReplicaError(f"sealed_range({first}, {last}) returned entries {got_first}..{got_last}")
            if prev != self._end[1]:
                break
            seg = SegmentKey(first, last, prev, last_checksum)
            self._put(seg.key, data)
            self._chain.append(seg)
            self._end = (last, last_checksum)
            shipped += 1
        return shipped

    # ------------------------------------------------------------------ snapshots

    def _ship_manifests(self, settled: int) -> None:
        for name in self._local.manifest_names():
            if name in self._manifests or name in self._refused:
                continue
            try:
                mf = self._local.read_manifest(name)
            except FileNotFoundError:
                continue  # pruned meanwhile
            except LocalFileError as exc:
                self._refused.add(name)
                self._last_error = str(exc)
                continue
            if mf.log_checksum is None or mf.index != mf.log_index:
                self._refused.add(name)  # not a journal snapshot a restore could check against a log
                continue
            if mf.index > settled:
                continue  # its entries are not settled yet: next round
            if not self._agrees(mf.index, mf.log_checksum):
                self._refused.add(name)  # of another history, or too old to start a chain from
                continue
            if self._ship_chunks(mf):
                self._ship_manifest(mf)

    def _ship_chunks(self, mf) -> bool:
        """Every chunk of `mf` on the replica; False when one is gone or damaged locally."""
        for ref in mf.manifest.chunks:
            if ref.id in self._chunks:
                continue
            try:
                data = self._local.read_chunk(ref.id, ref.raw_len, ref.stored_len)
            except FileNotFoundError:
                if not os.path.exists(self._local.root / "manifests" / mf.name):
                    return False  # pruned while read: nothing to ship
                self._refused.add(mf.name)
                self._last_error = f"local snapshot {mf.name}: chunk {ref.id} is missing"
                return False
            except LocalFileError as exc:
                self._refused.add(mf.name)
                self._last_error = f"local snapshot {mf.name}: {exc}"
                return False
            self._put(chunk_key(ref.id), data)
            self._chunks.add(ref.id)
        return True

    def _ship_manifest(self, mf) -> None:
        key = manifest_key(mf.name)
        if not self._put(key, mf.data):
            try:
                existing, _ = self._store.get(key, len(mf.data))
            except (ObjectNotFoundError, ReplicaError):
                existing = None
            if existing != mf.data:
                self._refused.add(mf.name)  # another history's snapshot under the same name
                self._last_error = f"replica {key} holds other bytes than the local manifest"
                return
        self._manifests[mf.name] = (mf.index, mf.log_checksum)
        self._collector.note(mf.name, mf.index, mf.log_checksum, (ref.id for ref in mf.manifest.chunks))

    def _put(self, key: str, data: bytes) -> bool:
        created = self._store.put_if_absent(key, data)
        if created:
            self._uploads += 1
            self._bytes += len(data)
        return created

    # ------------------------------------------------------------------ garbage collection

    def _maybe_collect(self, wrote: bool) -> None:
        """A mark-and-sweep (retention.Collector) when one is due or asked for, and only right
        after a head write of this round: the head it just wrote is what the marks protect, and
        the write proved this shipper still owned the replica (the sweep re-checks that)."""
        asked = self._collect_asked
        due = self._collect_every is not None and time.monotonic() >= self._collect_due
        if not (asked or due) or self._end is None or self._head_at != self._end:
            return
        if not wrote:
            if not asked:
                return  # nothing shipped: nothing new can have become garbage
            self._write_head()  # the same end again: a fresh proof of ownership
        self._collect_asked = False
        self._collect_due = time.monotonic() + (self._collect_every or 0.0)
        try:
            self._collector.sweep(self._head_at, self._etag, set(self._local.manifest_names()),
                                  self._local_checksum, self._forget)
        except ReplicaFencedError as exc:
            self._collect_error = exc
            raise  # stops the shipper for good, as a refused head write does
        except Exception as exc:  # noqa: BLE001 - the round shipped; the next collection retries the sweep
            self._collect_error = exc
        else:
            self._collect_error = None
        finally:
            self._collections += 1
            self._notify()

    def _forget(self, plan: Plan, listed_chunks: set[str]) -> None:
        """Before a sweep deletes: drop what this shipper believed the replica holds and the
        sweep removes, so nothing is skipped as "already there" once it is gone."""
        self._chunks = listed_chunks - {key[len(CHUNKS):] for key in plan.chunks}
        for key in plan.manifests:
            name = key.split("/", 1)[1]
            self._manifests.pop(name, None)
            self._refused.discard(name)  # another history's manifest under a local name: ship ours again
        for name in plan.incomplete:
            self._manifests.pop(name, None)  # a kept manifest missing a chunk: its chunks ship again
        self._chain = list(plan.kept_segments)  # exactly the head's path from the floor

    def _local_checksum(self, index: int) -> int | None:
        """The local log's checksum at `index`, None when it cannot say (compacted, past its end)."""
        try:
            return self._log.checksum_at(index) if index <= self._log.last_index else None
        except (CompactedError, IndexError, CorruptEntryError):
            return None
