"""Uploads in flight: a shipping round's create-only puts, pipelined, completed in order.

A file replica spends most of an upload in fsync and an S3 replica in the round trip, and
neither needs the shipper's thread meanwhile; so a round hands up to IN_FLIGHT puts to
worker threads and prepares (reads, verifies) the next object while they run. What the
replica's head may claim must not change: a put counts (its `done` runs) only once it
and every put submitted before it have succeeded, so the chain a head names is always a
contiguous prefix of completed uploads (FORMAT.md beside this file, "Order of uploads").
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from typing import Callable

IN_FLIGHT = 4  # puts running at once: enough to overlap fsyncs or round trips; memory is IN_FLIGHT objects


class _Put:
    """One put handed to a worker thread: its outcome, set once, then `finished` is set."""

    def __init__(self, key: str, size: int, done: Callable[[bool], None]):
        self.key, self.size, self.done = key, size, done
        self.created: bool | None = None
        self.error: BaseException | None = None
        self.finished = threading.Event()


class Uploads:
    """Create-only puts to `store`, at most `in_flight` at once, counted in submission order.

    Call sequence (S: the thread that owns this object, the shipper's; W: up to `in_flight`
    daemon worker threads, started as puts are submitted and reused for the batch's later
    puts (a thread start is milliseconds on a loaded machine, a put of a small chunk less),
    which only call ``store.put_if_absent`` and record the outcome; they end with the batch):

    1. S: ``with Uploads(store) as uploads:`` (one batch of a round).
    2. S: ``submit(key, data, done)``: when `in_flight` puts are running it first waits for
       the oldest and settles the finished prefix (step 3); then a W runs the put.
    3. S, inside `submit` and at the end: every put whose W finished, in submission order
       and stopping at the first one still running, is settled: `done(created)` runs on S.
       A failed put stops settling for good: neither its `done` nor any later put's runs.
    4. S: leaving the block waits for every put still running (nothing of this batch is in
       flight afterwards) and tells the W threads to end, settles the rest, then raises the
       first failure, if any (an exception raised inside the block wins: it is re-raised
       after the wait, unchanged).

    A failed put in flight therefore fails the batch cleanly: objects put after it may
    exist on the replica (create-only, harmless, found again by the next round), but no
    `done` ever runs for them, so no head is written past a missing object.
    W threads are daemons: a store that never answers cannot hold the process at exit.
    """

    def __init__(self, store, in_flight: int = IN_FLIGHT):
        if isinstance(in_flight, bool) or not isinstance(in_flight, int) or in_flight < 1:
            raise ValueError(f"in_flight must be an int >= 1, got {in_flight!r}")
        self._store = store
        self._limit = in_flight
        self._pending: deque[_Put] = deque()
        self._failed: _Put | None = None
        self._work: queue.SimpleQueue = queue.SimpleQueue()  # (put, data), or None: a W ends
        self._workers = 0

    def __enter__(self) -> "Uploads":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for put in self._pending:
            put.finished.wait()
        for _ in range(self._workers):
            self._work.put(None)
        self._workers = 0
        if exc_type is not None:
            return  # the block's own error propagates; nothing more is counted
        self._settle(block=True)
        if self._failed is not None:
            raise self._failed.error

    def __len__(self) -> int:
        """Puts submitted and not yet counted (running, or finished behind one still running)."""
        return len(self._pending)

    def submit(self, key: str, data, done: Callable[[bool], None]) -> None:
        """Put `data` as `key` unless it exists, on a worker thread; `done(created)` runs on this
        thread once it and every earlier put succeeded. Raises the first failed put's error
        (after waiting for every put in flight) instead of submitting more."""
        while len(self._pending) >= self._limit:
            self._pending[0].finished.wait()
            self._settle(block=False)
        if self._failed is not None:
            for put in self._pending:
                put.finished.wait()
            raise self._failed.error
        put = _Put(key, len(data), done)
        self._pending.append(put)
        # Fewer W threads than puts in flight (each of them busy): one more. Otherwise one is
        # idle, or about to be (its put finished), and takes this put from the queue.
        if self._workers < self._limit and self._workers < len(self._pending):
            threading.Thread(target=self._serve, name="replay-replica-put", daemon=True).start()
            self._workers += 1
        self._work.put((put, data))

    def _serve(self) -> None:
        """A W thread: run the puts handed to it until told to end (None)."""
        while True:
            job = self._work.get()
            if job is None:
                return
            put, data = job
            del job
            try:
                put.created = self._store.put_if_absent(put.key, data)
            except BaseException as exc:  # noqa: BLE001 - handed to the owning thread, which raises it
                put.error = exc
            finally:
                del data  # the bytes go with the put, not with the idle thread
                put.finished.set()

    def _settle(self, block: bool) -> None:
        """Run `done` for the finished prefix of pending puts, in order, up to the first failure."""
        while self._pending and self._failed is None:
            head = self._pending[0]
            if not head.finished.is_set():
                if not block:
                    return
                head.finished.wait()
            self._pending.popleft()
            if head.error is not None:
                self._failed = head
                return
            head.done(bool(head.created))
