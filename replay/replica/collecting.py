"""When the replica is garbage-collected (retention.py says what goes; FORMAT.md, "Retention
and garbage collection").

A sweep runs on the shipper's own thread, at the end of a round, never concurrently with an
upload and never while fenced: when `collect_every` seconds have passed since the last one
(the first comes with the first head write) or when `collect` asked for one, and only right
after a head write of that round: the head just written is what the marks protect, and the
write proved this shipper still owned the replica (the sweep re-checks that).
"""

from __future__ import annotations

import time
from typing import Callable

from .errors import ReplicaFencedError
from .retention import Collected, Collector

COLLECT_EVERY = 60.0  # seconds between two garbage collections (three listings and a head read each)


def check_every(every: float | None) -> None:
    """ValueError unless `every` (collect_every) is None or a number of seconds >= 0."""
    if every is not None and (isinstance(every, bool) or not isinstance(every, (int, float)) or not every >= 0):
        raise ValueError(f"collect_every must be None or seconds >= 0, got {every!r}")


class CollectionSchedule:
    """Retention scheduling for one shipper: when its `Collector` sweeps, and how it went.

    `ask()` (any thread) requests a sweep at the end of the next round; `after_round` (the
    shipper's thread) runs one when due. Other threads read `collections` (sweeps finished,
    completed or failed: what `Shipper.collect` waits for), `error` and `collected`."""

    def __init__(self, collector: Collector, every: float | None):
        check_every(every)
        self._collector = collector
        self._every = every
        self._due = 0.0  # monotonic time of the next collection
        self._asked = False
        self.error: BaseException | None = None
        self.collections = 0

    @property
    def collected(self) -> Collected:
        """Garbage-collection counters: sweeps attempted and completed, objects deleted per prefix."""
        return self._collector.collected

    def ask(self) -> None:
        """Have the next round end with a sweep (after a head write of its own)."""
        self._asked = True

    def after_round(self, *, wrote: bool, at_head: bool, rewrite_head: Callable[[], None],
                    sweep: Callable[[Collector], None], notify: Callable[[], None]) -> None:
        """One sweep (`sweep(collector)`) when one is due or asked for and the round ended with
        head.json naming the chain's end (`at_head`). Edge cases first: not at head: nothing.
        No head write this round (`wrote` False): nothing unless asked, then `rewrite_head()`
        first (the same end again: a fresh proof of ownership). A sweep's ReplicaFencedError
        is recorded and raised (it stops the shipper); any other error is recorded in `error`
        and retried by the next collection (the round shipped: shipping bounds the loss)."""
        asked = self._asked
        due = self._every is not None and time.monotonic() >= self._due
        if not (asked or due) or not at_head:
            return
        if not wrote:
            if not asked:
                return  # nothing shipped: nothing new can have become garbage
            rewrite_head()
        self._asked = False
        self._due = time.monotonic() + (self._every or 0.0)
        try:
            sweep(self._collector)
        except ReplicaFencedError as exc:
            self.error = exc
            raise  # stops the shipper for good, as a refused head write does
        except Exception as exc:  # noqa: BLE001 - the round shipped; the next collection retries the sweep
            self.error = exc
        else:
            self.error = None
        finally:
            self.collections += 1
            notify()
